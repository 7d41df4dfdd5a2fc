"""What most objectives share: no per-row inputs beyond the LM layout, no extra state, nothing to check.

An objective inherits these and overrides what it needs (DPO overrides all four)."""

from __future__ import annotations

from typing import Any


class ObjectiveDefaults:
    def batch_features(self) -> dict[str, Any]:
        """Per-row inputs beyond the trainer's layout: name -> dtype."""
        return {}

    def needs_extra_state(self) -> bool:
        """Whether the objective keeps state beside the parameters (shaped and sharded like them)."""
        return False

    def init_extra_state(self, params: Any) -> Any:
        return None

    def check(self, exp: Any) -> None:
        """A ConfigError for an experiment the objective cannot train."""
