"""Metric sinks (``metrics.jsonl`` + TensorBoard event files) and model-FLOPs utilisation."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from allam_jax.core.paths import as_path, is_remote

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
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
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


class MetricsWriter:
    """Writes one JSON object per logged step to ``metrics.jsonl`` and scalars to TensorBoard.

    Only process 0 writes; the file is appended to, so a resumed run continues the same log.
    """

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        root = as_path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        self._path = root / "metrics.jsonl"
        self._remote = is_remote(workdir)
        previous = self._path.read_bytes() if self._path.exists() else b""
        if self._remote:  # an object cannot be appended to: the log is rewritten whole at each write
            self._rows = [previous.decode("utf-8", errors="replace")] if previous else []
            self._jsonl = None
        else:
            self._jsonl = self._path.open("a", encoding="utf-8")
        if previous and not previous.endswith(b"\n"):  # a killed run left half a line: end it so the next row parses
            self._append("\n")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.fspath(root / "tensorboard"))

    def _append(self, text: str) -> None:
        if self._jsonl is not None:
            self._jsonl.write(text)
            self._jsonl.flush()
        else:
            self._rows.append(text)
            self._path.write_text("".join(self._rows), encoding="utf-8")

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
            if self._tb is not None:
                self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """Rows of ``WORKDIR/metrics.jsonl`` by step, for notebooks and reports.

    A resumed run logs again the steps after its last checkpoint: the later row wins. Torn lines
    (a run killed mid-write) are skipped.
    """
    rows: dict[int, dict] = {}
    path = as_path(workdir) / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]
