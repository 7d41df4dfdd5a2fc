"""The files a run keeps in its workdir, each read through one validated loader.

``run.json`` (what the data position means), ``heldout_start.json`` (the held-out guard's start), the lock, the
data position saved with each checkpoint and ``goodput.json`` are written by the trainer, but a crash, a user's
edit, a copy from another run or an older version can leave anything there. Each has a schema here; a damaged,
outdated or foreign file is one line naming the file and the field (:class:`WorkdirFileError`, exit 2), except
``goodput.json``, which is only bookkeeping: a warning and a fresh count.

The data position is sealed when saved (the step it belongs to and a checksum of its fields), so an edited
``batches`` is refused instead of resuming on the wrong batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from typing import Any, Callable, Iterator, Mapping, Optional

from etils import epath

from allam_jax.core.errors import WorkdirFileError

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
GOODPUT = "goodput.json"
HELDOUT_START = "heldout_start.json"
LOCK = ".allam-train.lock"
_SEAL = ("_step", "_checksum")  # the fields the trainer adds to a data position when saving it


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any, minimum: float = -math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= minimum)


def load_json(path: epath.Path, what: str) -> Any:
    """The file's JSON value; unreadable text or JSON is one line naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise WorkdirFileError(f"{path} ({what}) is damaged: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise WorkdirFileError(f"{path} ({what}) is damaged: not JSON ({e.msg} at line {e.lineno} column {e.colno})"
                               ) from None


def expect(path: epath.Path, obj: Any, field: str, ok: Callable[[Any], bool], wanted: str,
           optional: bool = False) -> Any:
    """``obj[field]``, checked: a missing field or a value ``ok`` refuses is one line naming file and field."""
    if not isinstance(obj, dict):
        raise WorkdirFileError(f"{path} is damaged: a JSON object was expected, got {_kind(obj)}")
    if field not in obj:
        if optional:
            return None
        raise WorkdirFileError(f"{path} is damaged or from another version: field '{field}' is missing")
    value = obj[field]
    if optional and value is None:
        return None
    if not ok(value):
        raise WorkdirFileError(f"{path} is damaged: field '{field}' must be {wanted}, got {json.dumps(value)[:80]}")
    return value


@contextlib.contextmanager
def _hint(text: str) -> Iterator[None]:
    """Adds what the user can do to a WorkdirFileError raised inside."""
    try:
        yield
    except WorkdirFileError as e:
        raise WorkdirFileError(f"{e}{text}") from None


def _map_of(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and ok(x) for k, x in v.items())


# ---- run.json ----------------------------------------------------------------------------------------------------

def read_run_record(workdir: epath.Path) -> Optional[dict]:
    """``run.json``, validated; None when there is none (a workdir from before the record)."""
    path = workdir / RUN_RECORD
    if not path.exists():
        return None
    with _hint(f" (delete {path} to resume without checking the data position's meaning)"):
        obj = load_json(path, "the run's record of batch shape and data")
        return {
            "batch_size": expect(path, obj, "batch_size", lambda v: is_count(v, 1), "a positive integer"),
            "seq_len": expect(path, obj, "seq_len", lambda v: is_count(v, 1), "a positive integer"),
            "process_count": expect(path, obj, "process_count", lambda v: is_count(v, 1), "a positive integer"),
            "data_shards": expect(path, obj, "data_shards", is_count, "a non-negative integer or null",
                                  optional=True),
            "rates": expect(path, obj, "rates", _map_of(lambda x: is_number(x, 0)),
                            "an object of non-negative rates or null", optional=True),
        }


# ---- heldout_start.json ------------------------------------------------------------------------------------------

def read_heldout_start(workdir: epath.Path) -> Optional[dict[str, float]]:
    """The held-out guard's starting bits/byte per language, validated; None when not measured yet."""
    path = workdir / HELDOUT_START
    if not path.exists():
        return None
    with _hint(f" (delete {path} to measure the start again at the resumed step)"):
        obj = load_json(path, "the held-out guard's starting values")
        expect(path, obj, "step", is_count, "a non-negative integer")
        values = expect(path, obj, "bits_per_byte", _map_of(lambda x: is_number(x) and x > 0),
                        "an object of positive bits/byte per language")
    return {k: float(v) for k, v in values.items()}


# ---- the lock ----------------------------------------------------------------------------------------------------

def read_lock(path: epath.Path) -> Optional[dict]:
    """The lock's holder (host, pid, started); None when the file is empty or half-written (a writer killed
    between creating and writing it). A lock whose fields are wrong is one line naming the field."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    with _hint(" (if no trainer runs on this workdir, delete the lock file)"):
        return {"host": expect(path, obj, "host", lambda v: isinstance(v, str) and bool(v), "a host name"),
                "pid": expect(path, obj, "pid", lambda v: is_count(v, 1), "a positive integer"),
                "started": expect(path, obj, "started", lambda v: isinstance(v, str), "a time", optional=True)}


# ---- goodput.json (bookkeeping: a damaged file is a warning and a fresh count) -----------------------------------

def read_goodput(workdir: epath.Path, parts: tuple[str, ...]) -> dict[str, Any]:
    """The goodput totals of earlier runs; {} (and a warning) when the file is missing, damaged or foreign."""
    path = workdir / GOODPUT
    if not path.exists():
        return {}
    try:
        obj = load_json(path, "goodput bookkeeping")
        return {
            "first_start": float(expect(path, obj, "first_start", lambda v: is_number(v, 0), "a time")),
            "runs": expect(path, obj, "runs", is_count, "a non-negative integer"),
            "totals": {p: float(v) for p, v in expect(path, obj, "totals", _map_of(lambda x: is_number(x, 0)),
                                                        "an object of seconds per part").items() if p in parts},
            "saved": {int(k): float(v) for k, v in expect(
                path, obj, "saved", lambda d: _map_of(lambda x: is_number(x, 0))(d) and all(k.isdigit() for k in d),
                "an object of seconds per saved step").items()},
            "productive_s": float(expect(path, obj, "productive_s", lambda v: is_number(v, 0), "seconds")),
            "lost_s": float(expect(path, obj, "lost_s", lambda v: is_number(v, 0), "seconds")),
        }
    except (WorkdirFileError, OSError) as e:
        log.warning("%s; goodput counts afresh from this run", e)
        return {}


# ---- the data position saved with each checkpoint ----------------------------------------------------------------

def _checksum(position: Mapping[str, Any], step: int) -> str:
    raw = json.dumps({"position": position, "step": int(step)}, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def seal_data_position(position: Mapping[str, Any], step: int) -> dict:
    """The iterator's position as saved with ``step``: plus the step and a checksum of both."""
    position = dict(position)
    return {**position, "_step": int(step), "_checksum": _checksum(position, int(step))}


def open_data_position(saved: Any, step: int, where: str) -> dict:
    """The iterator's position saved with checkpoint ``step`` (at ``where``), validated: a position edited since
    it was saved (its checksum), saved for another step, or whose batch count is not the step's, is refused. A
    position from before the seal is taken as it is."""
    if not isinstance(saved, dict):
        raise WorkdirFileError(f"the data position in {where} is damaged: a JSON object was expected, got "
                               f"{_kind(saved)}")
    step = int(step)  # a checkpoint manager may count in NumPy integers
    position = {k: v for k, v in saved.items() if k not in _SEAL}
    fix = f"; move {where} aside to resume from an older step"
    if "batches" in position and not is_count(position["batches"]):
        raise WorkdirFileError(f"the data position in {where} is damaged: field 'batches' must be a non-negative "
                               f"integer, got {json.dumps(position['batches'])[:80]}{fix}")
    if "_step" not in saved:
        return position
    if saved["_step"] != step:
        raise WorkdirFileError(f"the data position in {where} belongs to step {saved['_step']!r}, not {step} (a "
                               f"copied or edited file){fix}")
    if "batches" in position and position["batches"] != step:
        raise WorkdirFileError(f"the data position in {where} was edited: field 'batches' is {position['batches']} "
                               f"but step {step} took {step} batches{fix}")
    if saved.get("_checksum") != _checksum(position, step):
        raise WorkdirFileError(f"the data position in {where} was edited or damaged: its checksum does not match "
                               f"its fields ({', '.join(sorted(position))}){fix}")
    return position
