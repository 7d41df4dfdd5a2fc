"""Training objectives: what a step minimises. The trainer takes one and never names any.

An objective returns its loss *summed* over a batch's examples, with the statistics that normalise it
(``loss_sums``); ``normalise`` turns a whole batch's sums into the denominator, the reported loss and the
metrics. The trainer (:mod:`allam_jax.train.step`) micro-batches, differentiates and divides once, so any
objective accumulates gradients. An objective also says how many rows one example takes, which extra per-row
inputs its batches carry, and whether it keeps extra state beside the parameters (DPO's frozen reference).

Add one: a module here (inheriting ``ObjectiveDefaults`` for what it does not change) with a frozen dataclass
config (its ``config_class``, configurable in gin under its class name) and a line in ``OBJECTIVES``; gin then
picks it with ``experiment.objective = 'name'``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Protocol

import flax.linen as nn
import jax

from allam_jax.core.errors import ConfigError
from allam_jax.objectives.base import ObjectiveDefaults
from allam_jax.objectives.dpo import DpoConfig, DpoObjective
from allam_jax.objectives.lm import LmObjective, StepConfig


class Objective(Protocol):
    name: str
    rows_per_example: int  # DPO: two (chosen, rejected)
    config_class: ClassVar[type]  # the objective is built as ``cls(config_class(...))``

    def loss_sums(self, model: nn.Module, params: Any, batch: dict,
                  extra: Optional[Any] = None) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def normalise(self, sums: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]: ...

    def batch_features(self) -> dict[str, Any]: ...  # name -> dtype of a per-row input beyond the LM layout

    def needs_extra_state(self) -> bool: ...  # kept beside the parameters, shaped and sharded like them

    def init_extra_state(self, params: Any) -> Any: ...

    def check(self, exp: Any) -> None: ...  # a ConfigError for an experiment it cannot train

    def window_sums(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]: ...  # summed over a log window

    def window_report(self, sums: dict[str, Any], languages: Any) -> dict[str, float]: ...  # its logged names


# name -> the objective's class; ``experiment.objective = 'name'`` in gin picks one
OBJECTIVES: dict[str, type] = {"lm": LmObjective, "dpo": DpoObjective}


def make_objective(name: str, config: Optional[Any] = None) -> Objective:
    """The registered objective ``name`` built from its config (its ``config_class``'s defaults when None)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"experiment.objective = {name!r} is not a registered objective; known: {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    if config is not None and not isinstance(config, cls.config_class):
        raise ConfigError(f"objective {name!r} takes a {cls.config_class.__name__}, got {type(config).__name__}")
    return cls(config if config is not None else cls.config_class())


__all__ = ["OBJECTIVES", "DpoConfig", "DpoObjective", "LmObjective", "Objective", "ObjectiveDefaults", "StepConfig",
           "make_objective"]
