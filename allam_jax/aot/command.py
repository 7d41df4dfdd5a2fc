"""``allam compile``: the TPU dry run. Compiles a run config's step for a slice and says whether it fits."""

from __future__ import annotations

import argparse
import json
import re
from typing import Optional

from allam_jax.aot.topology import FAMILIES_HELP, GIB

EXIT_FITS, EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT = 0, 2, 3


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compile", help="dry-run a config on a TPU slice (or N CPU devices): per-chip memory, fit, FLOPs, collectives",
        description="Build exactly what `allam train` would run for the gin config (model, mesh, remat, attention, "
        "global batch and sequence length, gradient accumulation, optimizer) from abstract arrays -- nothing is "
        "allocated -- then lower and compile the step with the real XLA compiler for --topology, and print per-chip "
        "memory, whether it fits, model FLOPs, collectives and the step time the chip's peak allows. TPU topologies "
        "need libtpu (the 'tpu' extra), not a TPU. Exit 0: fits; 3: does not fit; 2: bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: allam compile --gin_file=runs/continue_llama2_13b_ar.gin --topology=v5p-128",
    )
    p.add_argument("--gin_file", action="append", default=[], required=True, metavar="FILE",
                   help="gin config file (repeatable; relative paths are also looked up under gin_configs/)")
    p.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING",
                   help="one gin binding such as 'StepConfig.grad_accum_steps = 4'; repeatable")
    p.add_argument("--topology", required=True, help=f"the slice to compile for: {FAMILIES_HELP}")
    p.add_argument("--step", default="train", choices=("train", "eval", "decode"),
                   help="train: the optimizer step (default); eval: the log-likelihood scoring forward pass; "
                   "decode: one token per row against a KV cache of seq_len (rows = TrainerConfig.batch_size)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _prepare_cpu_devices(topology: str) -> None:
    """cpu:N needs N host devices, which JAX creates only when its CPU backend starts."""
    m = re.fullmatch(r"cpu:(\d+)", topology)
    if not m:
        return
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", max(int(m.group(1)), 1))
    except RuntimeError:  # the backend already started (e.g. a test process): resolve_topology checks the count
        pass


def run(args) -> int:
    from allam_jax import gin_setup
    from allam_jax.aot.dry_run import compile_step
    from allam_jax.aot.topology import resolve_topology

    _prepare_cpu_devices(args.topology)
    topology = resolve_topology(args.topology)  # bad names fail before the (slow) gin and model build
    gin_setup.parse(args.gin_file, args.gin_bindings)
    exp = gin_setup.build_experiment()
    report = compile_step(exp, topology, args.step)
    if args.json:
        print(json.dumps({"config": args.gin_file, **report.as_dict()}))
    else:
        print(format_report(report, args.gin_file))
    return EXIT_FITS if report.fits else EXIT_DOES_NOT_FIT


_ARGUMENTS = {"train": "parameters, optimizer state, batch", "eval": "parameters, batch",
              "decode": "parameters in the compute dtype, KV cache, tokens"}


def _gib(x: Optional[float]) -> str:
    return "?" if x is None else f"{x / GIB:.2f} GiB"


def _seconds(x: Optional[float]) -> str:
    if x is None:
        return "?"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def format_report(r, gin_files=()) -> str:
    chip = (f"{_gib(r.hbm_bytes)} per device" +
            (f", {r.peak_flops_per_device / 1e12:.0f} TFLOP/s bf16 peak" if r.peak_flops_per_device else ""))
    topo = r.topology + (f" (libtpu {r.libtpu_topology})" if r.libtpu_topology and r.libtpu_topology != r.topology
                         else "")
    step = {"train": "train step", "eval": "eval (scoring) step", "decode": "decode step (1 token per row)"}[r.step]
    if r.step == "decode":
        shape = f"{r.rows} rows against a KV cache of {r.seq_len} tokens"
    else:
        shape = (f"{r.rows} rows x {r.seq_len} tokens" + (f" in {r.grad_accum_steps} micro-batches"
                                                           if r.grad_accum_steps > 1 else ""))
    rows = [
        ("config", " ".join(gin_files) or "-"),
        ("topology", f"{topo}: {r.num_devices} devices, {chip}"),
        ("mesh", " ".join(f"{k}={v}" for k, v in r.mesh_shape.items())),
        ("step", f"{step}: {shape}; remat {r.remat_policy}, attention {r.attention_impl}, {r.compute_dtype}"),
        ("parameters", f"{r.params:,} ({r.params / 1e9:.2f} B)"),
    ]
    if r.argument_bytes is not None:
        rows += [
            ("arguments", f"{_gib(r.argument_bytes)} per device ({_ARGUMENTS[r.step]})"),
            ("temporaries", f"{_gib(r.temp_bytes)} per device"),
            ("outputs", f"{_gib(r.output_bytes)} per device ({_gib(r.alias_bytes)} reuse donated arguments)"),
        ]
    elif r.temp_bytes is not None:
        rows.append(("temporaries", f"{_gib(r.temp_bytes)} per device (the compiler's estimate)"))
    if r.fits:
        verdict = f"{_gib(r.required_bytes)} of {_gib(r.hbm_bytes)}: fits ({_gib(r.hbm_bytes - r.required_bytes)} free)"
    elif r.required_bytes is not None:
        verdict = (f"{_gib(r.required_bytes)} of {_gib(r.hbm_bytes)}: DOES NOT FIT "
                   f"(over by {_gib(r.required_bytes - r.hbm_bytes)})")
    else:
        verdict = f"more than {_gib(r.hbm_bytes)}: DOES NOT FIT"
    rows.append(("memory", verdict))
    rows.append(("model FLOPs", f"{r.model_flops:.3e} per step, {r.model_flops_per_device:.3e} per device"))
    if r.peak_flops_per_device:
        t100, t50 = r.step_seconds(1.0), r.step_seconds(0.5)
        tokens = r.rows * (1 if r.step == "decode" else r.seq_len)
        note = "; decoding is bound by memory bandwidth, so this is a floor" if r.step == "decode" else ""
        rows.append(("step time", f"{_seconds(t100)} at 100% MFU, {_seconds(t50)} at 50% MFU "
                                  f"({tokens / t50:,.0f} tokens/s at 50%{note})"))
    if r.collectives:
        rows.append(("collectives", "; ".join(f"{k} x{int(v['count'])} {_gib(v['bytes'])}"
                                              for k, v in r.collectives.items()) + " per step per device"))
    elif r.fits:
        rows.append(("collectives", "none"))
    rows.append(("compile time", f"{r.compile_seconds:.1f} s on this host"))
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    if not r.fits:
        text += ("\n\nWhat to change: StepConfig.grad_accum_steps (smaller micro-batches), ModelConfig.remat_policy="
                 "'full', a larger slice, or more tensor parallelism (PartitioningConfig.mesh_shape).")
        if r.largest_buffers:
            text += "\nLargest arrays per device (HLO name, shape, what made them):\n" + "\n".join(
                f"  {_gib(b['bytes']):>11}  {b['name']}  {b['shape']}  {b['source'] or b['op']}"
                for b in r.largest_buffers)
        if r.oom_message:
            text += "\nThe compiler says:\n" + "\n".join("  " + ln for ln in r.oom_message.splitlines())
    return text
