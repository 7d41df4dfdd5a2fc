"""``allam info`` (parameters and FLOPs of a config) and ``allam compile`` (the TPU dry run)."""

from __future__ import annotations

import argparse
import json
import re

from allam_jax.cli.common import EXIT_OK, add_gin_flags

EXIT_DOES_NOT_FIT = 3


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter count and FLOPs per token of a model config (allocates nothing)",
                       description="Print the parameter count (from jax.eval_shape) and FLOPs per token.")
    add_gin_flags(p)
    p.add_argument("--seq_len", type=int, default=None, help="sequence length for attention FLOPs "
                   "(default: ModelConfig.max_seq_len)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_info)

    from allam_jax.aot.topology import FAMILIES_HELP

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
    add_gin_flags(p)
    p.add_argument("--topology", required=True, help=f"the slice to compile for: {FAMILIES_HELP}")
    p.add_argument("--step", default="train", choices=("train", "eval", "decode"),
                   help="train: the optimizer step (default); eval: the log-likelihood scoring forward pass; "
                   "decode: one token per row against a KV cache of seq_len (rows = TrainerConfig.batch_size)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(handler=run_compile)


def run_info(args: argparse.Namespace) -> int:
    from allam_jax import gin_setup
    from allam_jax.train.loop import param_count_and_flops

    gin_setup.parse(args.gin_file, args.gin_bindings)
    cfg = gin_setup.model_config()
    info = param_count_and_flops(cfg, args.seq_len)
    info.update(layers=cfg.num_layers, d_model=cfg.d_model, heads=cfg.num_heads, kv_heads=cfg.num_kv_heads,
                mlp_dim=cfg.mlp_dim, vocab_size=cfg.vocab_size, seq_len=args.seq_len or cfg.max_seq_len)
    if args.json:
        print(json.dumps(info))
        return 0
    rows = [
        ("parameters", f"{info['params']:,} ({info['params'] / 1e9:.3f} B)"),
        ("forward FLOPs/token", f"{info['forward_flops_per_token']:.4g}"),
        ("train FLOPs/token", f"{info['train_flops_per_token']:.4g}"),
        ("shape", f"layers={cfg.num_layers} d={cfg.d_model} heads={cfg.num_heads} kv_heads={cfg.num_kv_heads} "
                  f"mlp={cfg.mlp_dim} vocab={cfg.vocab_size} seq_len={info['seq_len']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


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


def run_compile(args: argparse.Namespace) -> int:
    from allam_jax import gin_setup
    from allam_jax.aot.dry_run import compile_step
    from allam_jax.aot.table import format_report
    from allam_jax.aot.topology import resolve_topology

    _prepare_cpu_devices(args.topology)
    topology = resolve_topology(args.topology)  # bad names fail before the (slow) gin and model build
    gin_setup.parse(args.gin_file, args.gin_bindings)
    report = compile_step(gin_setup.build_experiment(), topology, args.step)
    if args.json:
        print(json.dumps({"config": args.gin_file, **report.as_dict()}))
    else:
        print(format_report(report, args.gin_file))
    return EXIT_OK if report.fits else EXIT_DOES_NOT_FIT
