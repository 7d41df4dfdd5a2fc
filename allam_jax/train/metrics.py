"""Metric sinks (``metrics.jsonl`` + TensorBoard event files) and model-FLOPs utilisation."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from allam_jax.checkpoint.workdir import Workdir
from allam_jax.core.partitioning import jit_on
from allam_jax.core.paths import write_text_atomically

# Dense bf16 peak FLOP/s per device, from vendor data sheets.
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}

_measured_cpu_peaks: dict[str, float] = {}


def measure_matmul_peak(n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
    """Best observed matmul FLOP/s on the default device (the CPU 'peak' for MFU).

    ``dtype`` is the input dtype; products are accumulated in (and returned as) float32, the form in which
    CPUs with bf16 dot instructions run bf16 at twice the float32 rate.
    """
    a = jnp.ones((n, n), dtype)
    f = jit_on(None, lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))  # one device, no mesh
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def peak_flops_per_device(configured: Optional[float] = None, dtype=jnp.float32) -> float:
    """The configured peak, else the data-sheet value for this device kind, else a matmul peak measured in
    the model's compute ``dtype``."""
    if configured:
        return float(configured)
    kind = jax.devices()[0].device_kind
    for prefix, flops in PEAK_FLOPS_BY_DEVICE_KIND.items():
        if kind.startswith(prefix):
            return flops
    key = jnp.dtype(dtype).name
    if key not in _measured_cpu_peaks:
        _measured_cpu_peaks[key] = measure_matmul_peak(dtype=dtype)
    return _measured_cpu_peaks[key]


PART_ROWS = 1000  # on a bucket: rows per part object, so each write uploads at most this many rows


class MetricsWriter:
    """Writes one JSON object per logged step to ``metrics.jsonl`` and scalars to TensorBoard.

    Only process 0 writes; a resumed run continues the same log. Locally the file is appended to. An object
    in a bucket cannot be appended to, and rewriting the whole log at each step costs quadratic uploads over a
    long run: there the new rows go to part objects ``metrics.parts/NNNNNN.jsonl`` of at most ``PART_ROWS``
    rows (each write re-uploads one part), which are folded into ``metrics.jsonl`` when the writer closes or,
    after a crash, when the next run opens it. :func:`read_metrics` reads both.
    """

    def __init__(self, workdir: Union[str, Workdir], enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        wd = Workdir.at(workdir).create()
        self._workdir, self._path, self._remote = wd, wd.metrics, wd.remote
        if self._remote:
            self._jsonl = None
            self._parts = wd.metrics_parts
            self._part: list[str] = []
            self._part_index = 0
            fold_parts(wd)
        else:
            previous = self._path.read_bytes() if self._path.exists() else b""
            self._jsonl = self._path.open("a", encoding="utf-8")
            if previous and not previous.endswith(b"\n"):  # a killed run left half a line: end it
                self._append("\n")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.fspath(wd.tensorboard))

    def _append(self, text: str) -> None:
        if self._jsonl is not None:
            self._jsonl.write(text)
            self._jsonl.flush()
            return
        if len(self._part) >= PART_ROWS:
            self._part, self._part_index = [], self._part_index + 1
        self._part.append(text)
        self._parts.mkdir(parents=True, exist_ok=True)
        (self._parts / f"{self._part_index:06d}.jsonl").write_text("".join(self._part), encoding="utf-8")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None and np.isfinite(float(v))}
        self._append(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            if self._jsonl is not None:
                self._jsonl.close()
            else:
                fold_parts(self._workdir)
            if self._tb is not None:
                self._tb.close()


def _part_files(wd: Workdir) -> list:
    parts = wd.metrics_parts
    return sorted(parts.glob("*.jsonl")) if parts.exists() else []


def fold_parts(wd: Workdir) -> None:
    """Appends the part objects' rows to ``metrics.jsonl`` (rewritten once) and deletes the parts."""
    parts = _part_files(wd)
    if not parts:
        return
    path = wd.metrics
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join(p.read_text(encoding="utf-8") for p in parts)
    write_text_atomically(path, text)
    for p in parts:
        p.unlink()


def read_metrics(workdir: Union[str, Workdir]) -> list[dict]:
    """Rows of ``WORKDIR/metrics.jsonl`` by step, for notebooks and reports.

    A resumed run logs again the steps after its last checkpoint: the later row wins. Torn lines
    (a run killed mid-write) are skipped. On a bucket, the rows of part objects not yet folded in count too.
    """
    rows: dict[int, dict] = {}
    wd = Workdir.at(workdir)
    path = wd.metrics
    parts = _part_files(wd)  # a live or crashed bucket run's rows not yet folded in
    text = path.read_text(encoding="utf-8") if path.exists() or not parts else ""
    text += "".join("\n" + p.read_text(encoding="utf-8") for p in parts)
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]
