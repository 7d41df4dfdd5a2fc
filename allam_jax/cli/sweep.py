"""``allam sweep``: gin variants of one experiment, trained one after another (or printed for a launcher)."""

from __future__ import annotations

import argparse

from allam_jax import gin_setup
from allam_jax.cli.common import add_gin_flags
from allam_jax.core.errors import ConfigError
from allam_jax.sweep import read_variants, run_sweep, summary_table, write_summary


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run gin variants of an experiment one after another (or print them)",
                       description="Train every [variant] of --variants (gin bindings per section) on top of the "
                       "gin files, each in ROOT/VARIANT; then write ROOT/sweep.json and ROOT/sweep.md with the last "
                       "metrics of each. A re-run resumes unfinished variants.")
    add_gin_flags(p)
    p.add_argument("--variants", required=True, help="variants file: [name] headers, gin bindings below each")
    p.add_argument("--root", required=True, help="parent directory (or gs:// prefix) of the variants' workdirs")
    p.add_argument("--only", action="append", default=[], help="run only this variant, repeatable")
    p.add_argument("--print_only", action="store_true", help="print each variant's allam train command, run nothing")
    p.add_argument("--launcher", default=None, help="print commands for this launcher instead, e.g. "
                   "'tpu_scripts/launch.sh --name exp1 --zone us-east5-b'")
    p.set_defaults(handler=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    variants = read_variants(args.variants)
    for name, bindings in variants.items():  # every variant must parse before anything runs
        try:
            gin_setup.parse(args.gin_file, list(args.gin_bindings) + bindings)
        except Exception as e:  # noqa: BLE001 - reported with the variant's name

            raise ConfigError(f"variant [{name}]: {e}") from None
    rows = run_sweep(args.gin_file, variants, args.root, args.gin_bindings, args.print_only, args.launcher, args.only)
    if not (args.print_only or args.launcher):
        write_summary(rows, args.root)
        print(summary_table(rows))
        return 0 if all(r["returncode"] == 0 for r in rows) else 1
    return 0
