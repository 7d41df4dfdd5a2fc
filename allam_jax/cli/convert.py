"""``allam convert from-hf|to-hf``: Hugging Face Llama, Mistral, Qwen2 and Qwen3 checkpoints in and out."""

from __future__ import annotations

import argparse

from allam_jax import gin_setup
from allam_jax.cli.common import add_checkpoint_flag, add_gin_flags


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="import/export Hugging Face Llama/Mistral/Qwen2/Qwen3 checkpoints",
                       description="Convert between Hugging Face Llama, Mistral, Qwen2 and Qwen3 checkpoints (config.json + "
                       "safetensors) and allam-jax Orbax checkpoints.")
    conv = p.add_subparsers(dest="convert_command", required=True, metavar="CONVERT_COMMAND")
    c = conv.add_parser("from-hf", help="Hugging Face directory -> allam-jax checkpoint (+ model.gin)",
                        description="Read config.json and model.safetensors (or a sharded index) tensor by tensor; "
                        "write OUT/0/state, OUT/model.gin and OUT/conversion.json, all or nothing.")
    c.add_argument("--hf_dir", required=True, help="directory with config.json and *.safetensors")
    c.add_argument("--out", required=True, help="checkpoint directory to create (must not exist)")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="parameter dtype (default float32)")
    c.add_argument("--no_scan", action="store_true", help="unscanned layers (layer_0, layer_1, ...) instead of stacked")
    c.set_defaults(handler=run_from_hf)
    c = conv.add_parser("to-hf", help="allam-jax checkpoint -> Hugging Face directory",
                        description="Write model.safetensors (sharded past 5 GiB), config.json and, with --tokenizer, "
                        "the tokenizer files, so transformers' AutoModelForCausalLM/AutoTokenizer load them.")
    add_gin_flags(c)
    add_checkpoint_flag(c)
    c.add_argument("--out", required=True, help="directory to create (must not exist)")
    c.add_argument("--tokenizer", default=None, help="tokenizer to ship with the model: a SentencePiece .model or a "
                   "byte-level BPE tokenizer.json (its tokenizer_config.json is copied from beside it)")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="tensor dtype (default float32)")
    c.set_defaults(handler=run_to_hf)


def run_from_hf(args: argparse.Namespace) -> int:
    from allam_jax.convert.checkpoints import import_from_hf

    r = import_from_hf(args.hf_dir, args.out, scan_layers=not args.no_scan, dtype=args.dtype)
    print(f"wrote {args.out}: {r['params']:,} parameters ({args.dtype}); model config in {args.out}/model.gin; "
          f"continue with --gin_file={args.out}/model.gin --gin_bindings=\"TrainerConfig.init_from = '{args.out}'\"")
    return 0


def run_to_hf(args: argparse.Namespace) -> int:
    from allam_jax.convert.checkpoints import export_to_hf

    gin_setup.parse(args.gin_file, args.gin_bindings)
    r = export_to_hf(args.ckpt, gin_setup.model_config(), args.out, tokenizer=args.tokenizer, dtype=args.dtype,
                     progress=True)
    print(f"wrote {r['out']}: {r['params']:,} parameters ({r['dtype']}) as safetensors + config.json"
          + (" + tokenizer" if args.tokenizer else ""))
    return 0
