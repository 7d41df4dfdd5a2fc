"""allam-jax against MaxText, compiled for the same TPU slice, and the step-time estimate's calibration.

    bash benchmarks/setup_maxtext.sh                       # once: MaxText in its own Python 3.12 venv
    python benchmarks/vs_maxtext.py [--cases 7b-v5p-128 13b-v5p-128 70b-v5p-512] [--calibrate NAME ...]
                                    [--cache .maxtext-cache] [--maxtext_only] [--out benchmarks/results/vs_maxtext.md]

Each case is one model, slice and global batch, compiled four times: by MaxText's toolchain (in its venv) and by
this project's, each with splash attention's separate dK/dV + dQ backward kernels (MaxText's default) and its fused
one (this project's). Nothing runs, no TPU is needed. All programs' optimized HLO is read by the same parser
(``allam_jax.aot.hlo_stats``: collectives by kind, result bytes per step per chip, loop trip counts applied) and
priced by the same estimator (``allam_jax.aot.step_time``); memory is the compiler's own ``memory_analysis`` per
chip. MaxText is driven by a short script written at run time that calls its ``train_compile`` with its defaults
plus the case's settings, and keeps the compiled HLO text.

Calibration: MaxText's own program for every published MaxText measurement the estimator can cost (``CALIBRATION``;
host-offload recipes are left out, ``EXCLUDED``) is compiled and priced; per TPU generation the matmul efficiency
is fitted on the rows marked "fit" and the error reported on the "held out" ones; the fit goes to
``calibration.json`` next to ``--out`` (what ``allam_jax/aot/calibration.py`` must hold).

Compiles are kept in ``--cache`` by their settings (this project's: by the code that compiles them), so a rerun
after changing the estimator re-prices without compiling. Not part of setup or CI: MaxText's venv is ~3 GB and
each compile takes a minute or two.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    topology: str  # both projects' slice name
    maxtext_model: str
    per_device_batch: int
    seq_len: int
    allam_gin: str  # this project's run config of the same model, with the bindings below
    allam_bindings: tuple[str, ...]
    maxtext_args: tuple[str, ...] = ("remat_policy=full",)
    published_mfu: Optional[float] = None  # MaxText's measured MFU for exactly this config, where published
    role: str = ""  # calibration: "fit" (the efficiency is fitted on it) or "held out" (only scored)
    source: str = ""  # where the measurement is published
    num_slices: int = 1  # slices joined over the data-centre network (MaxText's dcn_data_parallelism)


_LLAMA2 = ("ModelConfig.vocab_size = 32000", "ModelConfig.remat_policy = 'full'", "TrainerConfig.grad_accum_steps = 1")
CASES = {
    "7b-v5p-128": Case(
        "Llama-2 7B, v5p-128, 1024 x 4096 tokens, full remat, flash/splash attention, bf16", "v5p-128", "llama2-7b",
        16, 4096, "runs/allam_7b_stage1_en.gin", _LLAMA2 + ("StepConfig.logits_chunk_size = 512",)),
    "13b-v5p-128": Case(
        "Llama-2 13B, v5p-128, 512 x 4096 tokens, full remat, flash/splash attention, bf16", "v5p-128", "llama2-13b",
        8, 4096, "runs/continue_llama2_13b_ar.gin",
        _LLAMA2 + ("TrainerConfig.batch_size = 512", "StepConfig.logits_chunk_size = 512")),
    "70b-v5p-512": Case(
        "Llama-2 70B, v5p-512, 512 x 4096 tokens, full remat, flash/splash attention, bf16", "v5p-512", "llama2-70b",
        2, 4096, "runs/continue_llama2_70b_ar.gin",
        # at 2 rows per chip the float32 logits are 1 GB: chunking them saves nothing and holds the gathered head
        # and its gradient through the loop (+1.0 GB); MaxText does not chunk either
        _LLAMA2 + ("StepConfig.logits_chunk_size = 0",)),
}

# Every published MaxText measurement this estimator can cost (no host offload), with MaxText's own settings for
# it; compiled here only to calibrate the step-time estimate. The roles were set before any was compiled: per
# generation, the efficiency is fitted on the "fit" rows and the error is reported on the "held out" ones.
_V5P_README = "MaxText configs/tpu/v5p/README.md (1 slice)"
_V5E_README = "MaxText configs/tpu/v5e/README.md (1x v5e-256)"
_SCALE = ("ici_fsdp_parallelism=-1", "use_iota_embed=true", "quantization=")

def _scaled(scale: int, topology: str, per_device: int, remat: str, tensor: Optional[int], mfu: float,
            role: str) -> Case:
    """A row of MaxText's v5p/v5e README tables: its configs/tpu/<gen>/<scale>b.sh settings (the default model at
    ``global_parameter_scale``, 2048 tokens, FSDP, tensor parallelism where the script sets it)."""
    chips = int(topology.split("-")[1]) // (2 if topology.startswith("v5p") else 1)
    name = (f"MaxText {scale}B (global_parameter_scale={scale}), {topology}, {per_device * chips} x 2048 tokens, "
            + ("full remat" if remat == "full" else f"remat {remat}")
            + (f", fsdp x tensor {tensor}" if tensor else ", fsdp"))
    args = (f"remat_policy={remat}", f"global_parameter_scale={scale}")
    args += (f"ici_tensor_parallelism={tensor}",) if tensor else ()
    return Case(name, topology, "default", per_device, 2048, "", (), args + _SCALE, published_mfu=mfu, role=role,
                source=_V5P_README if topology.startswith("v5p") else _V5E_README)


CALIBRATION = {
    "32b-v5p-128": _scaled(32, "v5p-128", 6, "minimal", 4, 0.7147, "fit"),
    "64b-v5p-128": _scaled(64, "v5p-128", 3, "minimal", 4, 0.7031, "held out"),
    "128b-v5p-256": _scaled(128, "v5p-256", 1, "minimal", 8, 0.6868, "held out"),
    "128b-v5p-512": _scaled(128, "v5p-512", 1, "minimal", 8, 0.6883, "held out"),
    "256b-v5p-1024": _scaled(256, "v5p-1024", 1, "minimal", 8, 0.6709, "held out"),
    "512b-v5p-1024": _scaled(512, "v5p-1024", 2, "full", 8, 0.6399, "held out"),
    "1024b-v5p-2048": _scaled(1024, "v5p-2048", 2, "full", 16, 0.5535, "held out"),
    "1024b-v5p-4096": _scaled(1024, "v5p-4096", 2, "full", 16, 0.6480, "held out"),
    "70b-v5p-512": Case(  # configs/tpu/v5p/llama2_70b.sh
        "Llama-2 70B, v5p-512, 1024 x 4096 tokens, remat save_dot_except_mlpwi (MaxText's v5p config)", "v5p-512",
        "llama2-70b", 4, 4096, "", (), ("remat_policy=save_dot_except_mlpwi", "use_iota_embed=true"),
        published_mfu=0.654, role="fit", source="MaxText docs/reference/models/tiering.md (v5p Gold)"),
    "16b-v5e-256": _scaled(16, "v5e-256", 6, "full", None, 0.6110, "held out"),
    "32b-v5e-256": _scaled(32, "v5e-256", 4, "full", None, 0.6686, "fit"),
    "64b-v5e-256": _scaled(64, "v5e-256", 2, "full", None, 0.5990, "held out"),
    # benchmarks/maxtext_trillium_model_configs.py's llama2_70b_4096 (4 rows per chip, the fsdp_transpose axis, full
    # remat); its XLA flags (VMEM limit, continuation fusion for all-gather) are left out as for v5p
    "70b-v6e-256": Case(
        "Llama-2 70B, v6e-256, 1024 x 4096 tokens, full remat, fsdp_transpose (MaxText's Trillium recipe)", "v6e-256",
        "llama2-70b", 4, 4096, "", (),
        ("remat_policy=full", "ici_fsdp_parallelism=1", "ici_fsdp_transpose_parallelism=-1", "use_iota_embed=true",
         "sa_block_q=1024", "sa_block_q_dkv=2048", "sa_block_q_dq=2048"), published_mfu=0.438, role="fit",
        source="MaxText docs/reference/models/tiering.md (Trillium Gold)"),
}

def _two_slices(case: Case, mfu: float) -> Case:
    """The same config on two slices over the data-centre network, as MaxText's README rows "2x" measure it."""
    name = case.name.replace(f", {case.topology},", f", 2 x {case.topology} over DCN,")
    name = re.sub(r"(\d+) x (\d+) tokens", lambda m: f"{2 * int(m.group(1))} x {m.group(2)} tokens", name)
    return dataclasses.replace(case, name=name, published_mfu=mfu, role="held out", num_slices=2)


for _name, _mfu in (("32b-v5p-128", 0.6943), ("64b-v5p-128", 0.6726), ("128b-v5p-256", 0.6634),
                    ("128b-v5p-512", 0.5966), ("256b-v5p-1024", 0.6299), ("512b-v5p-1024", 0.6145),
                    ("1024b-v5p-2048", 0.5155), ("1024b-v5p-4096", 0.6083), ("16b-v5e-256", 0.5937),
                    ("32b-v5e-256", 0.6481), ("64b-v5e-256", 0.5666)):
    CALIBRATION[_name + "x2"] = _two_slices(CALIBRATION[_name], _mfu)


# Published measurements left out of both sets: their recipes move activations to host memory, which the estimate
# does not cost (it prices what runs on the chip).
EXCLUDED = (
    ("MaxText 128B, v5e-256 (56.06%)", "remat_policy=qkv_proj_offloaded: host offload"),
    ("Llama 3.1 8B, v6e-256, SL 8192 (45.46%)", "remat custom, decoder_layer_input/q/k/v/out_proj offloaded"),
    ("Llama 3.1 70B, v6e-256, SL 8192 (50.33%)", "remat custom, decoder_layer_input/q/k/v offloaded"),
    ("Llama 3.1 405B, v6e-256, SL 8192 (38.55%)", "remat custom, decoder_layer_input offloaded"),
    ("Mixtral 8x7B / 8x22B (v5p, v6e)", "mixture of experts: not a model this project builds"),
    ("MaxText 256B and larger, v5p-1024 and up", "slices of 1024+ chips: each compile needs more host memory and "
     "time than this 2-core, 24 GiB host has"),
)

_MAXTEXT_DRIVER = textwrap.dedent('''
    import json, os, sys
    out = sys.argv[1]
    from maxtext.trainers.pre_train import train_compile as tc
    from maxtext.utils import maxtext_utils
    configs = []
    initialize = tc.pyconfig.initialize
    tc.pyconfig.initialize = lambda *a, **k: configs.append(initialize(*a, **k)) or configs[-1]
    original = tc.jit_and_compile
    def keep(*args, **kwargs):
        compiled = original(*args, **kwargs)
        with open(os.path.join(out, "hlo.txt"), "w") as f:
            f.write(compiled.as_text())
        shardings = [x for x in jax.tree_util.tree_leaves(compiled.input_shardings) if hasattr(x, "mesh")]
        with open(os.path.join(out, "devices.json"), "w") as f:
            json.dump([[*d.coords, getattr(d, "slice_index", 0) or 0] for d in shardings[0].mesh.devices.flat], f)
        _, learnable, attention = maxtext_utils.calculate_tflops_training_per_device(configs[-1], log=False)
        with open(os.path.join(out, "flops.json"), "w") as f:  # MaxText's attention count is causal (halved)
            json.dump({"model_flops_per_device": (learnable + 2 * attention) * 1e12,
                       "model_flops_per_device_causal": (learnable + attention) * 1e12}, f)
        m = compiled.memory_analysis()
        with open(os.path.join(out, "memory.json"), "w") as f:
            json.dump({"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
                       "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}, f)
        return compiled
    tc.jit_and_compile = keep
    import jax, libtpu
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump({"jax": jax.__version__, "libtpu": getattr(libtpu, "__version__", "?")}, f)
    from absl import app
    app.run(tc.main, argv=["train_compile"] + sys.argv[2:])
''')


def maxtext_config(python: str) -> str:
    out = subprocess.run([python, "-c", "import maxtext, os; print(os.path.dirname(maxtext.__file__))"],
                         capture_output=True, text=True, check=True)
    return os.path.join(out.stdout.strip(), "configs", "base.yml")


def _key(case: Case, extra: tuple[str, ...]) -> str:
    import hashlib

    settings = [case.topology, case.maxtext_model, case.per_device_batch, case.seq_len, case.maxtext_args, extra]
    text = json.dumps(settings + ([case.num_slices] if case.num_slices > 1 else []))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_maxtext(case: Case, python: str, cache: Path, extra: tuple[str, ...] = ()) -> dict:
    """MaxText's compile of ``case`` (plus ``extra`` settings), kept under ``cache`` by its settings: a rerun that
    only re-prices (a changed estimator) reads the kept HLO instead of compiling again."""
    work = cache / _key(case, extra)
    if not (work / "done.json").exists():
        work.mkdir(parents=True, exist_ok=True)
        _compile_maxtext(case, python, work, extra)
    from allam_jax.aot.hlo_stats import collective_stats

    memory = json.loads((work / "memory.json").read_text())
    hlo = (work / "hlo.txt").read_text()
    devices = json.loads((work / "devices.json").read_text())
    flops = json.loads((work / "flops.json").read_text())
    return {"raw_estimate": functools.partial(_estimate, hlo, case.topology, devices),
            "seconds": json.loads((work / "done.json").read_text())["seconds"], "collectives": collective_stats(hlo),
            "estimate": _estimate(hlo, case.topology, devices),
            "model_flops_per_device": flops["model_flops_per_device"],
            "model_flops_per_device_causal": flops.get("model_flops_per_device_causal"),
            "temp": memory["temp"], "argument": memory["argument"],
            "required": memory["argument"] + memory["output"] - memory["alias"] + memory["temp"],
            "versions": json.loads((work / "versions.json").read_text())}


def _compile_maxtext(case: Case, python: str, work: Path, extra: tuple[str, ...]) -> None:
    driver = work / "driver.py"
    driver.write_text(_MAXTEXT_DRIVER)
    args = [maxtext_config(python), f"compile_topology={case.topology}", f"compile_topology_num_slices={case.num_slices}",
            f"model_name={case.maxtext_model}", f"per_device_batch_size={case.per_device_batch}",
            f"max_target_length={case.seq_len}", *case.maxtext_args, *extra, "attention=flash",
            "enable_checkpointing=false", "run_name=vs_allam", f"base_output_directory={work / 'out'}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_WORKER_HOSTNAMES="localhost", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
               TPU_ACCELERATOR_TYPE=case.topology)
    env.pop("LIBTPU_INIT_ARGS", None)  # MaxText's v5p scripts' flags are refused by current libtpu: its defaults
    start = time.perf_counter()
    proc = subprocess.run([python, str(driver), str(work), *args], capture_output=True, text=True, env=env)
    if proc.returncode or not (work / "hlo.txt").exists():
        raise RuntimeError(f"MaxText's compile failed for {case.name}:\n{proc.stderr[-3000:]}")
    (work / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - start, "args": args}))


def _estimate(hlo: str, topology: str, devices: list, efficiency: Optional[float] = None) -> dict:
    """The same estimator ``allam compile`` runs, on another program's HLO and device order."""
    from allam_jax.aot.step_time import Interconnect, estimate_step_time
    from allam_jax.aot.topology import _parse, torus_wrap

    _, chip, libtpu_name = _parse(topology)
    shape = [int(x) for x in libtpu_name.split(":")[1].split("x")]
    net = Interconnect.from_coords([d[:3] for d in devices], torus_wrap(shape, chip.dims), chip,
                                   [d[3] for d in devices])
    return dataclasses.asdict(estimate_step_time(hlo, chip, net, efficiency))


def _model_flops_per_device(case: Case, causal: bool = False) -> tuple[float, float]:
    """Model FLOPs per chip per step by this project's count (PaLM's: attention's full T x T; ``causal``: halved, as
    MaxText counts), for both programs."""
    from allam_jax import gin_setup
    from allam_jax.aot.topology import _parse

    gin_setup.parse([case.allam_gin], list(case.allam_bindings))
    cfg = gin_setup.model_config()
    _, chip, _ = _parse(case.topology)
    return cfg.training_flops_per_token(case.seq_len, causal) * case.per_device_batch * case.seq_len, chip.peak_flops


# modules that read or price a compiled program but do not change it: editing them re-prices the kept HLO
_PRICING = ("aot/step_time.py", "aot/hlo_stats.py", "aot/calibration.py", "aot/table.py", "aot/search.py")


def _source_key() -> str:
    """What this project compiles: the package and its gin files as they are now (pricing modules aside)."""
    files = sorted(p for p in (ROOT / "allam_jax").rglob("*.py")
                   if p.relative_to(ROOT / "allam_jax").as_posix() not in _PRICING)
    files += sorted((ROOT / "gin_configs").rglob("*.gin"))
    return "".join(p.relative_to(ROOT).as_posix() + p.read_text() for p in files)


def run_allam(case: Case, backward: str, cache: Path) -> dict:
    """``allam compile`` of ``case`` with splash's ``backward`` kernel(s), kept under ``cache`` by its settings and
    this project's code."""
    import hashlib

    bindings = [*case.allam_bindings, f"ModelConfig.attention_backward = '{backward}'"]
    key = hashlib.sha256(json.dumps([case.allam_gin, bindings, case.topology, _source_key()]).encode()).hexdigest()
    work = cache / f"allam-{key[:16]}"
    if not (work / "report.json").exists():
        allam = Path(sys.executable).with_name("allam")
        cmd = [str(allam), "compile", "--gin_file", case.allam_gin, "--topology", case.topology, "--json",
               "--hlo_out", str(work)]
        for binding in bindings:
            cmd += ["--gin_bindings", binding]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode not in (0, 3):
            raise RuntimeError(f"allam compile failed for {case.name}:\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout)
        report["seconds"] = time.perf_counter() - start
        (work / "report.json").write_text(json.dumps(report))
    report = json.loads((work / "report.json").read_text())
    hlo = (work / "hlo.txt").read_text()
    devices = json.loads((work / "devices.json").read_text())
    import jax
    from importlib.metadata import version

    return {"seconds": report["seconds"], "collectives": report["collectives"],
            "temp": report["temp_bytes"], "argument": report["argument_bytes"], "required": report["required_bytes"],
            "versions": {"jax": jax.__version__, "libtpu": version("libtpu")}, "params": report["params"],
            "rows": report["rows"], "estimate": _estimate(hlo, case.topology, devices)}


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def _collectives(stats: dict) -> str:
    parts = [f"{kind} x{int(v['count'])} ({_gb(v['bytes'])})" for kind, v in stats.items() if v["bytes"] >= 1e6]
    return ", ".join(parts) or "none"


def _mfu(case: Case, estimate: dict, causal: bool = False) -> float:
    from allam_jax.aot.step_time import model_flops_utilization

    flops, peak = _model_flops_per_device(case, causal)
    return model_flops_utilization(flops, estimate["step_seconds"], peak)


def _step(case: Case, estimate: dict) -> str:
    return (f"{estimate['step_seconds']:.3f} s ({_mfu(case, estimate):.1%} PaLM / "
            f"{_mfu(case, estimate, causal=True):.1%} causal)")


def _attention(e: dict) -> str:
    return f"{e['attention_flops'] / 1e12:.1f} TFLOP, {e['attention_seconds']:.3f} s" + (
        f"; {e['unpriced_kernels']} UNPRICED kernel calls" if e["unpriced_kernels"] else "")


def _parts(e: dict) -> str:
    return (f"{e['compute_seconds']:.3f} + {e['attention_seconds']:.3f} + {e['exposed_communication_seconds']:.3f} s "
            f"(all communication {e['communication_seconds']:.3f} s)")


def _fitted_efficiency(case: Case, theirs: dict) -> float:
    """The matmul efficiency at which the estimate of MaxText's own program meets its published MFU (bisection)."""
    chip = _chip(case)
    lo, hi = 0.05, 1.5
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _published_mfu(theirs, chip, mid) < case.published_mfu else (lo, mid)
    return lo


def _chip(case: Case):
    from allam_jax.aot.topology import _parse

    return _parse(case.topology)[1]


def _published_mfu(theirs: dict, chip, efficiency: Optional[float]) -> float:
    """MFU by MaxText's own FLOP count when its published numbers were taken (attention's full T x T)."""
    return theirs["model_flops_per_device"] / (theirs["raw_estimate"](efficiency)["step_seconds"] * chip.peak_flops)


def fit(points: list[tuple[Case, dict]]) -> dict[str, dict]:
    """Per TPU generation: the efficiency (geometric mean of those fitted on the "fit" rows), each row's estimate at
    it and its error in MFU points; the held-out rows' errors are the calibration error."""
    by_chip: dict[str, dict] = {}
    for case, theirs in points:
        chip = _chip(case)
        g = by_chip.setdefault(chip.name, {"rows": [], "fitted": []})
        matched = _fitted_efficiency(case, theirs)
        g["rows"].append({"case": case, "theirs": theirs, "matched": matched, "raw": _published_mfu(theirs, chip, 1.0)})
        if case.role == "fit":
            g["fitted"].append(matched)
    for name, g in by_chip.items():
        g["efficiency"] = math.exp(sum(math.log(f) for f in g["fitted"]) / len(g["fitted"]))
        for row in g["rows"]:
            chip = _chip(row["case"])
            row["estimated"] = _published_mfu(row["theirs"], chip, g["efficiency"])
            row["error"] = (row["estimated"] - row["case"].published_mfu) * 100
        held = [r["error"] for r in g["rows"] if r["case"].role == "held out"]
        g["held_out_error"] = max((abs(e) for e in held), default=None)
        g["held_out"] = held
        g["best_published_mfu"] = max(r["case"].published_mfu for r in g["rows"])
    return by_chip


def calibration(points: list[tuple[Case, dict]]) -> tuple[str, dict]:
    """The calibration section (Markdown) and its numbers (what ``aot.topology.CALIBRATIONS`` should hold)."""
    fits = fit(points)
    lines = ["### Calibration against MaxText's published measurements", "",
             "Each row: MaxText's own program for the published config, compiled here and priced by this estimator. "
             "Per TPU generation the efficiency is the geometric mean of those that match the *fit* rows; the *held "
             "out* rows are only scored, and their errors are the estimate's calibration error. MFU here is MaxText's "
             "count when these measurements were published (attention's full T x T).", "",
             "| config | role | measured MFU | estimated at 100% of peak | efficiency that matches | estimated at the "
             "generation's fitted efficiency | error | published in |", "|---|---|---|---|---|---|---|---|"]
    summary, numbers = [], {}
    for name, g in fits.items():
        for r in g["rows"]:
            c = r["case"]
            lines.append(f"| {c.name} | {c.role} | {c.published_mfu:.1%} | {r['raw']:.1%} | {r['matched']:.3f} | "
                         f"{r['estimated']:.1%} at {g['efficiency']:.3f} | {r['error']:+.1f} points | {c.source} |")
        rms = math.sqrt(sum(e * e for e in g["held_out"]) / len(g["held_out"])) if g["held_out"] else 0.0
        held = (", ".join(f"{e:+.1f}" for e in g["held_out"]) + f" points (largest {g['held_out_error']:.1f}, "
                f"root mean square {rms:.1f})" if g["held_out"] else "none: no second measurement to hold out")
        summary.append(f"- {name}: efficiency {g['efficiency']:.3f} fitted on {len(g['fitted'])} measurement(s); "
                       f"held-out error: {held}; best published MFU {g['best_published_mfu']:.1%}.")
        numbers[name] = {"efficiency": round(g["efficiency"], 3), "fit_on": len(g["fitted"]),
                         "held_out": len(g["held_out"]),
                         "held_out_error": None if g["held_out_error"] is None else round(g["held_out_error"], 1),
                         "best_published_mfu": g["best_published_mfu"]}
    lines += ["", *summary, "", "Left out of both sets (the estimate does not cost what they rely on):", ""]
    lines += [f"- {what}: {why}" for what, why in EXCLUDED]
    return "\n".join(lines), numbers


def table(case: Case, mine: dict[str, dict], theirs: dict[str, dict]) -> str:
    """One case, four programs: MaxText and this project, each with splash's separate and fused backward."""
    cols = [theirs["separate"], theirs["fused"], mine["separate"], mine["fused"]]

    def total(r: dict) -> str:
        return f"{sum(v['bytes'] for v in r['collectives'].values()) / 1e9:.3f} GB"

    rows = [
        ("toolchain", [f"jax {r['versions']['jax']}, libtpu {r['versions']['libtpu']}" for r in cols]),
        ("temporaries per chip", [_gb(r["temp"]) for r in cols]),
        ("arguments per chip", [_gb(r["argument"]) for r in cols]),
        ("memory required per chip", [_gb(r["required"]) for r in cols]),
        ("collectives per step (over 1 MB)", [_collectives(r["collectives"]) for r in cols]),
        ("collective bytes per step per chip", [total(r) for r in cols]),
        ("estimated step time (MFU)", [_step(case, r["estimate"]) for r in cols]),
        ("  compute + attention + exposed communication", [_parts(r["estimate"]) for r in cols]),
        ("  attention kernels", [_attention(r["estimate"]) for r in cols]),
        ("compile time on this host", [f"{r['seconds']:.0f} s" for r in cols]),
    ]
    lines = [f"### {case.name}", "", "| | MaxText, separate dK/dV + dQ (its default) | MaxText, fused backward | "
             "allam-jax, separate | allam-jax, fused (its default) |", "|---|---|---|---|---|"]
    lines += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows]
    return "\n".join(lines)


BACKWARD = {"separate": ("sa_use_fused_bwd_kernel=false",), "fused": ("sa_use_fused_bwd_kernel=true",)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maxtext_python", default=str(ROOT / ".maxtext-venv" / "bin" / "python"),
                        help="the Python of a venv with maxtext[tpu] (benchmarks/setup_maxtext.sh makes one)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES), help="which comparisons")
    parser.add_argument("--calibrate", nargs="*", default=list(CALIBRATION), choices=list(CALIBRATION),
                        help="MaxText configs with published measurements to check the step-time estimate against "
                             "(MaxText's compile only); none: --calibrate with no names")
    parser.add_argument("--cache", default=str(ROOT / ".maxtext-cache"),
                        help="where MaxText's compiled programs are kept, by their settings (a rerun re-prices them "
                             "without compiling); delete it after changing MaxText's version")
    parser.add_argument("--maxtext_only", action="store_true",
                        help="only compile MaxText's programs into --cache (both backward kernels for each case)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vs_maxtext.md"),
                        help="the Markdown file the tables go to (also printed)")
    args = parser.parse_args(argv)
    if not Path(args.maxtext_python).exists():
        print(f"vs_maxtext: no MaxText Python at {args.maxtext_python}; run bash benchmarks/setup_maxtext.sh",
              file=sys.stderr)
        return 2
    cache = Path(args.cache)
    if args.maxtext_only:
        jobs = [(CASES[n], v) for n in args.cases for v in BACKWARD.values()]
        jobs += [(CALIBRATION[n], ()) for n in args.calibrate]
        for case, extra in jobs:
            start = time.perf_counter()
            run_maxtext(case, args.maxtext_python, cache, extra)
            print(f"compiled {case.name} {' '.join(extra)} ({time.perf_counter() - start:.0f} s)", flush=True)
        return 0
    sections = []
    for name in args.cases:
        case = CASES[name]
        theirs = {v: run_maxtext(case, args.maxtext_python, cache, extra) for v, extra in BACKWARD.items()}
        mine = {v: run_allam(case, v, cache) for v in BACKWARD}
        sections.append(table(case, mine, theirs))
        print(sections[-1] + "\n", flush=True)
    points = [(CALIBRATION[n], run_maxtext(CALIBRATION[n], args.maxtext_python, cache)) for n in args.calibrate]
    if points:
        text, numbers = calibration(points)
        sections.append(text)
        print(text + "\n", flush=True)
        Path(args.out).with_name("calibration.json").write_text(json.dumps(numbers, indent=1) + "\n")
    header = ("# allam-jax vs MaxText: one train step compiled for the same slice\n\n"
              "Written by `benchmarks/vs_maxtext.py` on a CPU host (compile only). Bytes are result sizes per chip "
              "per step, loop trip counts applied, read from each optimized HLO by the same parser; GB = 1e9 bytes. "
              "Step times are ESTIMATES (no TPU ran either program): `allam_jax.aot.step_time` prices each program's "
              "HLO at its generation's efficiency fitted below, with the held-out error printed there. MFU in both "
              "conventions, by this project's FLOP count for both programs: PaLM's (attention's full T x T) and "
              "causal (attention halved, MaxText's count since its PR #1988).\n")
    Path(args.out).write_text(header + "\n" + "\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
