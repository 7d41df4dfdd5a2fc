"""Keep a failed Orbax read to the one line we print about it.

When one tensor of a checkpoint cannot be read, Orbax raises at once while TensorStore's other reads are
still in flight; they finish after Orbax's event loop has closed and each one prints an unraisable
``RuntimeError: Event loop is closed`` traceback, and asyncio later logs "Task (or Future) exception was never retrieved"
with a page of TensorStore spec. The caller has already reported that step as unreadable (and fallen back),
so these echoes are dropped (and Orbax's warnings while it probes the step, which our line replaces) — only
around our own reads and after one of them failed, so any other failure still shows.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Any, Iterator

_lock = threading.Lock()
_active = 0
_abandoned: set[str] = set()
_installed = False


def _drop_closed_loop_echo(previous: Any):
    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if (_active or _abandoned) and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    return hook


class _OrphanedTaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _abandoned or "exception was never retrieved" not in record.getMessage():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        text = f"{record.getMessage()} {exc}"
        return not ("orbax" in text or "tensorstore" in text or any(p in text for p in list(_abandoned)))


class _ReadWarningFilter(logging.Filter):
    """On the ``absl`` logger (Orbax's): its warnings while we probe a step ("Metadata file does not exist", "Failed to get item metadata")
    describe what our own message then says in one line; errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_active and record.levelno < logging.ERROR)


def _install() -> None:
    global _installed
    if not _installed:
        sys.unraisablehook = _drop_closed_loop_echo(sys.unraisablehook)
        logging.getLogger("asyncio").addFilter(_OrphanedTaskFilter())
        logging.getLogger("absl").addFilter(_ReadWarningFilter())
        _installed = True


@contextlib.contextmanager
def reading(directory: Any) -> Iterator[None]:
    """Wraps one Orbax restore of ``directory``; if it raises, the directory counts as reported unreadable."""
    global _active
    with _lock:
        _install()
        _active += 1
    try:
        yield
    except BaseException:
        with _lock:
            _abandoned.add(str(directory).rstrip("/"))
        raise
    finally:
        with _lock:
            _active -= 1
