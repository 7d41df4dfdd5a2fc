"""The seqio input pipeline of ``allam train``: mixture → packed batches, resumable exactly.

Batches have the trainer's layout (see :mod:`allam_jax.data.text_files`) plus ``task_id``. Packing uses
seqio's ``trim_and_pack_dataset``; examples were already cut to ``seq_len`` by the tasks, so nothing
is trimmed away. Each process reads only its shard (``seqio.ShardInfo(process_index, process_count)``)
and builds its slice of the global batch.

Resume: the pipeline is deterministic for a given seed (seeded file order, shuffle buffers and mixture
sampling; tf.data keeps element order), so the position is the number of batches this process has
taken, and ``set_state`` rebuilds the pipeline and skips that many. Skipping costs the preprocessing of
the skipped data (seconds per million tokens here), never a different batch.
"""

from __future__ import annotations

import atexit
import bisect
import dataclasses
import gc
import logging
import weakref
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from allam_jax.data import tasks as tasks_lib
from allam_jax.data.sources import CleaningConfig, ParallelRendering, tf_data_errors
from allam_jax.data.vocabularies import bos_id, get_vocabulary, stored_offset
from allam_jax.core.errors import ConfigError
from allam_jax.data.batch import DataDescription, DataSourceDefaults

log = logging.getLogger(__name__)

_MEAN_TOKENS: dict[tuple, float] = {}

DEFAULT_RATES = {"en_pretrain": 0.4, "ar_pretrain": 0.35, "translated_pretrain": 0.25}


@dataclasses.dataclass(frozen=True)
class MixtureSchedule:
    """Stages of one run (gin: ``MixtureSchedule``), e.g. the ALLaM-7B recipe, English first, then the mix::

        MixtureSchedule.stages = [(0, {'en_pretrain': 1.0}),
                                  (50000, {'en_pretrain': 0.4, 'ar_pretrain': 0.35, 'translated_pretrain': 0.25})]

    From step ``start + 1`` on (``start`` batches taken), batches come from that stage's rates (``rate_unit``
    as ``SeqioData``'s); one optimizer and learning-rate schedule run through every stage, and a resume lands
    in the right stage at the right position."""

    stages: Sequence[tuple[int, Mapping[str, float]]] = ()

    def __post_init__(self):
        starts = [s[0] if isinstance(s, (tuple, list)) and len(s) == 2 else None for s in self.stages]
        if not self.stages or None in starts or not all(isinstance(s[1], Mapping) for s in self.stages):
            raise ConfigError(f"MixtureSchedule.stages must be a non-empty list of (start step, rates dict), got "
                              f"{list(self.stages)!r}")
        if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ConfigError(f"MixtureSchedule.stages must start at step 0 and rise strictly, got starts {starts}")

    @property
    def starts(self) -> list[int]:
        return [int(s[0]) for s in self.stages]


@dataclasses.dataclass(frozen=True)
class SeqioData(DataSourceDefaults):
    """The mixture to train on (gin: ``SeqioData``); ``make_iterator`` registers tasks and mixture."""

    mixture: str = "ar_en_translated"
    rates: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RATES))
    rate_unit: str = "tokens"
    vocabulary: str = "byte"
    paths: tasks_lib.CorpusPaths = tasks_lib.CorpusPaths()
    cleaning: CleaningConfig = CleaningConfig()
    rendering: ParallelRendering = ParallelRendering()
    seed: int = 0
    shuffle_buffer: int = 10_000
    languages: Sequence[str] = tasks_lib.LANGUAGES
    data_shards: int = 0  # a multiple of every process count the run may use keeps its batches across slices
    schedule: Optional["MixtureSchedule"] = None  # stages of rates by step; replaces ``rates`` when set
    # the run's first batch is this batch of the stream: a later stage of a progressive vocabulary expansion (a new
    # run, a new vocabulary) goes on where the earlier stages stopped instead of seeing their documents again
    start_batch: int = 0

    def __post_init__(self):
        if isinstance(self.start_batch, bool) or not isinstance(self.start_batch, int) or self.start_batch < 0:
            raise ConfigError(f"SeqioData.start_batch must be a non-negative integer, got {self.start_batch!r}")
        if self.start_batch and self.schedule is not None:
            raise ConfigError("SeqioData.start_batch and SeqioData.schedule cannot be combined: a MixtureSchedule "
                              "places its stages by step itself")

    def describe(self) -> DataDescription:
        return DataDescription(self.vocabulary, self.mixture, dict(self.rates), self.data_shards)

    def build(self, seq_len: int, rates: Optional[Mapping[str, float]] = None,
              mixture: Optional[str] = None) -> tuple[seqio.Vocabulary, dict[str, float]]:
        """Registers the tasks and the mixture (``rates`` under the name ``mixture``: default, the configured
        ones); returns the vocabulary and the expected token shares."""
        rates = self.rates if rates is None else rates
        vocab = get_vocabulary(self.vocabulary)
        registered = tasks_lib.register_tasks(self.paths, vocab, self.cleaning, self.rendering, seq_len,
                                              self.shuffle_buffer)
        missing = [t for t in rates if t not in registered]
        if missing:
            raise ConfigError(f"SeqioData.rates names task(s) {missing} that have no files (CorpusPaths) or do not "
                              f"exist; tasks: {[t.name for t in tasks_lib.TASKS]}")
        mean_tokens = None
        if self.rate_unit == "tokens":  # measured once per process for the same tasks (sweeps, the recipe's arms)
            key = (self.vocabulary, repr(self.paths), repr(self.cleaning), repr(self.rendering), seq_len)
            mean_tokens = {}
            for task in rates:
                if (task, key) not in _MEAN_TOKENS:
                    _MEAN_TOKENS[(task, key)] = tasks_lib.task_token_stats(task)
                mean_tokens[task] = _MEAN_TOKENS[(task, key)][0]
        shares = tasks_lib.register_mixture(mixture or self.mixture, rates, self.rate_unit, mean_tokens)
        return vocab, shares

    def task_totals(self, seq_len: int) -> dict[str, int]:
        """Total tokens of the tasks small enough to have been counted whole (see ``task_token_stats``)."""
        key = (self.vocabulary, repr(self.paths), repr(self.cleaning), repr(self.rendering), seq_len)
        return {task: v[1] for (task, k), v in _MEAN_TOKENS.items() if k == key and v[1] is not None}

    def make_iterator(self, seq_len: int, batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> "SeqioBatchIterator":
        shards = DataShards.of(self.data_shards, batch_size, process_index, process_count, "SeqioData")
        if self.schedule is None:
            vocab, shares = self.build(seq_len)
            if process_index == 0:
                warn_repeating_tasks(shares, self.task_totals(seq_len), batch_size * seq_len)
            return SeqioBatchIterator(self.mixture, vocab, seq_len, shards, self.seed, shares,
                                      stream_offset=self.start_batch)

        def stage(index: int, start_batches: int) -> SeqioBatchIterator:
            name = f"{self.mixture}_stage{index}"
            vocab, shares = self.build(seq_len, self.schedule.stages[index][1], name)
            return SeqioBatchIterator(name, vocab, seq_len, shards, self.seed, shares, start_batches=start_batches)

        return StagedBatchIterator(stage, self.schedule.starts, get_vocabulary(self.vocabulary))


def warn_repeating_tasks(shares: Mapping[str, float], totals: Mapping[str, int], tokens_per_step: int,
                         within_steps: int = 10) -> None:
    """A task whose whole data is smaller than what the mixture draws from it in ``within_steps`` steps repeats
    that often (one 22-character line at a third of the mixture is a third of every batch): say so, once."""
    for task, share in shares.items():
        total = totals.get(task)
        drawn = share * tokens_per_step
        if total is not None and drawn > 0 and total < within_steps * drawn:
            log.warning("task %s holds %d tokens in all, and the mixture draws ~%d per step from it (%.1f%% of the "
                        "batch): it repeats every %.2f steps; add data or lower its rate", task, total, drawn,
                        100 * share, total / drawn)


def to_model_batch(ex: Mapping[str, tf.Tensor], bos: int, offset: int = 0) -> dict[str, tf.Tensor]:
    """Packed seqio features → trainer layout: inputs are targets shifted right with BOS at each start.
    ``offset``: what the token ids were stored + (``vocabularies.stored_offset``)."""
    targets, segments, positions = ex["targets"], ex["targets_segment_ids"], ex["targets_positions"]
    if offset:
        targets = tf.where(segments > 0, targets - offset, 0)
    shifted = tf.concat([tf.fill(tf.shape(targets[..., :1]), bos), targets[..., :-1]], axis=-1)
    real = segments > 0
    inputs = tf.where(positions == 0, tf.cast(bos, targets.dtype), shifted)
    # per-token features are stored +1 (seqio's packer cuts zeros as padding); padding becomes 0 again
    unshift = lambda x: tf.maximum(x - 1, 0)  # noqa: E731
    weights = tf.cast(unshift(ex["weights"]) if "weights" in ex else real, tf.float32)  # SFT: assistant tokens
    return {
        "inputs": tf.where(real, inputs, 0),
        "targets": targets,
        "segment_ids": segments,
        "positions": positions,
        "loss_weights": weights * tf.cast(real, tf.float32),
        "lang_id": unshift(ex["lang"]),
        "task_id": unshift(ex["task"]),
    }


@dataclasses.dataclass(frozen=True)
class DataShards:
    """How the global batch is cut. The source is split into ``count`` shards, each packed into its own
    stream of ``global_batch / count`` rows; global batch ``b`` is batch ``b`` of every shard, stacked in shard
    order, and a process reads the consecutive shards whose rows it holds. So the batches depend on ``count``
    and never on the number of processes: a run moves to a slice with another process count (any divisor of
    ``count``) and sees the same global batches. ``data_shards = 0`` means one shard per process (the fewest
    pipelines; the order then changes with the process count)."""

    count: int
    global_batch: int
    process_index: int = 0
    process_count: int = 1

    @classmethod
    def of(cls, data_shards: int, global_batch: int, process_index: int, process_count: int,
           owner: str) -> "DataShards":
        if global_batch % process_count:
            raise ConfigError(f"batch size {global_batch} is not divisible by the process count {process_count}")
        count = data_shards or process_count
        if data_shards < 0 or global_batch % count:
            raise ConfigError(f"{owner}.data_shards = {data_shards} must be 0 or a positive divisor of the batch "
                              f"size {global_batch}")
        if count % process_count:
            raise ConfigError(f"{owner}.data_shards = {count} cannot be split over {process_count} processes: use a "
                              "multiple of every process count the run may use (e.g. 64)")
        return cls(count, global_batch, process_index, process_count)

    @property
    def rows(self) -> int:
        """Rows of the global batch from one shard."""
        return self.global_batch // self.count

    @property
    def mine(self) -> range:
        per = self.count // self.process_count
        return range(self.process_index * per, (self.process_index + 1) * per)


def sharded_batches(make: Callable[[seqio.ShardInfo, int], tf.data.Dataset], shards: DataShards) -> tf.data.Dataset:
    """This process's rows of each global batch: ``make(shard, rows)`` per owned shard, zipped and stacked."""
    parts = [make(seqio.ShardInfo(i, shards.count), shards.rows) for i in shards.mine]
    if len(parts) == 1:
        return parts[0]
    return tf.data.Dataset.zip(tuple(parts)).map(
        lambda *batches: {k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]})


def packed_dataset(mixture: str, vocab: seqio.Vocabulary, seq_len: int, local_batch: int, seed: int,
                   shard: seqio.ShardInfo, num_epochs: Optional[int] = None) -> tf.data.Dataset:
    """Packed model batches of a registered task or mixture; every token feature is packed alongside."""
    provider = seqio.get_mixture_or_task(mixture)
    ds = provider.get_dataset(None, "train", shuffle=True, seed=seed, shard_info=shard, num_epochs=num_epochs,
                              trim_output_features=False)
    ds = seqio.utils.trim_and_pack_dataset(ds, {k: seq_len for k in provider.output_features})
    bos, offset = bos_id(vocab), stored_offset(vocab)
    ds = ds.map(lambda ex: to_model_batch(ex, bos, offset), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True).prefetch(2)


_LIVE: "weakref.WeakSet[SeqioBatchIterator]" = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
    """tf.data iterators over Python generators still alive at interpreter teardown can hang or abort the
    process ("terminate called without an active exception"); close them while Python is whole."""
    for it in list(_LIVE):
        it.close()
    gc.collect()


class SeqioBatchIterator:
    """Iterates packed numpy batches; the position is the number of batches taken."""

    def __init__(self, mixture: str, vocab: seqio.Vocabulary, seq_len: int, shards: DataShards, seed: int,
                 expected_shares: Optional[Mapping[str, float]] = None, num_epochs: Optional[int] = None,
                 start_batches: int = 0, stream_offset: int = 0):
        self.mixture, self.vocab, self.seq_len, self.shards = mixture, vocab, seq_len, shards
        self.seed, self.num_epochs, self.stream_offset = seed, num_epochs, stream_offset
        self.expected_shares = dict(expected_shares or {})
        self.languages = tasks_lib.LANGUAGES
        self.stage = None
        self.batches = start_batches
        self._it = self._make(start_batches)
        _LIVE.add(self)

    def close(self) -> None:
        self._it = None

    def _make(self, skip: int = 0):
        ds = sharded_batches(lambda shard, rows: packed_dataset(self.mixture, self.vocab, self.seq_len, rows,
                                                                self.seed, shard, self.num_epochs), self.shards)
        return iter(ds.skip(self.stream_offset + skip).as_numpy_iterator())

    def get_state(self) -> dict:
        state = {"batches": int(self.batches), "seed": int(self.seed), "mixture": self.mixture,
                 "data_shards": self.shards.count}
        return {**state, "stream_offset": self.stream_offset} if self.stream_offset else state

    def set_state(self, state: Mapping) -> None:
        if "batches" not in state:
            raise ConfigError(f"data state {dict(state)} is not from the seqio pipeline (it has no 'batches'); "
                              "was the checkpoint written with TextFileData?")
        if state.get("mixture", self.mixture) != self.mixture or int(state.get("seed", self.seed)) != self.seed:
            log.warning("data state was saved for mixture %s seed %s; now %s seed %s: the data order changes",
                        state.get("mixture"), state.get("seed"), self.mixture, self.seed)
        if int(state.get("stream_offset", 0)) != self.stream_offset:
            log.warning("data state was saved %s batches into the stream (SeqioData.start_batch), now %d: the data "
                        "order changes", state.get("stream_offset", 0), self.stream_offset)
        if int(state.get("data_shards", self.shards.count)) != self.shards.count:
            log.warning("data state was saved with %s data shards, now %d: the batches after step %s differ from "
                        "the run's own (set SeqioData.data_shards to keep them across process counts)",
                        state.get("data_shards"), self.shards.count, state.get("batches"))
        self.batches = int(state["batches"])
        self._it = self._make(self.batches)

    def __iter__(self) -> "SeqioBatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._make(self.batches)
        with tf_data_errors():
            batch = next(self._it)
        self.batches += 1
        return batch


class StagedBatchIterator:
    """The batches of a :class:`MixtureSchedule`: each stage's own iterator, opened when the stage begins (or
    at its position on a resume); the position is the number of batches taken over all stages."""

    def __init__(self, open_stage: Callable[[int, int], SeqioBatchIterator], starts: Sequence[int],
                 vocab: seqio.Vocabulary):
        self._open, self.starts, self.vocab = open_stage, list(starts), vocab
        self.languages = tasks_lib.LANGUAGES
        self.batches = 0
        self._index: Optional[int] = None
        self._current: Optional[SeqioBatchIterator] = None

    def _stage_of(self, batch: int) -> int:
        return bisect.bisect_right(self.starts, batch) - 1

    @property
    def stage(self) -> int:
        """The stage of the last batch taken (of the next one before any is taken)."""
        return self._stage_of(max(self.batches - 1, 0))

    def __iter__(self) -> "StagedBatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        index = self._stage_of(self.batches)
        if index != self._index:
            if self._current is not None:
                self._current.close()
            self._current = self._open(index, self.batches - self.starts[index])
            self._index = index
            log.info("data stage %d from batch %d", index, self.batches)
        batch = next(self._current)
        self.batches += 1
        return batch

    def get_state(self) -> dict:
        state = self._current.get_state() if self._current is not None else {}
        return {**state, "batches": int(self.batches), "stage": self._stage_of(self.batches), "stage_starts": self.starts}

    def set_state(self, state: Mapping) -> None:
        if "batches" not in state:
            raise ConfigError(f"data state {dict(state)} is not from the seqio pipeline (it has no 'batches')")
        if list(state.get("stage_starts", self.starts)) != self.starts:
            log.warning("data state was saved for stages starting at %s, now %s: stages change where they begin",
                        state.get("stage_starts"), self.starts)
        if self._current is not None:
            self._current.close()
        self.batches, self._index, self._current = int(state["batches"]), None, None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
