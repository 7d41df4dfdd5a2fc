"""The ``allam`` command: one door in, with a subcommand per job.

Exit codes: 0 done, 1 runtime failure (unreadable checkpoint), 2 bad input (gin binding, value,
missing file), 3 non-finite loss, 130 interrupted, 143 stopped by SIGTERM after saving.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_BAD_INPUT, EXIT_RUNTIME, EXIT_NONFINITE = 2, 1, 3


def _add_gin_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--gin_file", action="append", default=[], required=required, metavar="FILE",
        help="gin config file; repeatable, later files override earlier ones. Relative paths are also looked "
        "up under the repository's gin_configs/ (e.g. runs/tiny_cpu.gin)",
    )
    p.add_argument(
        "--gin_bindings", action="append", default=[], metavar="BINDING",
        help="one gin binding such as 'TrainerConfig.num_steps = 50'; repeatable, applied after the files",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allam", description="allam-jax: Arabic-English LLM training the ALLaM way (JAX/Flax)."
    )
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="Python logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train or continue training a model from gin configs",
                       description="Train a decoder. Resumes automatically from WORKDIR/checkpoints; writes "
                       "WORKDIR/metrics.jsonl, WORKDIR/tensorboard/ and WORKDIR/config.gin.")
    _add_gin_flags(p)
    p.add_argument("--workdir", required=True, help="output directory: checkpoints, metrics, the operative config")

    p = sub.add_parser("info", help="parameter count and FLOPs per token of a model config (allocates nothing)",
                       description="Print the parameter count (from jax.eval_shape) and FLOPs per token.")
    _add_gin_flags(p)
    p.add_argument("--seq_len", type=int, default=None, help="sequence length for attention FLOPs "
                   "(default: ModelConfig.max_seq_len)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("data", help="data utilities", description="Data utilities.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    prep = data_sub.add_parser("prepare", help="extract the bundled real corpora into a directory",
                               description="Write en.txt, ar.txt, parallel.jsonl and sources.json from text "
                               "installed on this machine (no download).")
    prep.add_argument("--out", default="data_cache/bundled", help="output directory (default data_cache/bundled)")
    return parser


def _cmd_train(args) -> int:
    from pathlib import Path

    import gin

    from allam_jax import gin_setup
    from allam_jax.train.loop import train

    gin_setup.parse(args.gin_file, args.gin_bindings)
    exp = gin_setup.build_experiment()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    (Path(args.workdir) / "config.gin").write_text(gin.config_str(), encoding="utf-8")
    final = train(exp, args.workdir)
    print(json.dumps({"workdir": args.workdir, **{k: round(v, 6) for k, v in final.items()}}))
    return 0


def _cmd_info(args) -> int:
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


def _cmd_data(args) -> int:
    from allam_jax.data import corpora

    counts = corpora.prepare(args.out)
    for name, c in counts.items():
        size = ", ".join(f"{k}={v:,}" for k, v in c.items() if isinstance(v, int))
        print(f"{args.out}/{name}: {size}  [{c['source']}]")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # gin logs every search-path miss at ERROR level
        handler.addFilter(lambda record: "/gin/" not in record.pathname.replace("\\", "/"))

    from allam_jax.model.config import ConfigError
    from allam_jax.train.checkpoint import CheckpointError
    from allam_jax.train.loop import NonFiniteLossError

    handlers = {"train": _cmd_train, "info": _cmd_info, "data": _cmd_data}
    try:
        return handlers[args.command](args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"allam: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CheckpointError as e:
        print(f"allam: error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except NonFiniteLossError as e:
        print(f"allam: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        print("allam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
