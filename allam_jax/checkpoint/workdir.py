"""A run's folder: the one owner of its layout and its lock. Every writer and reader of a run's files (the
trainer, the metrics writer, goodput, the held-out guard, the run record, the recipe, evaluation) takes a
:class:`Workdir` instead of spelling file names; ``workdir_files`` validates what is read back."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Union

from etils import epath

from allam_jax.checkpoint import workdir_files
from allam_jax.checkpoint.workdir_lock import workdir_lock
from allam_jax.core.paths import as_path, is_remote


@dataclasses.dataclass(frozen=True)
class Workdir:
    root: epath.Path

    @classmethod
    def at(cls, where: Union["Workdir", str, epath.Path]) -> "Workdir":
        """A Workdir for a path (local or ``gs://``), or ``where`` itself when it is one."""
        return where if isinstance(where, Workdir) else cls(as_path(str(where)))

    def __str__(self) -> str:
        return str(self.root)

    @property
    def remote(self) -> bool:
        return is_remote(str(self.root))

    @property
    def checkpoints(self) -> epath.Path:
        return self.root / "checkpoints"  # DIR/<step>/state: see checkpoint.layout

    @property
    def config_gin(self) -> epath.Path:
        return self.root / "config.gin"  # the operative gin config of the accepted run

    @property
    def metrics(self) -> epath.Path:
        return self.root / "metrics.jsonl"

    @property
    def metrics_parts(self) -> epath.Path:
        return self.root / "metrics.parts"  # on a bucket: rows appended as objects, folded in at the next start

    @property
    def tensorboard(self) -> epath.Path:
        return self.root / "tensorboard"  # TensorBoard events, and profiles under plugins/profile/

    @property
    def run_record(self) -> epath.Path:
        return self.root / workdir_files.RUN_RECORD

    @property
    def goodput(self) -> epath.Path:
        return self.root / workdir_files.GOODPUT

    @property
    def heldout_start(self) -> epath.Path:
        return self.root / workdir_files.HELDOUT_START

    def create(self) -> "Workdir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def lock(self, enabled: bool = True) -> Iterator["Workdir"]:
        """Held by the one trainer of this folder for the run (``workdir_lock``); a no-op on a bucket and on
        processes other than 0 (``enabled=False``)."""
        with workdir_lock(str(self.root), enabled=enabled):
            yield self


__all__ = ["Workdir"]
