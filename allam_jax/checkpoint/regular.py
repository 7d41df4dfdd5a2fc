"""Orbax checkpoints of the train state plus the data iterator's position.

Layout: ``WORKDIR/checkpoints/<step>/{state,data}``. Orbax writes each step into a temporary
directory and renames it when complete, so a crash mid-save leaves a ``*.orbax-checkpoint-tmp-*``
directory that is ignored (with a warning); a committed step that fails to read falls back to the one
before it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from allam_jax.checkpoint.layout import first_mismatch, newest_readable
from allam_jax.checkpoint.params_io import layer_chunked_save_args
from allam_jax.core.abandoned_reads import reading
from allam_jax.core.errors import CheckpointError, first_line
from allam_jax.core.paths import as_path

log = logging.getLogger(__name__)

_TMP_MARKER = ".orbax-checkpoint-tmp"


_OS_ERROR = re.compile(r"([A-Z][^:\[\]\"]*?)\s*\[os_error_code='(\d+)'\]")


def save_error_text(e: BaseException) -> str:
    """The reason a save failed, short: tensorstore's messages run to two paths and an array name before the
    operating system's words (``No space left on device [os_error_code='28']``), which is what a user needs."""
    m = _OS_ERROR.search(str(e))
    return f"{m.group(1).strip()} (errno {m.group(2)})" if m else first_line(e)


class Checkpointer:
    """Async saves every ``save_every`` steps, keeps the last ``keep``; restores the newest readable step."""

    def __init__(self, directory: str, save_every: int, keep: int = 3, async_save: bool = True):
        self.directory = as_path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def due(self, step: int) -> bool:
        """Regular checkpoints save only where the loop forces them (every ``save_every`` steps, the last, a stop)."""
        return False

    def partial_steps(self) -> list[str]:
        if not self.directory.exists():
            return []
        return sorted(p.name for p in self.directory.iterdir() if _TMP_MARKER in p.name)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Starts saving ``step`` (in the background when async). A failure, of this save or of an earlier
        background one (a full disk, say), stops the run with the step named instead of training on."""
        self.check_errors()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state, save_args=layer_chunked_save_args(state)),
                                  data=ocp.args.JsonSave(data_state))
        try:
            return self.manager.save(step, args=args, force=force)
        except Exception as e:  # noqa: BLE001 - OSError (ENOSPC), tensorstore and orbax errors alike
            raise CheckpointError(f"saving step {step} to {self.directory} failed: {save_error_text(e)} "
                                  f"(last complete step: {self._last_text()})") from None

    def check_errors(self) -> None:
        """Raises if a background save has failed since the last check (called at every step boundary).

        Orbax's ``check_for_errors`` sees a failed commit only once the next save waits for it; the thread that
        finalizes a save holds the failure as soon as it ends, so it is looked at too (without waiting)."""
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._background_failure(e) from None
        ref = getattr(self.manager, "_finalize_thread", None)
        thread = ref.get() if ref is not None and hasattr(ref, "get") else None
        failure = getattr(thread, "exception", None)
        if thread is not None and failure is not None and not thread.is_alive():
            raise self._background_failure(failure, getattr(thread, "step", lambda: None)())

    def _background_failure(self, e: BaseException, step: Optional[int] = None) -> CheckpointError:
        what = f"saving step {step} to {self.directory}" if step is not None else f"a background save to {self.directory}"
        return CheckpointError(f"{what} failed: {save_error_text(e)} (last complete step: {self._last_text()}); "
                               "stopped")

    def _last_text(self) -> str:
        last = self.latest_complete_step()
        return "none yet" if last is None else str(last)

    def latest_complete_step(self) -> Optional[int]:
        """The newest committed step on disk, once saves still in flight have ended (for error messages)."""
        try:
            self.manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - the failure being reported; what is on disk is what counts
            pass
        steps = [int(p.name) for p in self.directory.iterdir() if p.name.isdigit()] if self.directory.exists() else []
        return max(steps, default=None)

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict, int]]:
        """Returns (state, data_state, step) of the newest readable step, or None when there is none."""
        for name in self.partial_steps():
            log.warning("ignoring incomplete checkpoint %s (a save was interrupted)", self.directory / name)
        steps = [p for p in self.directory.iterdir() if p.name.isdigit()] if self.directory.exists() else []
        if steps and all((p / "default").exists() and not (p / "data").exists() for p in steps):
            raise CheckpointError(f"{self.directory} holds emergency checkpoints (steps of one 'default' item); a "
                                  "workdir keeps its kind: set CheckpointConfig.emergency = True (and local_dir)")
        unreadable = []

        def read(step: int) -> tuple[Any, dict]:
            try:
                with reading(self.directory / str(step)):
                    on_disk = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state").item_metadata.tree
            except Exception:  # noqa: BLE001 - unreadable metadata: the restore below fails the same way
                on_disk = None
            if on_disk is not None:
                check_compatible(on_disk, abstract_state, self.directory / str(step))
            with reading(self.directory / str(step)):
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
                )
            return restored["state"], restored["data"]

        def move_aside(step: int, why: str) -> None:
            aside = self._move_aside(step)
            log.warning("checkpoint step %d in %s is unreadable (%s); kept as %s, trying an older one",
                        step, self.directory, why, aside)
            unreadable.append(str(aside))

        step, restored, _ = newest_readable(sorted(self.manager.all_steps(), reverse=True), read, move_aside)
        if step is not None:
            return restored[0], restored[1], step
        if unreadable:  # a run that has checkpoints must not silently start over from step 0
            raise CheckpointError(f"every checkpoint step in {self.directory} is unreadable (kept as "
                                  f"{', '.join(unreadable)}); refusing to start over from step 0: move "
                                  f"{self.directory} away to train from scratch")
        return None

    def _move_aside(self, step: int) -> epath.Path:
        """Renames an unreadable step so a new save of that step can happen; nothing is deleted."""
        aside = self.directory / f"unreadable-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(aside)
        if jax.process_count() > 1:  # every process failed on the same files: none reloads before the rename

            multihost_utils.sync_global_devices(f"allam-move-aside-{step}")
        self.manager.reload()
        return aside

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._background_failure(e) from None
        self.check_errors()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def check_compatible(on_disk: Any, abstract_state: Any, where: epath.Path) -> None:
    """A checkpoint written under another config is an error to report, not a corrupt file to skip."""
    bad = first_mismatch(on_disk, abstract_state)
    if bad is None:
        return
    name, saved, wanted = bad
    what = "model" if name.startswith("['params']") else "optimizer"
    raise CheckpointError(
        f"checkpoint {where} does not match the {what} config: {name} is {saved} on disk, {wanted} in the config"
        + ("" if what == "model" else " (use TrainerConfig.init_from to start a new optimizer from its params)"))
