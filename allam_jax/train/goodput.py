"""Where a run's wall time goes: waiting for data, the step itself, checkpointing, compiling, held-out evals,
start-up; and goodput, the share of wall time spent on steps that count, restarts included.

The loop times each of its parts on the host (``with recorder.timing("data"): ...``). Compilation happens inside
the first call of a jitted function, so JAX's own compile events (``jax.monitoring``) are moved from the part that
triggered them to ``compile``. Steps are dispatched ahead of the device; the host waits for it where the loop
reads results (log and save steps), and that wait is counted as ``step`` (the state is made ready before a save,
so ``checkpoint`` is the save alone). ``data`` is the time spent in ``next(batches)``: the input pipeline
prefetches, so it is time the step had to wait.

``WORKDIR/goodput.json`` (process 0) keeps the totals across runs: the first start's time, the parts summed over
every run, and the productive time at each saved step, so a restart from step S counts the steps after S that the
crash lost as lost, not as productive. Goodput = productive step time / wall time since the first start (time
between a crash and the restart included).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, Iterator, Optional

import jax
from allam_jax.checkpoint import workdir_files
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.core.paths import write_text_atomically

log = logging.getLogger(__name__)

PARTS = ("data", "step", "checkpoint", "compile", "eval", "startup")
_KEEP_SAVED = 64  # productive time at the newest saved steps (a resume is from one of them)
_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/jaxpr_trace_duration")


class GoodputRecorder:
    """Times the loop's parts; logs them per step and keeps the run's goodput in ``WORKDIR/goodput.json``."""

    def __init__(self, workdir: Workdir, start_step: int, write: bool = True, started: Optional[float] = None):
        """``started``: when the run began (``time.time()``): the time until the first step is start-up."""
        self.workdir, self.path = workdir, workdir.goodput
        self.write_enabled = write
        self.created = time.time() if started is None else started
        self._compile = 0.0
        self._window = dict.fromkeys(PARTS, 0.0)
        previous = self._read() if start_step > 0 else {}
        self.first_start = float(previous.get("first_start", self.created))
        self.runs = int(previous.get("runs", 0)) + 1
        self.totals = {p: previous.get("totals", {}).get(p, 0.0) for p in PARTS}
        self.saved = {k: v for k, v in previous.get("saved", {}).items() if k <= start_step}
        self.productive = self.saved.get(start_step, 0.0)
        self.lost = float(previous.get("lost_s", 0.0)) + (float(previous.get("productive_s", 0.0)) - self.productive
                                                           if previous else 0.0)
        self._listening = False

    def _read(self) -> dict[str, Any]:
        return workdir_files.read_goodput(self.workdir.root, PARTS)

    def _on_event(self, event: str, duration: float, **kwargs: Any) -> None:
        if event in _COMPILE_EVENTS:
            self._compile += duration

    def __enter__(self) -> "GoodputRecorder":
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        self._listening = True
        self._add("startup", time.time() - self.created)
        return self

    def __exit__(self, *exc) -> None:
        if self._listening:
            jax.monitoring.unregister_event_duration_listener(self._on_event)
            self._listening = False
        self.write()

    def _add(self, part: str, seconds: float) -> None:
        self._window[part] += seconds
        self.totals[part] += seconds
        if part == "step":
            self.productive += seconds

    @contextlib.contextmanager
    def timing(self, part: str) -> Iterator[None]:
        """Adds the block's wall time to ``part``, less what JAX spent compiling inside it (to ``compile``)."""
        compiled, start = self._compile, time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            compiling = min(elapsed, self._compile - compiled)
            self._add(part, elapsed - compiling)
            self._add("compile", compiling)

    def window(self, steps: int) -> dict[str, float]:
        """Seconds per step of each part since the last call (``time/<part>``), and the run's goodput so far."""
        out = {f"time/{p}": self._window[p] / max(steps, 1) for p in PARTS if p != "startup"}
        out["goodput"] = self.goodput()
        self._window = dict.fromkeys(PARTS, 0.0)
        return out

    def goodput(self) -> float:
        return self.productive / max(time.time() - self.first_start, 1e-9)

    def saved_step(self, step: int) -> None:
        """A checkpoint of ``step`` was written: a restart from it keeps the productive time up to here."""
        self.saved[step] = self.productive
        for old in sorted(self.saved)[:-_KEEP_SAVED]:
            del self.saved[old]

    def summary(self) -> dict[str, Any]:
        wall = time.time() - self.first_start
        accounted = sum(self.totals.values())
        return {"first_start": self.first_start, "runs": self.runs, "wall_s": wall, "productive_s": self.productive,
                "lost_s": self.lost, "goodput": self.productive / max(wall, 1e-9), "totals": self.totals,
                "unaccounted_s": max(0.0, wall - accounted), "saved": {str(k): v for k, v in self.saved.items()}}

    def write(self) -> Optional[dict[str, Any]]:
        if not self.write_enabled:
            return None
        summary = self.summary()
        write_text_atomically(self.path, json.dumps(summary, indent=1))
        return summary


def describe(summary: dict[str, Any]) -> str:
    """One line for the end of a run: goodput and where the rest went."""
    t = summary["totals"]
    wall = max(summary["wall_s"], 1e-9)
    parts = ", ".join(f"{p} {t[p] / wall:.1%}" for p in PARTS if p != "step" and t[p] > 0)
    other = summary["unaccounted_s"] + summary["lost_s"]
    return (f"goodput {summary['goodput']:.1%} of {wall:.0f} s wall time over {summary['runs']} run(s); "
            f"{parts}; lost to restarts and between runs {other / wall:.1%}")
