"""A deterministic, resumable packed-batch iterator over plain-text and JSONL files (``TextFileData``).

Why a second packer beside seqio's: this one needs no TensorFlow and no registered tasks, so tests, the
multi-process and preemption checks and byte-level smoke runs start in a second; the seqio mixture
(``data/pipeline.py``) is the real input path and plugs in through the same ``BatchIterator`` protocol (``data/batch.py``)
(``__next__``, ``get_state``, ``set_state``). ``ByteCodec`` is its tokenizer: the same ids as seqio's
``vocabularies.ByteVocabulary``, without seqio.

Batch layout (every array ``[batch, seq_len]``)::

    inputs        token ids the model reads (BOS + document, shifted right)
    targets       token ids it predicts (document + EOS)
    segment_ids   1, 2, ... per packed document, 0 on padding
    positions     position within the document
    loss_weights  1.0 on real targets, 0.0 on padding
    lang_id       index into ``languages`` of each token's document
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Iterable, Optional, Sequence

import numpy as np

from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import as_path
from allam_jax.data.batch import DataDescription, DataSourceDefaults, empty_rows
from allam_jax.data.language import guess_language

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2



log = logging.getLogger(__name__)

class ByteCodec:
    """UTF-8 bytes shifted by 3 (pad 0, bos 1, eos 2): needs no trained model, covers every script."""

    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="replace")  # ids past 258 pad the vocab




def read_documents(path: str) -> list[tuple[str, Optional[str]]]:
    """Reads ``(text, lang or None)`` documents: one per non-empty line of .txt, one per JSONL object."""
    p = as_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    docs: list[tuple[str, Optional[str]]] = []
    is_jsonl = p.suffix in (".jsonl", ".json")
    with p.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            line = line.strip()
            if not line:
                continue
            if is_jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{line_no}: malformed JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise ConfigError(f"{path}:{line_no}: expected an object with a string field 'text'")
                docs.append((obj["text"], obj.get("lang")))
            else:
                docs.append((line, None))
    if not docs:
        raise ConfigError(f"data file has no documents: {path}")
    return docs


def first_bytes(documents: Iterable[str], max_bytes: int) -> list[str]:
    """The leading documents up to ``max_bytes`` UTF-8 bytes in all, the last one cut at a word: a held-out
    sample of a fixed size, whatever the documents' lengths."""
    docs, used = [], 0
    for doc in documents:
        size = len(doc.encode("utf-8"))
        if used + size > max_bytes:
            cut = doc.encode("utf-8")[: max_bytes - used].decode("utf-8", "ignore").rsplit(" ", 1)[0]
            if cut.strip():
                docs.append(cut)
            break
        docs.append(doc)
        used += size
    return docs


@dataclasses.dataclass(frozen=True)
class TextFileData(DataSourceDefaults):
    """Files to train on, the packing length and the language list (gin-configurable)."""

    paths: Sequence[str] = ()
    languages: Sequence[str] = ("en", "ar")
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.paths, str):
            raise ConfigError("TextFileData.paths must be a list of paths, got a single string")

    def describe(self) -> DataDescription:
        return DataDescription(vocabulary="byte")

    def make_iterator(
        self, seq_len: int, batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> "PackedTextIterator":
        if not self.paths:
            raise ConfigError("TextFileData.paths is empty: set it in gin or with --gin_bindings")
        return PackedTextIterator(
            self.paths, seq_len, batch_size, list(self.languages), self.seed, process_index, process_count
        )


def pack_documents(token_docs: Sequence[tuple[list[int], int]], seq_len: int) -> dict[str, np.ndarray]:
    """Greedy packing in order: each document (truncated into ``seq_len`` chunks) goes in the current row
    if it fits, otherwise starts a new row. Returns arrays of shape [rows, seq_len]."""
    rows: list[list[tuple[list[int], list[int], int]]] = [[]]
    used = 0
    for tokens, lang in token_docs:
        full = [BOS_ID] + tokens + [EOS_ID]
        for start in range(0, len(full) - 1, seq_len):
            chunk = full[start : start + seq_len + 1]
            inputs, targets = chunk[:-1], chunk[1:]
            if used + len(inputs) > seq_len:
                rows.append([])
                used = 0
            rows[-1].append((inputs, targets, lang))
            used += len(inputs)
    out = empty_rows(len(rows), seq_len)
    for r, row in enumerate(rows):
        col = 0
        for seg, (inputs, targets, lang) in enumerate(row, 1):
            sl = slice(col, col + len(inputs))
            out["inputs"][r, sl] = inputs
            out["targets"][r, sl] = targets
            out["segment_ids"][r, sl] = seg
            out["positions"][r, sl] = np.arange(len(inputs))
            out["lang_id"][r, sl] = lang
            out["loss_weights"][r, sl] = 1.0
            col += len(inputs)
    return out


REPEAT_WARNING_STEPS = 10  # data that repeats within this many steps is worth a warning


class PackedTextIterator:
    """Packs shuffled documents into rows; epoch ``e`` uses the permutation seeded by ``(seed, e)``.

    The position is ``(epoch, row)``, so ``set_state`` resumes at exactly the next batch. With several
    processes each one takes its contiguous block of rows of each global batch.
    """

    def __init__(
        self,
        paths: Sequence[str],
        seq_len: int,
        batch_size: int,
        languages: list[str],
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size % process_count:
            raise ConfigError(f"batch size {batch_size} is not divisible by the process count {process_count}")
        self.vocab = ByteCodec()
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.process_index, self.process_count = process_index, process_count
        self.languages = languages
        self.stage = None
        self._docs: list[tuple[list[int], int]] = []
        for path in paths:
            for text, lang in read_documents(path):
                lang = lang or guess_language(text)
                if lang not in languages:
                    raise ConfigError(f"{path}: language {lang!r} is not in TextFileData.languages {languages}")
                self._docs.append((self.vocab.encode(text), languages.index(lang)))
        self.epoch, self.row = 0, 0
        self._rows = self._pack_epoch(0)
        steps_per_epoch = self.rows_per_epoch / batch_size
        if steps_per_epoch < REPEAT_WARNING_STEPS and process_index == 0:
            log.warning("TextFileData: %s pack into %d row(s) of %d tokens, %.2f steps' worth at batch size %d: "
                        "the data repeats %.1f times every %d steps; add data, or expect the model to memorise it",
                        ", ".join(map(str, paths)), self.rows_per_epoch, seq_len, steps_per_epoch, batch_size,
                        REPEAT_WARNING_STEPS / steps_per_epoch, REPEAT_WARNING_STEPS)

    def _pack_epoch(self, epoch: int) -> dict[str, np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self._docs))
        return pack_documents([self._docs[i] for i in order], self.seq_len)

    @property
    def rows_per_epoch(self) -> int:
        return len(self._rows["inputs"])

    def get_state(self) -> dict:
        return {"epoch": int(self.epoch), "row": int(self.row)}

    def set_state(self, state: dict) -> None:
        if state["epoch"] != self.epoch:
            self._rows = self._pack_epoch(state["epoch"])
        self.epoch, self.row = int(state["epoch"]), int(state["row"])

    def __iter__(self) -> "PackedTextIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """Returns this process's slice of the next global batch; rows wrap into the next epoch."""
        picked: list[dict[str, np.ndarray]] = []
        for _ in range(self.batch_size):
            if self.row >= self.rows_per_epoch:
                self.epoch, self.row = self.epoch + 1, 0
                self._rows = self._pack_epoch(self.epoch)
            picked.append({k: v[self.row] for k, v in self._rows.items()})
            self.row += 1
        per = self.batch_size // self.process_count
        mine = picked[self.process_index * per : (self.process_index + 1) * per]
        return {k: np.stack([p[k] for p in mine]) for k in picked[0]}
