"""``allam data cache``: the offline half of the data pipeline as an Apache Beam job.

read (txt / JSONL / ``tfds:``; local or ``gs://``) → normalise → filter → **global exact dedup** (hash →
GroupByKey over the whole corpus, whichever worker read each copy) → tokenise (+EOS) → shard by hash →
write each shard sorted by hash, with its index → per-task statistics → ``COMPLETED``.

Output is independent of the runner and of the number of workers: a document's shard and place in it are
functions of its text, and of its duplicates the one kept is the first by (file, line). The documents of a
shard are thereby in a hash order: a global shuffle done once, offline.

DirectRunner runs it on a laptop (``--direct_num_workers=2 --direct_running_mode=multi_processing`` uses
both cores); ``--runner=DataflowRunner`` (or Flink, Spark) with that runner's options runs it on a cluster:
every option this command does not know goes to Beam's ``PipelineOptions``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
from typing import Iterable, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from allam_jax.core.errors import ConfigError, DataError
from allam_jax.core.paths import as_path, write_text_atomically
from allam_jax.core.stderr_filter import stderr_fds
from allam_jax.data import cache_format
from allam_jax.data.sources import (CleaningConfig, ParallelRendering, SourceStats, document_digest, drop_reason,
                                    expand_patterns, our_message, read_records, record_text)
from allam_jax.data.tasks import TASKS, CorpusPaths, source_groups

log = logging.getLogger(__name__)

DROP_REASONS = ("malformed", "length", "script", "duplicate")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One input file of a task: how to read it (``script`` filter, parallel rendering or a text field)."""

    task: str
    path: str
    script: Optional[str]
    parallel: bool
    field: str


def source_files(paths: CorpusPaths, tasks: Optional[Sequence[str]] = None) -> list[SourceFile]:
    """The files of each task, as the seqio tasks read them (a pattern matching nothing is a DataError)."""
    known = [t.name for t in TASKS]
    unknown = [t for t in tasks or () if t not in known]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; tasks: {known}")
    out = []
    for spec in TASKS:
        if tasks and spec.name not in tasks:
            continue
        for patterns, script, parallel in source_groups(paths, spec):
            out += [SourceFile(spec.name, f, script, parallel, paths.text_field) for f in expand_patterns(patterns)]
    if not out:
        raise ConfigError(f"no source files for task(s) {list(tasks or known)} (CorpusPaths is empty)")
    return out


def read_documents(source: SourceFile, cleaning: CleaningConfig, rendering: ParallelRendering) -> Iterator:
    """``((task, digest), ((path, line), text))`` per kept document, and on the ``drop`` output
    ``((task, reason), count)`` per reason seen in the file. A parallel pair's style is chosen by its line number
    (the on-the-fly path counts kept pairs: the order is not known in a distributed read)."""
    stats, dropped = SourceStats(), collections.Counter()
    for line_no, record in read_records(source.path, cleaning, stats):
        text = record_text(record, f"{source.path}:{line_no}", cleaning, stats,
                           rendering if source.parallel else None, source.field, line_no)
        if text is None:
            continue
        reason = drop_reason(text, None if source.parallel else source.script, cleaning)
        if reason:
            dropped[reason] += 1
            continue
        yield (source.task, document_digest(text)), ((source.path, line_no), text)
    dropped["malformed"] += stats.malformed
    for reason, count in dropped.items():
        if count:
            yield beam.pvalue.TaggedOutput("drop", ((source.task, reason), count))


@contextlib.contextmanager
def beam_errors() -> Iterator[None]:
    """A DataError raised in a Beam worker reaches the driver wrapped in the runner's long traceback (another
    process's, with multi_processing); this turns it back into the one-line error."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the runners wrap worker errors in their own types
        message = our_message(str(e))
        if message:
            raise DataError(message) from None
        raise


def shard_of(digest: bytes, num_shards: int) -> int:
    return int.from_bytes(digest[:8], "little") % num_shards


def run_cache(out: str, paths: CorpusPaths, vocabulary: str, cleaning: CleaningConfig,
              rendering: ParallelRendering, num_shards: int = 1, tasks: Optional[Sequence[str]] = None,
              beam_args: Sequence[str] = (), overwrite: bool = False) -> dict[str, dict]:
    """Runs the Beam job; returns each task's statistics (as written to ``stats.train.json``)."""
    from allam_jax.data.vocabularies import get_vocabulary

    if num_shards <= 0:
        raise ConfigError(f"--shards must be positive, got {num_shards}")
    get_vocabulary(vocabulary)  # a missing or corrupt model is named here, before any worker starts
    options = PipelineOptions(list(beam_args))
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
    if unknown:  # Beam would only log and drop them: a mistyped --shards must not pass silently
        raise ConfigError(f"unknown option(s) {', '.join('--' + u for u in unknown)}: neither `allam data cache`'s "
                          "nor Beam's (see --help)")
    files = source_files(paths, tasks)
    task_names = sorted({f.task for f in files})
    root = as_path(out)
    for name in task_names:
        directory = root / name
        if directory.exists():
            if not overwrite and (directory / "COMPLETED").exists():
                raise ConfigError(f"{directory} is already cached; pass --overwrite to rebuild it")
            directory.rmtree()
        directory.mkdir(parents=True)

    with tempfile.TemporaryFile() as beam_log:
        try:
            with _stderr_to(beam_log, keep=logging.getLogger().isEnabledFor(logging.DEBUG)):
                _run_pipeline(options, files, task_names, out, num_shards, vocabulary, cleaning, rendering)
        except Exception as e:
            for name in task_names:  # what this run started and did not finish: no shard or .tmp file is left
                if not (root / name / "COMPLETED").exists():
                    (root / name).rmtree(missing_ok=True)
            reason = re.search(r"\[Errno (\d+)\] ([^\[\]\n']+)", str(e))
            if reason:  # Beam re-raises a worker's OSError (a full disk) as its own error, with pages of context
                raise OSError(int(reason.group(1)), f"writing the cache failed ({reason.group(2).strip()}); the "
                              "unfinished tasks were removed", out) from None
            beam_log.seek(0)  # an error of another kind: what Beam and its workers said may explain it
            sys.stderr.write(beam_log.read().decode("utf-8", "replace"))
            raise
    return {name: _read_stats(root / name) for name in task_names}


@contextlib.contextmanager
def _stderr_to(file, keep: bool = False) -> Iterator[None]:
    """File descriptor 2 (this process's and the Beam worker processes' it starts, which inherit it) goes to
    ``file`` while the pipeline runs: Beam's start-up chatter (apitools, semi_persistent_directory, discarded
    arguments), repeated by every worker, and its workers' tracebacks of an error reported here in one line.
    ``keep`` (``--log_level DEBUG``) leaves stderr alone."""
    if keep:
        yield
        return

    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in stderr_fds()}
    for fd in saved:
        os.dup2(file.fileno(), fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def _run_pipeline(options, files, task_names, out: str, num_shards: int, vocabulary: str,
                  cleaning: CleaningConfig, rendering: ParallelRendering) -> None:
    with beam.Pipeline(options=options) as p:
        docs, drops = (p
                       | "files" >> beam.Create(files)
                       | "spread files" >> beam.Reshuffle()
                       | "read+clean" >> beam.FlatMap(read_documents, cleaning, rendering).with_outputs(
                           "drop", main="docs"))
        grouped = docs | "dedup: group by hash" >> beam.GroupByKey()
        kept = grouped | "keep first copy" >> beam.Map(_first_copy)
        duplicates = grouped | "count copies" >> beam.FlatMap(_extra_copies)
        tokenized = kept | "tokenize" >> beam.ParDo(Tokenize(vocabulary, num_shards))
        empty = p | "every shard" >> beam.Create([((t, s), None) for t in task_names for s in range(num_shards)])
        shard_stats = ((tokenized, empty) | "with empty shards" >> beam.Flatten()
                       | "group shards" >> beam.GroupByKey()
                       | "write shards" >> beam.Map(_write_shard, out, num_shards))
        dropped = ((drops, duplicates) | "all drops" >> beam.Flatten()
                   | "count drops" >> beam.CombinePerKey(sum)
                   | "by task" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1]))))
        ({"shards": shard_stats, "dropped": dropped}
         | "join stats" >> beam.CoGroupByKey()
         | "finish tasks" >> beam.Map(_finish_task, out, num_shards, vocabulary))


def _extra_copies(kv):
    (task, _), copies = kv
    extra = sum(1 for _ in copies) - 1
    return [((task, "duplicate"), extra)] if extra else []


def _first_copy(kv):
    (task, digest), copies = kv
    _, text = min(copies, key=lambda c: c[0])
    return (task, digest), text


class Tokenize(beam.DoFn):
    """Token ids + EOS per document, keyed by (task, shard); the vocabulary is loaded once per worker."""

    def __init__(self, vocabulary: str, num_shards: int):
        super().__init__()
        self.vocabulary, self.num_shards = vocabulary, num_shards

    def setup(self):
        from allam_jax.data.vocabularies import get_vocabulary

        self.vocab = get_vocabulary(self.vocabulary)
        self.eos = int(self.vocab.eos_id)

    def process(self, element) -> Iterable:
        (task, digest), text = element
        ids = [int(t) for t in self.vocab.encode(text)] + [self.eos]
        yield (task, shard_of(digest, self.num_shards)), (digest, ids)


def _write_shard(kv, out: str, num_shards: int):
    (task, shard), values = kv
    records = sorted(v for v in values if v is not None)
    directory = as_path(out) / task
    stats = cache_format.write_shard(directory / cache_format.shard_name(shard, num_shards),
                                     directory / cache_format.shard_name(shard, num_shards, "index"),
                                     [ids for _, ids in records])
    return task, stats


def _finish_task(kv, out: str, num_shards: int, vocabulary: str) -> None:
    task, joined = kv
    shards = list(joined["shards"])
    if len(shards) != num_shards:  # cannot happen unless a shard write was lost: then no COMPLETED
        raise RuntimeError(f"{task}: {len(shards)} of {num_shards} shards written")
    dropped = {reason: 0 for reason in DROP_REASONS}
    for reason, count in joined["dropped"]:
        dropped[reason] += int(count)
    examples = sum(s["examples"] for s in shards)
    stats = {"examples": examples, f"{cache_format.FEATURE}_tokens": sum(s["tokens"] for s in shards),
             f"{cache_format.FEATURE}_max_tokens": max(s["max_tokens"] for s in shards),
             "documents_read": examples + sum(dropped.values()), "dropped": dropped}
    directory = as_path(out) / task
    write_text_atomically(directory / f"info.{cache_format.SPLIT}.json",
                          json.dumps(cache_format.info_json(num_shards, vocabulary), indent=2))
    write_text_atomically(directory / f"stats.{cache_format.SPLIT}.json", json.dumps(stats, indent=2))
    write_text_atomically(directory / "COMPLETED", "")


def _read_stats(directory) -> dict:
    if not (directory / "COMPLETED").exists():
        raise RuntimeError(f"{directory}: the Beam job finished without completing this task")
    return json.loads((directory / f"stats.{cache_format.SPLIT}.json").read_text())
