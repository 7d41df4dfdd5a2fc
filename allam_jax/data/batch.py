"""The contract between data and trainer: one batch layout, and what every data source and its iterator
provide. The trainer reads only this; a new input pipeline implements it and is set in gin
(``experiment.data``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np

from allam_jax.core.errors import ConfigError

# the trainer's batch: name -> dtype of a [rows, seq_len] array (an objective may add per-row features,
# ``Objective.batch_features``); every data source fills every one of them
BATCH_FEATURES: Mapping[str, Any] = {
    "inputs": np.int32, "targets": np.int32, "segment_ids": np.int32, "positions": np.int32,
    "loss_weights": np.float32, "lang_id": np.int32, "task_id": np.int32,
}


def empty_rows(rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """``rows`` rows of padding in the batch layout (segment 0, weight 0), to be filled in."""
    return {name: np.zeros((rows, seq_len), dtype) for name, dtype in BATCH_FEATURES.items()}


class BatchIterator(Protocol):
    """This process's batches in the layout above, resumable: ``get_state`` is saved with each checkpoint and
    ``set_state`` puts the iterator back there."""

    vocab: Any  # the tokenizer (encode/decode/vocab_size): checked against the model's embedding rows
    languages: Sequence[str]  # names of the ``lang_id`` values, for the per-language losses
    stage: Optional[int]  # the data stage of the last batch (a staged mixture), else None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: Mapping) -> None: ...


@dataclasses.dataclass(frozen=True)
class DataDescription:
    """What a run records and reports of its data source (``run.json``, ``allam data inspect``, the tokenizer a
    checkpoint is decoded with): read through the protocol, never probed."""

    vocabulary: str = "byte"  # 'byte' or a tokenizer file
    mixture: Optional[str] = None  # the mixture's name, or where its tasks are
    rates: Optional[Mapping[str, float]] = None  # None: no mixture rates
    data_shards: Optional[int] = None  # None: the data's position means the same on any process count


class DataSource(Protocol):
    """A gin-configured input pipeline (``data.registry.DATA_SOURCES``): ``batch_size`` is global; each process
    gets its ``batch_size / process_count`` rows."""

    def make_iterator(self, seq_len: int, batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> BatchIterator: ...

    def describe(self) -> DataDescription: ...

    def with_features(self, features: Mapping[str, Any]) -> "DataSource":
        """This source with batches that also carry ``features`` (an objective's per-row inputs, name ->
        dtype; DPO's precomputed ``ref_logp``), or a ConfigError when it cannot fill them."""


class DataSourceDefaults:
    """What most sources share: no per-row inputs beyond the layout (a source inherits it)."""

    def with_features(self, features: Mapping[str, Any]) -> "DataSource":
        if features:
            raise ConfigError(f"{type(self).__name__} cannot fill the batch features {sorted(features)} the objective "
                              "needs: use a data source that carries them (DpoData for a precomputed reference)")
        return self  # type: ignore[return-value]


__all__ = ["BATCH_FEATURES", "BatchIterator", "DataDescription", "DataSource", "DataSourceDefaults", "empty_rows"]
