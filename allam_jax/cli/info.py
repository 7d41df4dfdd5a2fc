"""``allam info``: parameters and FLOPs per token of a model config (allocates nothing)."""

from __future__ import annotations

import argparse
import json

from allam_jax import gin_setup
from allam_jax.cli.common import add_gin_flags, positive_int


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter count and FLOPs per token of a model config (allocates nothing)",
                       description="Print the parameter count (from jax.eval_shape) and FLOPs per token.")
    add_gin_flags(p)
    p.add_argument("--seq_len", type=positive_int, default=None, help="sequence length for attention FLOPs "
                   "(default: ModelConfig.max_seq_len)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> int:
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
