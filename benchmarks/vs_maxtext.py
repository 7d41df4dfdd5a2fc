"""allam-jax against MaxText, compiled for the same TPU slice: per-chip memory and collectives of one train step.

    bash benchmarks/setup_maxtext.sh                       # once: MaxText in its own Python 3.12 venv
    python benchmarks/vs_maxtext.py [--maxtext_python .maxtext-venv/bin/python] [--cases 7b-v5p-128 70b-v5p-512]
                                    [--out benchmarks/results/vs_maxtext.md]

Each case is one model, slice and global batch, compiled by each project's own toolchain (this project's pinned
jax/libtpu; MaxText's, in its venv) from abstract arrays: nothing runs, no TPU is needed. Both programs' optimized
HLO is read by the same parser (``allam_jax.aot.hlo_stats``: collectives by kind, result bytes per step per chip,
loop trip counts applied), and memory is the compiler's own ``memory_analysis`` per chip. MaxText is driven by a
short script written at run time that calls its ``train_compile`` with its defaults plus the case's settings
(model, per-device batch, sequence, remat, flash attention), and keeps the compiled HLO text.

Not part of setup or CI: MaxText's venv is ~3 GB and its compiles take minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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


CASES = {
    "7b-v5p-128": Case(
        "Llama-2 7B, v5p-128, 1024 x 4096 tokens, full remat, flash/splash attention, bf16", "v5p-128", "llama2-7b",
        16, 4096, "runs/allam_7b_stage1_en.gin",
        ("ModelConfig.vocab_size = 32000", "ModelConfig.remat_policy = 'full'")),
    "70b-v5p-512": Case(
        "Llama-2 70B, v5p-512, 512 x 4096 tokens, full remat, flash/splash attention, bf16", "v5p-512", "llama2-70b",
        2, 4096, "runs/continue_llama2_70b_ar.gin",
        ("ModelConfig.vocab_size = 32000", "ModelConfig.remat_policy = 'full'",
         # at 2 rows per chip the float32 logits are 1 GB: chunking them saves nothing and holds the gathered head
         # and its gradient through the loop (+1.0 GB); MaxText does not chunk either
         "StepConfig.logits_chunk_size = 0")),
}

_MAXTEXT_DRIVER = textwrap.dedent('''
    import json, os, sys
    out = sys.argv[1]
    from maxtext.trainers.pre_train import train_compile as tc
    original = tc.jit_and_compile
    def keep(*args, **kwargs):
        compiled = original(*args, **kwargs)
        with open(os.path.join(out, "hlo.txt"), "w") as f:
            f.write(compiled.as_text())
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


def run_maxtext(case: Case, python: str, work: Path) -> dict:
    driver = work / "driver.py"
    driver.write_text(_MAXTEXT_DRIVER)
    args = [maxtext_config(python), f"compile_topology={case.topology}", "compile_topology_num_slices=1",
            f"model_name={case.maxtext_model}", f"per_device_batch_size={case.per_device_batch}",
            f"max_target_length={case.seq_len}", "remat_policy=full", "attention=flash", "enable_checkpointing=false",
            "run_name=vs_allam", f"base_output_directory={work / 'out'}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_WORKER_HOSTNAMES="localhost", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
               TPU_ACCELERATOR_TYPE=case.topology)
    env.pop("LIBTPU_INIT_ARGS", None)  # MaxText's v5p scripts' flags are refused by current libtpu: its defaults
    start = time.perf_counter()
    proc = subprocess.run([python, str(driver), str(work), *args], capture_output=True, text=True, env=env)
    if proc.returncode or not (work / "hlo.txt").exists():
        raise RuntimeError(f"MaxText's compile failed for {case.name}:\n{proc.stderr[-3000:]}")
    from allam_jax.aot.hlo_stats import collective_stats

    memory = json.loads((work / "memory.json").read_text())
    return {"seconds": time.perf_counter() - start, "collectives": collective_stats((work / "hlo.txt").read_text()),
            "temp": memory["temp"], "argument": memory["argument"],
            "required": memory["argument"] + memory["output"] - memory["alias"] + memory["temp"],
            "versions": json.loads((work / "versions.json").read_text())}


def run_allam(case: Case) -> dict:
    allam = Path(sys.executable).with_name("allam")
    cmd = [str(allam), "compile", "--gin_file", case.allam_gin, "--topology", case.topology, "--json"]
    for binding in case.allam_bindings:
        cmd += ["--gin_bindings", binding]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"allam compile failed for {case.name}:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    import jax
    from importlib.metadata import version

    return {"seconds": time.perf_counter() - start, "collectives": report["collectives"],
            "temp": report["temp_bytes"], "argument": report["argument_bytes"], "required": report["required_bytes"],
            "versions": {"jax": jax.__version__, "libtpu": version("libtpu")}, "params": report["params"],
            "rows": report["rows"]}


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def _collectives(stats: dict) -> str:
    parts = [f"{kind} x{int(v['count'])} ({_gb(v['bytes'])})" for kind, v in stats.items() if v["bytes"] >= 1e6]
    return ", ".join(parts) or "none"


def table(case: Case, mine: dict, theirs: dict) -> str:
    total = {name: sum(v["bytes"] for v in r["collectives"].values()) for name, r in (("a", mine), ("m", theirs))}
    rows = [
        ("toolchain", f"jax {theirs['versions']['jax']}, libtpu {theirs['versions']['libtpu']}",
         f"jax {mine['versions']['jax']}, libtpu {mine['versions']['libtpu']}"),
        ("temporaries per chip", _gb(theirs["temp"]), _gb(mine["temp"])),
        ("arguments per chip", _gb(theirs["argument"]), _gb(mine["argument"])),
        ("memory required per chip", _gb(theirs["required"]), _gb(mine["required"])),
        ("collectives per step (over 1 MB)", _collectives(theirs["collectives"]), _collectives(mine["collectives"])),
        ("collective bytes per step per chip", f"{total['m'] / 1e9:.3f} GB", f"{total['a'] / 1e9:.3f} GB"),
        ("compile time on this host", f"{theirs['seconds']:.0f} s", f"{mine['seconds']:.0f} s"),
    ]
    lines = [f"### {case.name}", "", "| | MaxText | allam-jax |", "|---|---|---|"]
    lines += [f"| {k} | {m} | {a} |" for k, m, a in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maxtext_python", default=str(ROOT / ".maxtext-venv" / "bin" / "python"),
                        help="the Python of a venv with maxtext[tpu] (benchmarks/setup_maxtext.sh makes one)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="which comparisons")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vs_maxtext.md"),
                        help="the Markdown file the tables go to (also printed)")
    args = parser.parse_args(argv)
    if not Path(args.maxtext_python).exists():
        print(f"vs_maxtext: no MaxText Python at {args.maxtext_python}; run bash benchmarks/setup_maxtext.sh",
              file=sys.stderr)
        return 2
    sections = []
    for name in args.cases:
        case = CASES[name]
        with tempfile.TemporaryDirectory() as work:
            theirs = run_maxtext(case, args.maxtext_python, Path(work))
        mine = run_allam(case)
        sections.append(table(case, mine, theirs))
        print(sections[-1] + "\n", flush=True)
    header = ("# allam-jax vs MaxText: one train step compiled for the same slice\n\n"
              "Written by `benchmarks/vs_maxtext.py` on a CPU host (compile only). Bytes are result sizes per chip "
              "per step, loop trip counts applied, read from each optimized HLO by the same parser; GB = 1e9 bytes.\n")
    Path(args.out).write_text(header + "\n" + "\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
