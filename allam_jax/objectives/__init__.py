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
from allam_jax.objectives.lm import LmObjective


class Objective(Protocol):
    name: str
    rows_per_example: int  # DPO: two (chosen, rejected)

    def loss_and_grads(self, model: nn.Module, params: Any, batch: dict,
                       extra: Optional[Any] = None) -> tuple[jax.Array, Any, dict[str, jax.Array]]: ...

    def batch_features(self) -> dict[str, Any]: ...  # name -> dtype of a per-row input beyond the LM layout

    def needs_extra_state(self) -> bool: ...  # kept beside the parameters, shaped and sharded like them

    def init_extra_state(self, params: Any) -> Any: ...

    def check(self, exp: Any) -> None: ...  # a ConfigError for an experiment it cannot train


# name -> the objective's class, built from its config (the LM objective's is ``StepConfig``)
OBJECTIVES = {"lm": LmObjective, "dpo": DpoObjective}


def objective_from(dpo: Optional[DpoConfig] = None) -> Optional[Objective]:
    """What ``experiment.dpo = @DpoConfig()`` in gin asks for; None (the experiment's LM objective) otherwise."""
    return OBJECTIVES["dpo"](dpo) if dpo is not None else None


__all__ = ["OBJECTIVES", "DpoObjective", "LmObjective", "Objective", "objective_from"]
