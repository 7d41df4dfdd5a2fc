"""What most objectives share: no per-row inputs beyond the LM layout, no extra state, nothing to check,
no metrics summed over a logging window.

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

    def window_sums(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Arrays to add up over a logging window on the device (step metrics -> sums); none by default."""
        return {}

    def window_report(self, sums: dict[str, Any], languages: Any) -> dict[str, float]:
        """The window's logged metrics from those sums (on the host), named by the objective."""
        return {}
