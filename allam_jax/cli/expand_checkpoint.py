"""``allam expand-checkpoint``: grow a checkpoint's embeddings and LM head to a merged vocabulary."""

from __future__ import annotations

import argparse
import dataclasses

from etils import epath

from allam_jax import gin_setup
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.cli.common import add_checkpoint_flag, positive_int, seed_int
from allam_jax.core.errors import TokenizerError
from allam_jax.tokenizer import INIT_METHODS
from allam_jax.tokenizer.fit_head import HeadFit
from allam_jax.tokenizer.interface import load_tokenizer


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("expand-checkpoint", help="grow embeddings/LM head to a merged vocabulary",
                       description="Copy old rows bit for bit; initialise new rows (default: mean of the base "
                       "rows of the pieces the base tokenizer splits each new piece into). Writes an Orbax "
                       "checkpoint that `allam train` continues from with TrainerConfig.init_from.")
    add_checkpoint_flag(p)
    p.add_argument("--base_tokenizer", required=True, help="the tokenizer the checkpoint was trained with (.model "
                   "or tokenizer.json)")
    p.add_argument("--merged_tokenizer", required=True, help="output of allam tokenizer merge")
    p.add_argument("--out", required=True, help="new checkpoint directory (must not exist)")
    p.add_argument("--init", default="mean_subtoken", choices=INIT_METHODS,
                   help="how new rows start (default mean_subtoken: both matrices the mean of the sub-token rows; "
                   "fitted: input rows that mean rescaled to the base rows' length, output rows fitted on "
                   "--new_text/--old_text so each new token starts "
                   "with its share of the new language and English keeps its predictions; mean_all: the mean of "
                   "all base rows; random)")
    p.add_argument("--new_text", help="--init fitted: text in the added pieces' language (.txt or .jsonl 'text'), "
                   "not held-out data")
    p.add_argument("--old_text", help="--init fitted: text whose predictions must stay (e.g. English)")
    p.add_argument("--model_gin", help="--init fitted: the model's gin config (default: config.gin of the "
                   "checkpoint's training workdir)")
    p.add_argument("--fit_windows", type=positive_int, default=64,
                   help="--init fitted: model-length windows read from each text (default 64)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed for --init random")
    p.add_argument("--drop_extra_rows", action="store_true",
                   help="allow a base tokenizer with fewer pieces than the checkpoint has rows (the rows past it "
                        "are vocabulary padding: they are replaced, and expansion.json names them); refused by default")
    p.set_defaults(handler=run_expand)


def _head_fit(args: argparse.Namespace):
    """``--init fitted``'s inputs: both texts, and the model config (the expanded vocabulary's size)."""
    if not (args.new_text and args.old_text):
        raise TokenizerError("--init fitted needs --new_text (the added pieces' language) and --old_text (text whose "
                             "predictions must stay, e.g. English)")
    model_gin = args.model_gin
    if model_gin is None:
        here = epath.Path(args.ckpt)
        configs = (Workdir.at(d).config_gin for d in (here, *here.parents))
        model_gin = next((str(c) for c in configs if c.is_file()), None)
        if model_gin is None:
            raise TokenizerError(f"--init fitted needs the model's config: no config.gin beside {args.ckpt}; give "
                                 "--model_gin")
    gin_setup.parse([model_gin])
    model = dataclasses.replace(gin_setup.model_config(), vocab_size=load_tokenizer(args.merged_tokenizer).vocab_size)
    return HeadFit(model, args.new_text, args.old_text, args.fit_windows)


def run_expand(args: argparse.Namespace) -> int:
    from allam_jax.tokenizer.expand import expand_checkpoint

    r = expand_checkpoint(args.ckpt, args.base_tokenizer, args.merged_tokenizer, args.out, args.init, args.seed,
                         args.drop_extra_rows, _head_fit(args) if args.init == "fitted" else None)
    print(f"wrote {args.out}: vocabulary {r['base_vocab']:,} -> {r['merged_vocab']:,} ({r['init']}); continue with "
          f"--gin_bindings=\"TrainerConfig.init_from = '{args.out}'\" "
          f"--gin_bindings='ModelConfig.vocab_size = {r['merged_vocab']}'")
    return 0
