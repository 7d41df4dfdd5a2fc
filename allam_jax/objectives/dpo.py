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
from allam_jax.objectives.base import ObjectiveDefaults
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


def pair_losses(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
                ref_rejected: jax.Array, cfg: DpoConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per pair: the loss and the two implicit rewards. Sigmoid (Rafailov et al.) with conservative label
    smoothing ε: ``-(1-ε) log σ(βh) - ε log σ(-βh)``; IPO: ``(h - 1/(2β))²``; h is the log-ratio margin."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if cfg.loss_type == "sigmoid":
        eps = cfg.label_smoothing
        losses = -(1 - eps) * jax.nn.log_sigmoid(cfg.beta * h) - eps * jax.nn.log_sigmoid(-cfg.beta * h)
    else:
        losses = jnp.square(h - 1.0 / (2.0 * cfg.beta))
    return losses, cfg.beta * chosen_ratio, cfg.beta * rejected_ratio


def pair_sums(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
              ref_rejected: jax.Array, cfg: DpoConfig) -> dict[str, jax.Array]:
    """The loss and reward statistics summed over pairs (micro-batches add them up; :func:`normalise` divides
    once by the pair count)."""
    losses, chosen, rejected = pair_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg)
    return {
        "loss_sum": jnp.sum(losses),
        "pairs": jnp.asarray(losses.shape[0], jnp.float32),
        "rewards/chosen": jnp.sum(chosen),
        "rewards/rejected": jnp.sum(rejected),
        "rewards/margins": jnp.sum(chosen - rejected),
        "rewards/accuracy": jnp.sum((chosen > rejected).astype(jnp.float32)),
    }


def normalise(sums: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``(denominator, mean loss over pairs, metrics)`` from a whole batch's sums."""
    pairs = jnp.maximum(sums["pairs"], 1.0)
    metrics = {k: sums[k] / pairs for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy")}
    if "num_tokens" in sums:
        metrics["num_tokens"] = sums["num_tokens"]
    return pairs, sums["loss_sum"] / pairs, metrics


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, cfg: DpoConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean DPO loss over pairs and the usual metrics."""
    _, loss, metrics = normalise(pair_sums(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg))
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class DpoObjective(ObjectiveDefaults):
    """The trainer's view of DPO: two rows per example, a loss on sequence log-prob margins, and (frozen
    reference) a copy of the starting parameters kept beside them."""

    config: DpoConfig = DpoConfig()
    rows_per_example: int = 2
    name: str = "dpo"
    config_class = DpoConfig

    def loss_sums(self, model: nn.Module, params: Any, batch: dict,
                  extra: Optional[Any] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        if self.config.reference == "frozen":
            ref = jax.lax.stop_gradient(sequence_logprobs(model, extra, batch))
        else:
            ref = batch["ref_logp"]
        ref = ref.reshape(-1, 2)
        pol = sequence_logprobs(model, params, batch).reshape(-1, 2)
        sums = pair_sums(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], self.config)
        sums["num_tokens"] = jnp.sum(batch["loss_weights"].astype(jnp.float32))
        return sums["loss_sum"], sums

    def normalise(self, sums: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        return normalise(sums)

    def batch_features(self) -> dict[str, Any]:
        """Per-row inputs beyond the trainer's layout: the precomputed reference log-probs."""
        return {"ref_logp": jnp.float32} if self.config.reference == "precomputed" else {}

    def needs_extra_state(self) -> bool:
        return self.config.reference == "frozen"

    def init_extra_state(self, params: Any) -> Any:
        """The frozen reference: the starting parameters (the caller copies them; steps donate the state)."""
        return params if self.needs_extra_state() else None

    def check(self, exp: Any) -> None:
        if self.needs_extra_state() and not exp.trainer.init_from:
            log.warning("DPO with a frozen reference but no TrainerConfig.init_from: the reference is a random model")


__all__ = ["DpoConfig", "DpoObjective", "LOSS_TYPES", "dpo_loss", "normalise", "pair_losses", "pair_sums"]
