"""The language-model objective: token cross-entropy, z-loss, per-language loss.

Losses are summed, not averaged, so micro-batches add up to exactly the full-batch loss; the trainer's step
(:mod:`allam_jax.train.step`) splits the batch, differentiates the sums and normalises once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from allam_jax.core.errors import ConfigError
from allam_jax.objectives.base import ObjectiveDefaults
from allam_jax.objectives.cross_entropy import chunked_lm_cross_entropy, token_cross_entropy

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The LM loss's settings (gin: ``StepConfig``); the micro-batch count is the trainer's
    (``TrainerConfig.grad_accum_steps``)."""

    z_loss_weight: float = 0.0
    num_languages: int = 2
    logits_chunk_size: int = 0  # > 0: LM head + cross-entropy this many positions at a time (memory, not math)

    def __post_init__(self):
        if isinstance(self.logits_chunk_size, bool) or not isinstance(self.logits_chunk_size, int) \
                or self.logits_chunk_size < 0:
            raise ConfigError(f"StepConfig.logits_chunk_size must be 0 (off) or a positive integer, got "
                              f"{self.logits_chunk_size!r}")
        if not isinstance(self.z_loss_weight, (int, float)) or self.z_loss_weight < 0:
            raise ConfigError(f"StepConfig.z_loss_weight must be a non-negative number, got {self.z_loss_weight!r}")
        if isinstance(self.num_languages, bool) or not isinstance(self.num_languages, int) or self.num_languages < 1:
            raise ConfigError(f"StepConfig.num_languages must be a positive integer, got {self.num_languages!r}")


def loss_sums(model: nn.Module, params: Any, batch: Batch, cfg: StepConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Summed (not averaged) weighted losses, so micro-batches add up to exactly the full-batch loss.

    Returns the objective (cross-entropy + z-loss, summed over tokens) and its parts.
    """
    if cfg.logits_chunk_size:
        hidden = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
                             return_hidden=True)
        token_ce, log_z = chunked_lm_cross_entropy(model.config, params, hidden, batch["targets"],
                                                   cfg.logits_chunk_size)
    else:
        logits = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
        token_ce, log_z = token_cross_entropy(logits, batch["targets"])
    weights = batch["loss_weights"].astype(jnp.float32)
    ce_sum = jnp.sum(token_ce * weights)
    z_sum = jnp.sum(jnp.square(log_z) * weights)
    lang = jax.nn.one_hot(batch["lang_id"], cfg.num_languages, dtype=jnp.float32) * weights[..., None]
    parts = {
        "ce_sum": ce_sum,
        "z_sum": z_sum,
        "weight_sum": jnp.sum(weights),
        "lang_ce_sum": jnp.einsum("btl,bt->l", lang, token_ce),
        "lang_weight_sum": jnp.sum(lang, axis=(0, 1)),
    }
    return ce_sum + cfg.z_loss_weight * z_sum, parts


def normalise(parts: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """``(denominator, mean token loss, metrics)`` from a whole batch's sums: the weighted token count."""
    denom = jnp.maximum(parts["weight_sum"], 1.0)
    metrics = {
        "log_z_sq": parts["z_sum"] / denom,
        "num_tokens": parts["weight_sum"],
        "lang_ce_sum": parts["lang_ce_sum"],
        "lang_weight_sum": parts["lang_weight_sum"],
    }
    return denom, parts["ce_sum"] / denom, metrics


@dataclasses.dataclass(frozen=True)
class LmObjective(ObjectiveDefaults):
    """Next-token prediction on packed rows (pretraining and SFT: ``loss_weights`` pick the scored tokens)."""

    config: StepConfig = StepConfig()
    rows_per_example: int = 1
    name: str = "lm"
    config_class = StepConfig

    def loss_sums(self, model: nn.Module, params: Any, batch: Batch,
                  extra: Optional[Any] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        return loss_sums(model, params, batch, self.config)

    def normalise(self, sums: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        return normalise(sums)

    def window_sums(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Per-language cross-entropy and weight, added over the logging window."""
        return {"lang": jnp.stack([metrics["lang_ce_sum"], metrics["lang_weight_sum"]]).astype(jnp.float32)}

    def window_report(self, sums: dict[str, Any], languages: Any) -> dict[str, float]:
        """``loss/LANG``: the window's mean token loss per language that had tokens."""
        lang, out = sums["lang"], {}
        for i in range(lang.shape[1]):
            name = languages[i] if i < len(languages) else str(i)
            if lang[1, i] > 0:
                out[f"loss/{name}"] = float(lang[0, i] / lang[1, i])
        return out
