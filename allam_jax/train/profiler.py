"""A ``jax.profiler`` trace of a few training steps, for TensorBoard's profile tab or XProf.

The trace goes to ``WORKDIR/tensorboard/plugins/profile/<time>/<host>.xplane.pb`` (local or ``gs://``); each step
inside it is marked (``StepTraceAnnotation``), so XProf's step-time view splits it. By default only process 0
traces: one host of a pod slice shows the program every host runs.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Optional, Sequence

import jax

log = logging.getLogger(__name__)

WARMUP_STEPS = 2  # profile_steps start 0: skip this many steps of the run (the first compiles the step)


class StepProfiler:
    """Starts the trace before step ``first`` and stops it after step ``last`` (device work included)."""

    def __init__(self, steps: Optional[Sequence[int]], start_step: int, logdir: str, enabled: bool = True,
                 end_step: Optional[int] = None):
        self.logdir = logdir
        self.active = False
        self.first = self.last = None
        if steps is None or not enabled:
            return
        start, count = steps
        first = start if start > 0 else start_step + 1 + WARMUP_STEPS
        if first <= start_step:
            log.warning("TrainerConfig.profile_steps starts at step %d, but this run resumes after step %d: no "
                        "profile", first, start_step)
            return
        if end_step is not None and first > end_step:
            log.warning("TrainerConfig.profile_steps starts at step %d (%d steps past the start, after the compile), "
                        "but this run ends at step %d: no profile", first, WARMUP_STEPS, end_step)
            return
        self.first, self.last = first, first + count - 1

    def before(self, step: int) -> None:
        if step == self.first:
            jax.profiler.start_trace(self.logdir)
            self.active = True
            log.info("profiling steps %d..%d into %s", self.first, self.last, self.logdir)

    def annotate(self, step: int) -> Any:
        return jax.profiler.StepTraceAnnotation("train", step_num=step) if self.active else contextlib.nullcontext()

    def after(self, step: int, state: Any) -> None:
        if self.active and step == self.last:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            log.info("profile of steps %d..%d written under %s", self.first, self.last, self.logdir)
