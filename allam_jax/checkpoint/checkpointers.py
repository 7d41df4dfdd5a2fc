"""The trainer's checkpointers behind one protocol, made by one factory: the regular one (``regular``) and Orbax's
emergency multi-tier one (``emergency``), chosen by ``CheckpointConfig.emergency``."""


from __future__ import annotations

from typing import Any, Optional, Protocol

from etils import epath
from jax.sharding import Mesh

from allam_jax.checkpoint.emergency import CheckpointConfig, EmergencyCheckpointer
from allam_jax.checkpoint.regular import Checkpointer
from allam_jax.checkpoint.workdir import Workdir


class StepCheckpointer(Protocol):
    """What the trainer saves and resumes through: a train state and the data position per step."""

    directory: epath.Path

    def due(self, step: int) -> bool: ...

    def latest_step(self) -> Optional[int]: ...

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool: ...

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict, int]]: ...

    def check_errors(self) -> None: ...  # a CheckpointError for a save that failed in the background

    def wait(self) -> None: ...

    def close(self) -> None: ...


def make_checkpointer(workdir: Workdir, config: CheckpointConfig, mesh: Mesh, abstract_state: Any, save_every: int,
                      keep: int, async_save: bool = True) -> StepCheckpointer:
    """The run's checkpointer in ``WORKDIR/checkpoints``: Orbax's emergency (multi-tier) one when
    ``CheckpointConfig.emergency``, else the regular one."""
    if config.emergency:
        return EmergencyCheckpointer(str(workdir.checkpoints), config, mesh, abstract_state, save_every, keep,
                                     async_save)
    return Checkpointer(str(workdir.checkpoints), save_every, keep, async_save)


__all__ = ["StepCheckpointer", "make_checkpointer"]
