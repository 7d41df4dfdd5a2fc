"""Training on cached tasks (``allam data cache``): every batch is a pure function of its global index.

Each task is one endless token stream: its records in an order fixed per epoch (blocks of consecutive records
permuted by the seed and epoch, so reads stay sequential within a block), concatenated with EOS between
documents and cut into rows of ``seq_len``. Row ``j`` of a task is tokens ``[j * seq_len, (j + 1) * seq_len)``
of its stream: a binary search over the epoch's cumulative token counts finds it.

Rows go to tasks by a block plan: in every block of ``block_rows`` consecutive global rows each task has its
share rounded by largest remainder (so the gin rates are token shares, exact to 1/block_rows), in an order
permuted per block. How many rows a task had before global row ``r`` is then a closed form, and so is where
its stream stands: restoring at batch 10 or 10**6 costs the same (no replay), and a process reads only its
own rows, so any process count sees the same global batches.

A packed row holds whole documents and pieces of the documents at its edges; each is its own segment with
positions from 0 (as seqio's packing of split documents does), and every token is trained on.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
from typing import Mapping, Optional, Sequence

import numpy as np

from allam_jax.core.errors import ConfigError
from allam_jax.data.batch import DataDescription, DataSourceDefaults
from allam_jax.data import cache_format
from allam_jax.data.pipeline import MixtureSchedule
from allam_jax.data.tasks import LANGUAGES, TASKS, token_shares

log = logging.getLogger(__name__)

_TASK_IDS = {t.name: i for i, t in enumerate(TASKS)}
_TASK_LANG = {t.name: LANGUAGES.index(t.lang) for t in TASKS}


@dataclasses.dataclass(frozen=True)
class CachedData(DataSourceDefaults):
    """The mixture of cached tasks to train on (gin: ``CachedData``); ``rates`` are token shares."""

    cache_dir: str = "data_cache/cached"
    rates: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"en_pretrain": 0.4, "ar_pretrain": 0.35, "translated_pretrain": 0.25})
    vocabulary: str = "byte"
    seed: int = 0
    schedule: Optional[MixtureSchedule] = None  # stages of rates by step; replaces ``rates`` when set
    block_rows: int = 1024  # rows per allocation block: shares are exact to 1/block_rows
    block_records: int = 64  # records read in a run before the epoch order jumps

    def describe(self) -> DataDescription:
        return DataDescription(self.vocabulary, f"cached tasks in {self.cache_dir}", dict(self.rates))

    def make_iterator(self, seq_len: int, batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> "CachedBatchIterator":
        from allam_jax.data.vocabularies import get_vocabulary

        if batch_size % process_count:
            raise ConfigError(f"batch size {batch_size} is not divisible by the process count {process_count}")
        stages = self.schedule.stages if self.schedule is not None else [(0, self.rates)]
        plan = RowPlan([(int(s), token_shares(r, 'CachedData')) for s, r in stages], batch_size, self.seed, self.block_rows)
        names = sorted({t for _, shares in plan.stages for t in shares}, key=lambda t: _TASK_IDS.get(t, 99))
        unknown = [t for t in names if t not in _TASK_IDS]
        if unknown:
            raise ConfigError(f"CachedData.rates names unknown task(s) {unknown}; tasks: {list(_TASK_IDS)}")
        streams = {name: TaskStream(cache_format.CachedTask.open(self.cache_dir, name, self.vocabulary), seq_len,
                                    self.seed, self.block_records) for name in names}
        return CachedBatchIterator(plan, streams, get_vocabulary(self.vocabulary), batch_size, process_index,
                                   process_count, self.seed)


class RowPlan:
    """Which task fills each global row, and how many rows each task had before it, in closed form."""

    def __init__(self, stages: Sequence[tuple[int, Mapping[str, float]]], batch_size: int, seed: int,
                 block_rows: int):
        if block_rows <= 0:
            raise ConfigError(f"CachedData.block_rows must be positive, got {block_rows}")
        self.stages, self.batch_size, self.seed, self.block_rows = list(stages), batch_size, seed, block_rows
        self.starts = [s * batch_size for s, _ in self.stages]  # first global row of each stage
        self.tasks = sorted({t for _, shares in self.stages for t in shares})
        self.quota = [self._quota(shares) for _, shares in self.stages]
        self._blocks: collections.OrderedDict = collections.OrderedDict()
        self._before_stage = [np.zeros(len(self.tasks), np.int64)]
        for i in range(1, len(self.stages)):
            rows = self.starts[i] - self.starts[i - 1]
            self._before_stage.append(self._before_stage[-1] + self._count(i - 1, rows))

    def _quota(self, shares: Mapping[str, float]) -> np.ndarray:
        """Rows per block per task: largest-remainder rounding of ``block_rows * share``."""
        exact = np.array([shares.get(t, 0.0) * self.block_rows for t in self.tasks])
        quota = np.floor(exact).astype(np.int64)
        for i in np.argsort(-(exact - quota), kind="stable")[: self.block_rows - quota.sum()]:
            quota[i] += 1
        return quota

    def _block(self, stage: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(task of each row, rows of each task before each row) of one block."""
        key = (stage, block)
        if key not in self._blocks:
            slots = np.repeat(np.arange(len(self.tasks)), self.quota[stage])
            np.random.default_rng([self.seed, 0x5EED, stage, block]).shuffle(slots)
            onehot = np.eye(len(self.tasks), dtype=np.int64)[slots]
            prefix = np.concatenate([np.zeros((1, len(self.tasks)), np.int64), np.cumsum(onehot, 0)])
            self._blocks[key] = (slots, prefix)
            if len(self._blocks) > 8:
                self._blocks.popitem(last=False)
        return self._blocks[key]

    def _count(self, stage: int, rows: int) -> np.ndarray:
        """Rows per task among the first ``rows`` rows of ``stage``."""
        full, rest = divmod(rows, self.block_rows)
        return full * self.quota[stage] + self._block(stage, full)[1][rest]

    def row(self, r: int) -> tuple[str, int]:
        """(task, index of this row in the task's stream) of global row ``r``."""
        stage = bisect.bisect_right(self.starts, r) - 1
        local = r - self.starts[stage]
        block, offset = divmod(local, self.block_rows)
        slots, prefix = self._block(stage, block)
        task = int(slots[offset])
        before = self._before_stage[stage][task] + block * self.quota[stage][task] + prefix[offset][task]
        return self.tasks[task], int(before)

    def stage_of_batch(self, batch: int) -> int:
        return bisect.bisect_right(self.starts, batch * self.batch_size) - 1


class TaskStream:
    """A cached task as an endless token stream cut into rows of ``seq_len``."""

    def __init__(self, task: cache_format.CachedTask, seq_len: int, seed: int, block_records: int):
        if block_records <= 0:
            raise ConfigError(f"CachedData.block_records must be positive, got {block_records}")
        self.task, self.seq_len, self.seed, self.block_records = task, seq_len, seed, block_records
        self.tokens_per_epoch = task.num_tokens
        self._epochs: collections.OrderedDict = collections.OrderedDict()
        self._readers: dict[int, cache_format.ShardReader] = {}
        self._last: tuple[int, Optional[np.ndarray]] = (-1, None)

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(records in this epoch's order, token offset where each starts)."""
        if epoch not in self._epochs:
            n, size = self.task.num_records, self.block_records
            rng = np.random.default_rng([self.seed, _TASK_IDS.get(self.task.name, 99), epoch])
            blocks = rng.permutation(-(-n // size))
            order = (blocks[:, None] * size + np.arange(size)).ravel()
            order = order[order < n]  # the last block may be short
            starts = np.concatenate([[0], np.cumsum(self.task.lengths[order])[:-1]])
            self._epochs[epoch] = (order, starts)
            if len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def _record(self, record: int) -> np.ndarray:
        if self._last[0] != record:
            shard = int(self.task.shard_of[record])
            if shard not in self._readers:
                self._readers[shard] = cache_format.ShardReader(self.task.shard_files[shard])
            tokens = self._readers[shard].tokens(int(self.task.offsets[record]), int(self.task.lengths[record]))
            self._last = (record, tokens)
        return self._last[1]

    def row(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, segment ids, positions) of row ``j``."""
        tokens = np.empty(self.seq_len, np.int32)
        segments = np.empty(self.seq_len, np.int32)
        positions = np.empty(self.seq_len, np.int32)
        start, filled, segment = j * self.seq_len, 0, 0
        while filled < self.seq_len:
            epoch, offset = divmod(start + filled, self.tokens_per_epoch)
            order, starts = self._order(epoch)
            k = int(np.searchsorted(starts, offset, side="right")) - 1
            skip = offset - int(starts[k])
            while k < len(order) and filled < self.seq_len:
                piece = self._record(int(order[k]))[skip: skip + self.seq_len - filled]
                segment += 1
                tokens[filled: filled + len(piece)] = piece
                segments[filled: filled + len(piece)] = segment
                positions[filled: filled + len(piece)] = np.arange(len(piece))
                filled, k, skip = filled + len(piece), k + 1, 0
        return tokens, segments, positions

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


class CachedBatchIterator:
    """This process's rows of each global batch, in the trainer's layout; the position is the batch index."""

    def __init__(self, plan: RowPlan, streams: Mapping[str, TaskStream], vocab, batch_size: int,
                 process_index: int, process_count: int, seed: int):
        from allam_jax.data.vocabularies import bos_id

        self.plan, self.streams, self.vocab, self.seed = plan, dict(streams), vocab, seed
        self.batch_size, self.rows = batch_size, batch_size // process_count
        self.first_row = process_index * self.rows
        self.bos = bos_id(vocab)
        self.languages = LANGUAGES
        self.batches = 0
        self.expected_shares = dict(plan.stages[0][1])

    @property
    def stage(self) -> Optional[int]:
        """The stage of the last batch taken (None without a schedule)."""
        if len(self.plan.stages) == 1:
            return None
        return self.plan.stage_of_batch(max(self.batches - 1, 0))

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Global batch ``index``'s rows of this process (no state is read or changed)."""
        parts = collections.defaultdict(list)
        for i in range(self.rows):
            task, j = self.plan.row(index * self.batch_size + self.first_row + i)
            tokens, segments, positions = self.streams[task].row(j)
            inputs = np.concatenate([[self.bos], tokens[:-1]]).astype(np.int32)
            inputs[positions == 0] = self.bos
            parts["inputs"].append(inputs)
            parts["targets"].append(tokens)
            parts["segment_ids"].append(segments)
            parts["positions"].append(positions)
            parts["loss_weights"].append(np.ones(len(tokens), np.float32))
            parts["lang_id"].append(np.full(len(tokens), _TASK_LANG[task], np.int32))
            parts["task_id"].append(np.full(len(tokens), _TASK_IDS[task], np.int32))
        return {k: np.stack(v) for k, v in parts.items()}

    def __iter__(self) -> "CachedBatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        out = self.batch(self.batches)
        self.batches += 1
        return out

    def get_state(self) -> dict:
        return {"batches": int(self.batches), "seed": int(self.seed), "pipeline": "cached",
                "rates": [[int(s), dict(r)] for s, r in self.plan.stages]}

    def set_state(self, state: Mapping) -> None:
        if "batches" not in state:
            raise ConfigError(f"data state {dict(state)} has no 'batches': was the checkpoint written with "
                              "TextFileData?")
        if state.get("pipeline", "cached") != "cached":
            log.warning("data state was saved by the %s pipeline; the cached one continues at batch %s",
                        state.get("pipeline"), state["batches"])
        saved = state.get("rates")
        if saved is not None and [[int(s), dict(r)] for s, r in saved] != self.get_state()["rates"]:
            log.warning("data state was saved for rates %s, now %s: the batches from here differ from the run's own",
                        saved, self.get_state()["rates"])
        if int(state.get("seed", self.seed)) != self.seed:
            log.warning("data state was saved with seed %s, now %s: the data order changes", state.get("seed"),
                        self.seed)
        self.batches = int(state["batches"])

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()
