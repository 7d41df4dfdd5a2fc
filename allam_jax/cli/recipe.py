"""``allam recipe`` (the whole ALLaM recipe at tiny scale) and ``allam sweep`` (gin variants of one run)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from allam_jax import gin_setup
from allam_jax.cli.common import positive_int
from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import is_remote
from allam_jax.recipe import HeldoutConfig, RecipeConfig
from allam_jax.recipe import numbers
from allam_jax.recipe.config import STAGES, TOKENIZER_KINDS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipe", help="the whole ALLaM recipe at tiny scale, with ablations and a report",
                       description="Run the recipe's stages in order, each skipped when its output exists: data "
                       "(train/held-out split, evaluation items), base (English tokenizer and base model), expand "
                       "(Arabic tokenizer, merge, embedding expansion), cpt (continued pretraining, one run per "
                       "ablation arm), sft, dpo, eval (held-out bits/byte, multiple choice, preference), report "
                       "(WORKDIR/report.md with plots and the claims table).")
    p.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                   help="recipe gin file(s) binding RecipeConfig/HeldoutConfig (default recipes/tiny_cpu.gin)")
    p.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING",
                   help="one gin binding such as 'RecipeConfig.cpt_steps = 100'; repeatable")
    p.add_argument("--workdir", required=True, help="output directory of every stage; rerun to resume")
    p.add_argument("--quick", action="store_true", help="add recipes/tiny_cpu_quick.gin: the same stages in about "
                   "2 minutes (too few steps to judge the claims)")
    p.add_argument("--tokenizer_kind", default=None, choices=TOKENIZER_KINDS,
                   help="the base tokenizer's kind: sentencepiece (Llama-2's, the default) or bpe (byte-level, "
                   "Llama-3's / Qwen's); sets RecipeConfig.tokenizer_kind")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="train each arm a bits/byte claim compares N times (data orders seed..seed+N-1) and decide "
                   "those claims by more than two standard errors; sets RecipeConfig.seeds (default 1: the fixed 1%% "
                   "rule)")
    p.add_argument("--stop_after", default="report", choices=STAGES, help="last stage to run (default report)")
    p.add_argument("--redo", action="append", default=[], choices=STAGES,
                   help="run this stage again even though it finished (repeatable; later stages are not redone)")
    p.add_argument("--record_numbers", default=None, metavar="FILE",
                   help="after the report, write the run's numbers (bits/byte per run and step, accuracies, verdicts, "
                   "with versions and bundle hashes) to FILE; the quick recipe's committed copy, "
                   "benchmarks/results/recipe_quick.json, is what the tests compare CI's quick run with")
    p.set_defaults(handler=run_recipe)


def recipe_config(gin_files: Sequence[str], bindings: Sequence[str], quick: bool = False,
                  tokenizer_kind: Optional[str] = None, seeds: Optional[int] = None):
    """The RecipeConfig ``allam recipe`` runs with these flags (default file recipes/tiny_cpu.gin)."""
    files = list(gin_files or ["recipes/tiny_cpu.gin"]) + (["recipes/tiny_cpu_quick.gin"] if quick else [])
    gin_setup.register(RecipeConfig, HeldoutConfig)
    kind = [f"RecipeConfig.tokenizer_kind = '{tokenizer_kind}'"] if tokenizer_kind else []
    kind += [f"RecipeConfig.seeds = {seeds}"] if seeds else []
    gin_setup.parse(files, list(bindings) + kind)
    return gin_setup.build(RecipeConfig)


def run_recipe(args: argparse.Namespace) -> int:
    from allam_jax.recipe.stages import Recipe

    if is_remote(args.workdir):  # SentencePiece, matplotlib and the notebooks want local files
        raise ConfigError(f"allam recipe runs on one machine and needs a local --workdir, got {args.workdir} (copy "
                          "the finished workdir to a bucket afterwards; `allam train` itself takes gs:// workdirs)")
    cfg = recipe_config(args.gin_file, args.gin_bindings, args.quick, args.tokenizer_kind, args.seeds)
    recipe = Recipe(cfg, args.workdir)
    summaries = recipe.run(args.stop_after, args.redo, progress=lambda m: print(m, flush=True))
    if "report" in summaries:
        print(f"report: {summaries['report']['report']}")
        for claim, verdict in summaries["report"]["claims"].items():
            print(f"  {verdict:>20}  {claim}")
    if args.record_numbers:
        if args.stop_after != "report":
            raise ConfigError("--record_numbers needs the whole recipe (--stop_after report)")
        numbers.record(args.workdir, args.record_numbers)
        print(f"wrote {args.record_numbers}")
    return 0
