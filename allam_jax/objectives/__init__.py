"""Training objectives: what a step minimises. The trainer takes one and never names any.

An objective computes ``(loss, grads, metrics)`` for a batch (the trainer applies the update), says how many
rows one example takes, which extra per-row inputs its batches carry, and whether it keeps extra state
beside the parameters (DPO's frozen reference). Add one: a module here and a line in ``OBJECTIVES``.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import flax.linen as nn
import jax

from allam_jax.objectives.dpo import DpoConfig, DpoObjective
from allam_jax.objectives.lm import LmObjective, StepConfig


class Objective(Protocol):
    name: str
    rows_per_example: int  # DPO: two (chosen, rejected)

    def loss_and_grads(self, model: nn.Module, params: Any, batch: dict,
                       extra: Optional[Any] = None) -> tuple[jax.Array, Any, dict[str, jax.Array]]: ...

    def batch_features(self) -> dict[str, Any]: ...  # name -> dtype of a per-row input beyond the LM layout

    def needs_extra_state(self) -> bool: ...  # kept beside the parameters, shaped and sharded like them

    def init_extra_state(self, params: Any) -> Any: ...

    def check(self, trainer: Any) -> None: ...  # a ConfigError for a combination it cannot train


# name -> how gin's ``experiment`` arguments build it (the LM objective unless another is bound)
OBJECTIVES = {
    "lm": lambda step, **_: LmObjective(step),
    "dpo": lambda step, dpo, **_: DpoObjective(dpo, step),
}


def objective_from(step: StepConfig, dpo: Optional[DpoConfig] = None) -> Objective:
    """What ``experiment.dpo = @DpoConfig()`` (or nothing) in gin asks for."""
    return OBJECTIVES["dpo" if dpo is not None else "lm"](step=step, dpo=dpo)


__all__ = ["OBJECTIVES", "DpoObjective", "LmObjective", "Objective", "objective_from"]
