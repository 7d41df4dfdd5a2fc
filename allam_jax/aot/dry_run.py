"""Compile a run's train, eval or decode step for a topology from abstract arrays, and measure it.

Nothing is allocated: parameters, optimizer state and batches are ``ShapeDtypeStruct``s carrying the
shardings ``allam train`` would give them, so a 70B model compiles for a pod slice on a laptop. The XLA TPU
compiler then reports what each chip needs (arguments, temporaries, outputs) and which collectives the
partitioned program runs; model FLOPs per step come from the config (the PaLM convention), not from XLA's cost
analysis, which counts a scanned layer stack's loop body once.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any, Optional

import jax
import jax.numpy as jnp
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from allam_jax.aot.hlo_stats import collective_stats, dcn_transfers, largest_buffers
from allam_jax.aot.step_time import Interconnect, dcn_collectives, estimate_step_time, model_flops_utilization
from allam_jax.aot.topology import Topology
from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import TENSOR_AXIS, Partitioner
from allam_jax.core.trees import count_params
from allam_jax.eval.scorer import scoring_function
from allam_jax.inference.generate import decoding_function
from allam_jax.model.attention import LayerCache
from allam_jax.train.program import build_train_program

if TYPE_CHECKING:
    from allam_jax.train.experiment import Experiment
    from allam_jax.train.program import TrainProgram

STEPS = ("train", "eval", "decode")
MULTISLICE_OPEN_TORUS = (
    "inside each slice, the wraparound links: libtpu's compile-only multislice devices have none (0.0.52 ignores "
    "wrap= with num_slices), so it lowers gathers there as all-reduces; the ICI numbers are an open torus's (compile "
    "one slice for a closed one's)")
_OOM = re.compile(r"RESOURCE_EXHAUSTED|Ran out of memory|out of memory", re.IGNORECASE)
_USED = re.compile(r"Used ([\d.]+)([KMGT]?)i?B? of ([\d.]+)([KMGT]?)i?B? hbm", re.IGNORECASE)
_REQUIRED = re.compile(r"total memory required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM "
                       r"\(([\d.]+)([KMGT]?)\)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclasses.dataclass
class CompileReport:
    step: str
    topology: str
    libtpu_topology: Optional[str]
    num_devices: int
    mesh_shape: dict[str, int]
    params: int
    rows: int
    seq_len: int
    grad_accum_steps: int
    attention_impl: str
    remat_policy: str
    compute_dtype: str
    hbm_bytes: float
    fits: bool
    compile_seconds: float
    argument_bytes: Optional[float] = None
    output_bytes: Optional[float] = None
    alias_bytes: Optional[float] = None
    temp_bytes: Optional[float] = None
    required_bytes: Optional[float] = None  # per device: arguments + temporaries + outputs not aliased
    model_flops: float = 0.0  # per step, whole slice (PaLM's count: attention's full T x T)
    model_flops_causal: float = 0.0  # the same with causal attention halved (MaxText's count)
    peak_flops_per_device: Optional[float] = None
    collectives: dict = dataclasses.field(default_factory=dict)
    oom_message: Optional[str] = None  # the compiler's words when it stopped early for memory
    largest_buffers: list = dataclasses.field(default_factory=list)  # when it does not fit: the biggest arrays
    estimate: Optional[dict] = None  # TPU only: aot.step_time.StepTimeEstimate's fields (seconds per step)
    num_slices: int = 1
    dcn_bandwidth: Optional[float] = None  # bytes/s per chip between slices
    dcn_collectives: dict = dataclasses.field(default_factory=dict)  # between slices: kind -> count, bytes, seconds
    calibration_note: Optional[str] = None  # TPU: the efficiency's fit and its held-out error (aot.calibration)

    @property
    def model_flops_per_device(self) -> float:
        return self.model_flops / self.num_devices

    def step_seconds(self, mfu: float) -> Optional[float]:
        if not self.peak_flops_per_device:
            return None
        return self.model_flops_per_device / (self.peak_flops_per_device * mfu)

    @property
    def estimated_mfu(self) -> Optional[float]:
        """Model FLOPs (PaLM's count) over the estimated step time at the chip's peak."""
        return self._mfu(self.model_flops)

    @property
    def estimated_mfu_causal(self) -> Optional[float]:
        """The same with MaxText's count (causal attention halved): lower for the same step time."""
        return self._mfu(self.model_flops_causal)

    def _mfu(self, flops: float) -> Optional[float]:
        if not self.estimate or not self.peak_flops_per_device or not self.estimate["step_seconds"]:
            return None
        return model_flops_utilization(flops / self.num_devices, self.estimate["step_seconds"],
                                       self.peak_flops_per_device)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(model_flops_per_device=self.model_flops_per_device, step_seconds_at_100pct_mfu=self.step_seconds(1.0),
                 estimated_mfu=self.estimated_mfu, estimated_mfu_causal=self.estimated_mfu_causal)
        return d


class _HloDump:
    """The optimized HLO as the TPU compiler itself prints it (its dump of the module after optimizations), not
    as jaxlib re-parses it: a libtpu newer than jaxlib emits instructions jaxlib's parser refuses (async-update
    arity checks), so ``compiled.as_text()`` can fail on the very programs worth reading. CPU topologies, and a
    dump that is missing, fall back to ``as_text()``."""

    def __init__(self, topology: Topology):
        self.dir = tempfile.mkdtemp(prefix="allam-hlo-") if topology.platform == "tpu" else None

    def options(self) -> dict[str, Any]:
        if self.dir is None:
            return {}
        return {"xla_dump_to": self.dir, "xla_dump_hlo_as_text": True, "xla_dump_hlo_pass_re": "^$"}

    def __enter__(self) -> "_HloDump":
        return self

    def __exit__(self, *exc) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def text(self, compiled) -> str:
        if self.dir is not None:
            dumps = sorted(glob.glob(os.path.join(self.dir, "*.after_optimizations.txt")), key=os.path.getmtime)
            if dumps:
                with open(dumps[-1], encoding="utf-8") as f:
                    return f.read()
        return compiled.as_text()


def _bytes(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit.upper()]


def _abstract(tree: Any, shardings: Any, dtype=None) -> Any:
    def one(a, s):
        dt = dtype if (dtype is not None and jnp.issubdtype(a.dtype, jnp.floating)) else a.dtype
        return jax.ShapeDtypeStruct(a.shape, dt, sharding=s)

    return jax.tree_util.tree_map(one, tree, shardings)


def _train_lowered(exp, program, seq_len):
    return program.step_fn.lower(program.abstract_state, program.abstract_batch(seq_len))


def _eval_lowered(exp, program, seq_len, partitioner):
    rows = exp.trainer.batch_size
    bs = program.batch_sharding
    arrays = [jax.ShapeDtypeStruct((rows, seq_len), jnp.int32, sharding=bs) for _ in range(4)]
    return scoring_function(program.model, partitioner).lower(program.abstract_state.params, *arrays)


def _decode_lowered(exp, program, seq_len, partitioner):
    cfg = exp.model
    rows = exp.trainer.batch_size
    bs = program.batch_sharding
    cache_spec = NamedSharding(partitioner.mesh, P(None, partitioner.batch_axes, None, TENSOR_AXIS, None))
    shape = (cfg.num_layers, rows, seq_len, cfg.num_kv_heads, cfg.kv_head_dim)
    cache = LayerCache(*(jax.ShapeDtypeStruct(shape, cfg.dtype, sharding=cache_spec) for _ in range(2)))
    replicated = partitioner.replicated
    params = _abstract(program.abstract_state.params, program.shardings.params, cfg.dtype)  # as Generator casts
    return decoding_function(program.model, partitioner).lower(
        params, jax.ShapeDtypeStruct((rows, 1), jnp.int32, sharding=bs),
        jax.ShapeDtypeStruct((rows, 1), jnp.int32, sharding=bs), cache,
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        jax.ShapeDtypeStruct((rows, seq_len), jnp.bool_, sharding=bs))


def lower_step(exp: "Experiment", partitioner: Partitioner, step: str = "train",
               program: Optional["TrainProgram"] = None) -> Any:
    """The lowered program of ``step`` (train, eval or decode) for ``exp`` on the partitioner's mesh: the
    very jitted functions that ``allam train``, the scorer and the decoder run, lowered from abstract arrays."""
    if step not in STEPS:
        raise ConfigError(f"--step must be one of {STEPS}, got {step!r}")
    with partitioner.activate():
        program = program or build_train_program(exp, partitioner)
        seq_len = exp.trainer.seq_len
        if step == "train":
            return _train_lowered(exp, program, seq_len)
        if step == "eval":
            return _eval_lowered(exp, program, seq_len, partitioner)
        return _decode_lowered(exp, program, seq_len, partitioner)


def _model_flops(exp, step: str, rows: int, seq_len: int, causal: bool = False) -> float:
    cfg = exp.model
    if step == "train":
        return cfg.training_flops_per_token(seq_len, causal) * rows * seq_len
    if step == "eval":
        return cfg.flops_per_token(seq_len, causal) * rows * seq_len
    return cfg.flops_per_token(seq_len) * rows  # one new token per row against a whole cache of seq_len


def compile_step(exp: "Experiment", topology: Topology, step: str = "train",
                 hlo_out: Optional[str] = None) -> CompileReport:
    """Lowers and compiles ``step`` of experiment ``exp`` for ``topology``; a program that does not fit is
    reported (``fits=False`` with the compiler's message), not raised. ``hlo_out``: a folder (local or gs://) to
    keep the optimized HLO (``hlo.txt``) and each device's torus coordinates and slice in the program's device
    order (``devices.json``), enough to price the program again (``aot.step_time``) without compiling."""
    if step not in STEPS:
        raise ConfigError(f"--step must be one of {STEPS}, got {step!r}")
    partitioner = Partitioner.create(exp.partitioning, topology.devices)
    mesh = partitioner.mesh
    seq_len = exp.trainer.seq_len
    with partitioner.activate():
        program = build_train_program(exp, partitioner)
        rows = program.rows_per_step if step == "train" else exp.trainer.batch_size
        report = CompileReport(
            step=step, topology=topology.name, libtpu_topology=topology.libtpu_name, num_devices=topology.num_devices,
            mesh_shape=dict(mesh.shape), params=count_params(program.abstract_state.params), rows=rows,
            seq_len=seq_len, grad_accum_steps=exp.trainer.grad_accum_steps if step == "train" else 1,
            attention_impl=exp.model.attention_impl, remat_policy=exp.model.remat_policy,
            compute_dtype=jnp.dtype(exp.model.dtype).name, hbm_bytes=topology.hbm_bytes, fits=True,
            compile_seconds=0.0, model_flops=_model_flops(exp, step, rows, seq_len),
            model_flops_causal=_model_flops(exp, step, rows, seq_len, causal=True),
            peak_flops_per_device=topology.peak_flops, num_slices=topology.num_slices,
            dcn_bandwidth=topology.chip.dcn_bandwidth if topology.chip else None,
        )
        start = time.perf_counter()
        lowered = lower_step(exp, partitioner, step, program)
        with _HloDump(topology) as hlo_dump:
            compiled = _compile(lowered, topology, report, hlo_dump)
            report.compile_seconds = time.perf_counter() - start
            if compiled is None:
                return report
            hlo = hlo_dump.text(compiled)
    mem = compiled.memory_analysis()
    report.argument_bytes = float(mem.argument_size_in_bytes)
    report.output_bytes = float(mem.output_size_in_bytes)
    report.alias_bytes = float(mem.alias_size_in_bytes)
    report.temp_bytes = float(mem.temp_size_in_bytes)
    report.required_bytes = report.argument_bytes + report.output_bytes - report.alias_bytes + report.temp_bytes
    report.fits = report.required_bytes <= topology.hbm_bytes
    report.collectives = collective_stats(hlo)
    if hlo_out:
        _keep_hlo(hlo_out, hlo, list(mesh.devices.flat))
    if topology.chip is not None:
        net = Interconnect.from_devices(list(mesh.devices.flat), topology.wrap, topology.chip)
        report.dcn_collectives = dcn_collectives(dcn_transfers(hlo), net)
        report.estimate = dataclasses.asdict(estimate_step_time(hlo, topology.chip, net))
        report.calibration_note = topology.chip.calibration_note()
        if topology.num_slices > 1:
            report.estimate["leaves_out"] = tuple(report.estimate["leaves_out"]) + (MULTISLICE_OPEN_TORUS,)
    if not report.fits:
        report.largest_buffers = largest_buffers(hlo)
    return report


def _keep_hlo(folder: str, hlo: str, devices: list) -> None:
    out = epath.Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hlo.txt").write_text(hlo)
    coords = [[*getattr(d, "coords", (i, 0, 0)), getattr(d, "slice_index", 0) or 0] for i, d in enumerate(devices)]
    (out / "devices.json").write_text(json.dumps(coords))


def _compile(lowered, topology: Topology, report: CompileReport, hlo_dump: "_HloDump"):
    """The compiled program, or None when it does not fit and the compiler cannot finish it anyway."""
    try:
        return lowered.compile(compiler_options=hlo_dump.options())
    except Exception as e:  # noqa: BLE001 - XLA raises XlaRuntimeError/ValueError with the reason inside
        if not _OOM.search(str(e)):
            raise
        _out_of_memory(report, str(e))
        return _compile_past_oom(lowered, topology, report, hlo_dump)


def _compile_past_oom(lowered, topology: Topology, report: CompileReport, hlo_dump: "_HloDump"):
    """The TPU compiler stops at its first estimate when a program does not fit; asked not to, it finishes, so
    the report can give real per-chip numbers and the largest arrays. None when that fails too (one array
    larger than the chip, say: its message, which names the array's shape and HLO op, joins the report)."""
    if topology.platform != "tpu":
        return None
    try:
        return lowered.compile(compiler_options={"xla_tpu_no_crash_on_oom": True, **hlo_dump.options()})
    except Exception as e:  # noqa: BLE001 - XLA's runtime error carries the reason in its text
        detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()][:3]
        if detail:
            report.oom_message = "\n".join([report.oom_message or ""] + detail).strip()
        return None


def _out_of_memory(report: CompileReport, message: str) -> CompileReport:
    report.fits = False
    lines = [ln.rstrip() for ln in message.splitlines() if ln.strip()]
    report.oom_message = "\n".join(lines[:60])
    used = _USED.search(message)
    if used:
        report.required_bytes = _bytes(used.group(1), used.group(2))
        report.hbm_bytes = min(report.hbm_bytes, _bytes(used.group(3), used.group(4)))
    else:
        req = _REQUIRED.search(message)
        if req:
            report.temp_bytes = _bytes(req.group(1), req.group(2))
            report.required_bytes = report.temp_bytes
            report.hbm_bytes = min(report.hbm_bytes, _bytes(req.group(3), req.group(4)))
    return report
