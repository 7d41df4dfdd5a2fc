"""One trainer per workdir: an exclusive lock file naming its holder (host, pid, start time).

Two ``allam train`` on one workdir would both save the same steps (Orbax fails on the second's rename, or both
train the same steps twice and interleave ``metrics.jsonl``). The lock is a file created with ``O_EXCL``; a
lock left by a process that died on this host is stale and taken over; one held from another host cannot be
checked from here, so the error says how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from etils import epath

from allam_jax.core.errors import WorkdirFileError, WorkdirLocked
from allam_jax.core.paths import is_remote
from allam_jax.checkpoint import workdir_files

LOCK_NAME = workdir_files.LOCK


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> Optional[dict]:
    """The holder; None while half-written. Wrong fields are one line naming the lock file and field."""
    return workdir_files.read_lock(epath.Path(path))


def _stale(holder: Optional[dict], path: Path) -> bool:
    if holder is None:  # unreadable: a writer killed between create and write, unless it is being written now
        try:
            return time.time() - path.stat().st_mtime > 10
        except OSError:
            return True
    return holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"])


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True) -> Iterator[None]:
    """Holds ``WORKDIR/.allam-train.lock`` for the duration; ``enabled=False`` (processes other than 0 of a
    multi-process run, which share process 0's lock) and a cloud-storage workdir do nothing."""
    if not enabled or is_remote(workdir):  # object stores (gs://) have no exclusive create to build this on
        yield
        return
    path = Path(workdir) / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if attempt == 0 and _stale(holder, path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            who = (f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('started')}" if holder
                   else "an unknown process")
            raise WorkdirLocked(f"workdir {workdir} is in use by another trainer ({who}; lock file {path}); "
                                "wait for it or stop it, or delete the lock file if that run is gone") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        try:
            mine = (_read(path) or {}).get("pid") == me["pid"]
        except WorkdirFileError:  # damaged since: not this process's to judge
            mine = False
        if mine:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
