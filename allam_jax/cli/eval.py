"""``allam eval``: multiple-choice benchmarks and per-language perplexity of a checkpoint."""

from __future__ import annotations

import argparse

from allam_jax.cli.common import add_checkpoint_flag, add_gin_flags, non_negative_int, positive_int, seed_int
from allam_jax.core.errors import ConfigError
from allam_jax.eval.readers import READERS
from allam_jax.eval.scorer import LoglikelihoodScorer


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="multiple-choice benchmarks and perplexity for a checkpoint",
                       description="Score ArabicMMLU, ACVA, Arabic EXAMS, translated MMLU and MMLU files "
                       "(lm-evaluation-harness log-likelihood semantics: acc and acc_norm) and per-language "
                       "perplexity / bits per byte; prints a markdown table, writes JSON and .md with --out.")
    add_gin_flags(p)
    add_checkpoint_flag(p)
    p.add_argument("--vocabulary", default=None, help="'byte' or a SentencePiece .model (default: the gin data "
                   "config's, else byte)")
    p.add_argument("--task", action="append", default=[], metavar="FORMAT:PATH[:DEV_PATH]",
                   help=f"a benchmark file, repeatable; FORMAT: {', '.join(READERS)}; few-shot "
                   "examples come from DEV_PATH (else from the other test questions)")
    p.add_argument("--perplexity", action="append", default=[], metavar="LANG:PATH",
                   help="held-out text (.txt a document per line, or .jsonl 'text') for perplexity, repeatable")
    p.add_argument("--num_fewshot", type=non_negative_int, default=0, help="few-shot examples per question (default 0)")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N questions/documents per file")
    p.add_argument("--batch_size", type=positive_int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--seed", type=seed_int, default=1234, help="few-shot sampling seed")
    p.add_argument("--out", default=None, help="write the report here (JSON) and beside it as .md")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from allam_jax.eval.runner import check_specs, markdown, run_eval, write_report
    from allam_jax.runner import load_generator

    if not args.task and not args.perplexity:
        raise ConfigError("nothing to evaluate: give --task FORMAT:PATH and/or --perplexity LANG:PATH")
    check_specs(args.task, args.perplexity)
    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    scorer = LoglikelihoodScorer(gen.cfg, gen.params, lambda text: gen.encode(text, add_bos=False), gen.bos_id,
                                 batch_size=args.batch_size, progress=True, partitioner=gen.partitioner)
    report = run_eval(scorer, args.task, args.num_fewshot, args.limit, args.perplexity, args.seed)
    report["checkpoint"] = args.ckpt
    print(markdown(report), end="")
    if args.out:
        write_report(report, args.out)
    return 0
