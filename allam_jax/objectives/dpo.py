"""Direct preference optimisation (DPO/IPO) as a training objective, against a frozen or precomputed reference.

A DPO batch interleaves pairs: row ``2i`` is prompt + chosen, row ``2i + 1`` prompt + rejected, so chosen
and rejected go through one forward pass and stay paired whatever the batch sharding. ``loss_weights`` cover
the response tokens (and their EOS); ``ref_logp`` carries precomputed reference log-probs when the reference
is ``precomputed``. With a ``frozen`` reference the objective keeps a copy of the starting parameters as its
extra train state.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from allam_jax.core.errors import ConfigError
from allam_jax.objectives.logprobs import sequence_logprobs

log = logging.getLogger(__name__)

LOSS_TYPES = ("sigmoid", "ipo")


@dataclasses.dataclass(frozen=True)
class DpoConfig:
    """gin: ``DpoConfig``. ``reference``: ``frozen`` keeps a copy of the starting parameters in the
    train state; ``precomputed`` reads ``ref_chosen_logp``/``ref_rejected_logp`` from the data
    (``allam dpo-reference`` writes them), which saves a model's worth of memory at scale."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    reference: str = "frozen"

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"DpoConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.reference not in ("frozen", "precomputed"):
            raise ConfigError(f"DpoConfig.reference must be 'frozen' or 'precomputed', got {self.reference!r}")
        if not self.beta > 0:
            raise ConfigError(f"DpoConfig.beta must be positive, got {self.beta!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"DpoConfig.label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, cfg: DpoConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean DPO loss over pairs and the usual metrics. Sigmoid (Rafailov et al.) with conservative label
    smoothing ε: ``-(1-ε) log σ(βh) - ε log σ(-βh)``; IPO: ``(h - 1/(2β))²``; h is the log-ratio margin."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if cfg.loss_type == "sigmoid":
        eps = cfg.label_smoothing
        losses = -(1 - eps) * jax.nn.log_sigmoid(cfg.beta * h) - eps * jax.nn.log_sigmoid(-cfg.beta * h)
    else:
        losses = jnp.square(h - 1.0 / (2.0 * cfg.beta))
    rewards_chosen = cfg.beta * chosen_ratio
    rewards_rejected = cfg.beta * rejected_ratio
    metrics = {
        "rewards/chosen": jnp.mean(rewards_chosen),
        "rewards/rejected": jnp.mean(rewards_rejected),
        "rewards/margins": jnp.mean(rewards_chosen - rewards_rejected),
        "rewards/accuracy": jnp.mean((rewards_chosen > rewards_rejected).astype(jnp.float32)),
    }
    return jnp.mean(losses), metrics


@dataclasses.dataclass(frozen=True)
class DpoObjective:
    """The trainer's view of DPO: two rows per example, a loss on sequence log-prob margins, and (frozen
    reference) a copy of the starting parameters kept beside them."""

    config: DpoConfig = DpoConfig()
    rows_per_example: int = 2
    name: str = "dpo"

    def loss_and_grads(self, model: nn.Module, params: Any, batch: dict,
                       extra: Optional[Any] = None) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
        if self.config.reference == "frozen":
            ref = jax.lax.stop_gradient(sequence_logprobs(model, extra, batch))
        else:
            ref = batch["ref_logp"]
        ref = ref.reshape(-1, 2)

        def loss_fn(p):
            pol = sequence_logprobs(model, p, batch).reshape(-1, 2)
            return dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], self.config)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, {"num_tokens": jnp.sum(batch["loss_weights"]), **metrics}

    def batch_features(self) -> dict[str, Any]:
        """Per-row inputs beyond the trainer's layout: the precomputed reference log-probs."""
        return {"ref_logp": jnp.float32} if self.config.reference == "precomputed" else {}

    def needs_extra_state(self) -> bool:
        return self.config.reference == "frozen"

    def init_extra_state(self, params: Any) -> Any:
        """The frozen reference: the starting parameters (the caller copies them; steps donate the state)."""
        return params if self.needs_extra_state() else None

    def check(self, exp: Any) -> None:
        if exp.step.grad_accum_steps > 1:
            raise ConfigError("StepConfig.grad_accum_steps > 1 is not supported with DPO (experiment.dpo); "
                              "lower TrainerConfig.batch_size instead")
        if self.needs_extra_state() and not exp.trainer.init_from:
            log.warning("DPO with a frozen reference but no TrainerConfig.init_from: the reference is a random model")


__all__ = ["DpoConfig", "DpoObjective", "LOSS_TYPES", "dpo_loss"]
