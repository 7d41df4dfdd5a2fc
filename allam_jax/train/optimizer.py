"""AdamW with warm-up + cosine/linear decay to a floor, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import dataclasses

import jax
import optax

from allam_jax.core.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 3e-3
    warmup_steps: int = 10
    decay_steps: int = 1000
    schedule: str = "cosine"
    final_lr_fraction: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"OptimizerConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "clip_norm", "final_lr_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"OptimizerConfig.{name} must be a non-negative number, got {value!r}")
        for name in ("warmup_steps", "decay_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"OptimizerConfig.{name} must be a non-negative integer, got {value!r}")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then decay to ``final_lr_fraction * peak`` at ``decay_steps``."""
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.final_lr_fraction
    warmup = optax.linear_schedule(0.0, peak, max(cfg.warmup_steps, 1))
    decay_len = max(cfg.decay_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_len, alpha=cfg.final_lr_fraction)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, floor, decay_len)
    else:
        decay = optax.constant_schedule(peak)
    if cfg.warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def weight_decay_mask(params):
    """Decay every weight but the RMSNorm scales (named ``scale``), as in Llama and most LLM recipes.

    Decided by name, not rank, because scanned layers stack the 1-D scales into 2-D arrays.
    """

    def decays(path, _) -> bool:
        return not any(getattr(k, "key", None) == "scale" for k in path)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    chain = []
    if cfg.clip_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(
        optax.adamw(
            learning_rate_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps,
            weight_decay=cfg.weight_decay, mask=weight_decay_mask,
        )
    )
    return optax.chain(*chain)
