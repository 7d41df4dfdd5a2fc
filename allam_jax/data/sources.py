"""Documents from text-line, JSONL and TFDS sources, cleaned in Python, served as a seqio ``DataSource``.

Reading happens in Python (not in TF ops) so that every problem can name its file and line, bad lines
can be skipped and counted, and exact de-duplication can keep a set of hashes. Paths go through
``etils.epath`` (:mod:`allam_jax.core.paths`), so ``gs://`` patterns work as local ones do.

A source string is one of::

    path/or/glob*.txt          one document per non-empty line
    path/or/glob*.jsonl        one JSON object per line; FIELD (default ``text``) holds the document
    tfds:NAME[/CONFIG][:VERSION]@SPLIT#FIELD   a TFDS dataset (prepared in TFDS_DATA_DIR)

Parallel sources yield ``{"en": ..., "ar": ...}`` objects; see :class:`ParallelRendering`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
from typing import Iterator, Optional, Sequence

import seqio
import tensorflow as tf

from allam_jax.core import paths
from allam_jax.data.language import arabic_fraction
from allam_jax.core.errors import ConfigError, DataError
from allam_jax.data.normalize import normalize_text

log = logging.getLogger(__name__)


_OUR_MESSAGE = re.compile(r"(?:DataError|ConfigError|TokenizerError): (.*?)(?:\n|$)")


def our_message(wrapped: str) -> Optional[str]:
    """The one-line message of our error inside another error's text (a tf.data or Beam worker traceback)."""
    found = _OUR_MESSAGE.search(wrapped)
    return found.group(1) if found else None


@contextlib.contextmanager
def tf_data_errors() -> Iterator[None]:
    """Our ``FILE:LINE: reason`` errors raised inside a tf.data generator reach the caller as TensorFlow
    ``OpError``s wrapped in a long traceback; this turns them back into one-line ``DataError``s."""
    try:
        yield
    except tf.errors.OpError as e:
        raise DataError(our_message(str(e)) or str(e).strip().splitlines()[0]) from None


@dataclasses.dataclass(frozen=True)
class CleaningConfig:
    """Normalisation and filters applied to every document before tokenisation (gin: ``CleaningConfig``).

    ``script``: ``"ar"`` keeps documents whose letters are at least ``min_script_ratio`` Arabic,
    ``"en"`` those at most ``1 - min_script_ratio`` Arabic, ``None`` keeps all.
    ``on_error``: ``"skip"`` drops malformed lines and counts them (logged per pass), ``"fatal"`` stops
    with the file and line.
    """

    normalize: bool = True
    remove_tatweel: bool = True
    strip_diacritics: bool = False
    min_chars: int = 1
    max_chars: int = 1_000_000
    min_script_ratio: float = 0.5
    dedup: bool = True
    on_error: str = "skip"

    def __post_init__(self):
        if self.on_error not in ("skip", "fatal"):
            raise ConfigError(f"CleaningConfig.on_error must be 'skip' or 'fatal', got {self.on_error!r}")
        if not 0.0 <= self.min_script_ratio <= 1.0:
            raise ConfigError(f"CleaningConfig.min_script_ratio must be in [0, 1], got {self.min_script_ratio}")


@dataclasses.dataclass
class SourceStats:
    documents: int = 0
    malformed: int = 0
    filtered: int = 0
    duplicates: int = 0


def expand_patterns(patterns: Sequence[str]) -> list[str]:
    """Globs each pattern (tfds: specs pass through); a pattern matching nothing is an error."""
    if isinstance(patterns, str):
        raise ConfigError(f"expected a list of paths, got the single string {patterns!r}")
    files: list[str] = []
    for pattern in patterns:
        if pattern.startswith("tfds:"):
            files.append(pattern)
            continue
        matched = paths.glob(pattern)
        if not matched:
            raise DataError(f"data file not found: {pattern}")
        files.extend(matched)
    if not files:
        raise ConfigError("no data files given")
    return files


def read_records(path: str, cfg: CleaningConfig, stats: SourceStats) -> Iterator[tuple[int, object]]:
    """``(line, record)`` with record a str (.txt) or a parsed JSON value (.jsonl); bad lines skipped/raised."""
    if path.startswith("tfds:"):
        yield from _tfds_records(path)
        return
    is_jsonl = path.endswith((".jsonl", ".json"))
    with paths.as_path(path).open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
                if not line:
                    continue
                yield line_no, (json.loads(line) if is_jsonl else line)
            except UnicodeDecodeError as e:
                _bad(cfg, stats, f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start})")
            except json.JSONDecodeError as e:
                _bad(cfg, stats, f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})")


def _tfds_records(spec: str) -> Iterator[tuple[int, object]]:
    import tensorflow_datasets as tfds

    body = spec[len("tfds:"):]
    body, _, field = body.partition("#")
    name, _, split = body.partition("@")
    ds = tfds.load(name, split=split or "train", shuffle_files=False)
    for i, ex in enumerate(tfds.as_numpy(ds), 1):
        record = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in ex.items()}
        if field:
            record = record.get(field)  # the named field is the document (CorpusPaths.text_field is for JSONL)
        yield i, record


_ALREADY_SAID: set[str] = set()  # the data is re-read every epoch, per task and per measurement: say things once


def _say_once(message: str) -> None:
    if message not in _ALREADY_SAID:
        _ALREADY_SAID.add(message)
        log.warning("%s", message)


def _bad(cfg: CleaningConfig, stats: SourceStats, message: str) -> None:
    if cfg.on_error == "fatal":
        raise DataError(message)
    stats.malformed += 1
    if stats.malformed <= 5:
        _say_once(f"skipping {message}")


def record_field(record: object, field: str, where: str, cfg: CleaningConfig, stats: SourceStats) -> Optional[str]:
    if isinstance(record, str):
        return record
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, str):
        _bad(cfg, stats, f"{where}: expected an object with a string field {field!r}")
        return None
    return value


def clean_text(text: str, cfg: CleaningConfig) -> str:
    """The normalisation every document gets (whitespace folded on one-line documents)."""
    if cfg.normalize:
        text = normalize_text(text, remove_tatweel=cfg.remove_tatweel, strip_diacritics=cfg.strip_diacritics)
    return " ".join(text.split()) if "\n" not in text else text.strip()


def record_text(record: object, where: str, cfg: CleaningConfig, stats: SourceStats,
                parallel: Optional["ParallelRendering"], field: str, style_index: int) -> Optional[str]:
    """The cleaned document of one record (a parallel pair rendered in style ``style_index``), or None when
    the record is malformed (counted in ``stats``, or raised with ``on_error='fatal'``)."""
    if parallel is not None:
        en = record_field(record, "en", where, cfg, stats)
        ar = record_field(record, "ar", where, cfg, stats) if en is not None else None
        if en is None or ar is None:
            return None
        return parallel.render(style_index, clean_text(en, cfg), clean_text(ar, cfg))
    raw = record_field(record, field, where, cfg, stats)
    return None if raw is None else clean_text(raw, cfg)


def document_digest(text: str) -> bytes:
    """The exact-dedup key of a cleaned document."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def drop_reason(text: str, script: Optional[str], cfg: CleaningConfig) -> Optional[str]:
    """Why a cleaned document is filtered out (``"length"`` or ``"script"``), or None to keep it."""
    if not cfg.min_chars <= len(text) <= cfg.max_chars:
        return "length"
    if script == "ar" and arabic_fraction(text) < cfg.min_script_ratio:
        return "script"
    if script == "en" and arabic_fraction(text) > 1.0 - cfg.min_script_ratio:
        return "script"
    return None


@dataclasses.dataclass(frozen=True)
class ParallelRendering:
    """How an ``{"en", "ar"}`` pair becomes training text. Pair ``i`` uses ``styles[i % len(styles)]``, so
    every style gets an equal share and no pair is repeated."""

    styles: Sequence[str] = ("arabic", "interleaved", "en_to_ar", "ar_to_en")
    interleaved: str = "{en}\n{ar}"
    en_to_ar: str = "Translate into Arabic: {en}\nالترجمة: {ar}"
    ar_to_en: str = "ترجم إلى الإنجليزية: {ar}\nTranslation: {en}"

    def __post_init__(self):
        bad = [s for s in self.styles if s not in ("arabic", "english", "interleaved", "en_to_ar", "ar_to_en")]
        if bad or not self.styles:
            raise ConfigError(f"ParallelRendering.styles: unknown style(s) {bad}; use arabic, english, interleaved, "
                              "en_to_ar, ar_to_en")

    def render(self, index: int, en: str, ar: str) -> str:
        style = self.styles[index % len(self.styles)]
        if style == "arabic":
            return ar
        if style == "english":
            return en
        return getattr(self, style).format(en=en, ar=ar)


def iter_documents(files: Sequence[str], script: Optional[str], cfg: CleaningConfig,
                   parallel: Optional[ParallelRendering] = None, field: str = "text",
                   shard: tuple[int, int] = (0, 1), stats: Optional[SourceStats] = None) -> Iterator[str]:
    """Cleaned, filtered, de-duplicated documents of ``files``; with ``shard=(i, n)`` only every n-th kept
    document (offset i) when there are fewer files than shards, else every n-th file."""
    stats = stats if stats is not None else SourceStats()
    index, count = shard
    by_file = len(files) >= count
    files = list(files)[index::count] if by_file else list(files)
    seen: set[bytes] = set()
    kept = 0
    for path in files:
        for line_no, record in read_records(path, cfg, stats):
            text = record_text(record, f"{path}:{line_no}", cfg, stats, parallel, field, kept)
            if text is None:
                continue
            if drop_reason(text, script if parallel is None else None, cfg):
                stats.filtered += 1
                continue
            if cfg.dedup:
                digest = document_digest(text)
                if digest in seen:
                    stats.duplicates += 1
                    continue
                seen.add(digest)
            kept += 1
            if not by_file and (kept - 1) % count != index:
                continue
            stats.documents += 1
            yield text
    if stats.malformed:
        _say_once(f"{stats.malformed} malformed line(s) skipped in {', '.join(files)}")


class TrainSource(seqio.DataSource):
    """A train-only seqio ``DataSource`` whose dataset comes from ``make((shard_index, num_shards))``; it
    shards itself, so seqio hands it the shard instead of sharding its output."""

    def __init__(self, make, shards: Sequence[str]):
        self._make, self._shards = make, list(shards)
        super().__init__(splits=("train",), num_input_examples=None, caching_permitted=False)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return list(self._shards)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, **unused) -> tf.data.Dataset:
        if split != "train":
            raise ConfigError(f"{self._shards}: only the 'train' split exists, asked for {split!r}")
        return self._make((shard_info.index, shard_info.num_shards) if shard_info else (0, 1))


class DocumentSource(TrainSource):
    """A seqio ``DataSource`` (split ``train``) of ``{"text": document}`` from :func:`iter_documents`."""

    def __init__(self, patterns: Sequence[str], script: Optional[str], cleaning: CleaningConfig,
                 parallel: Optional[ParallelRendering] = None, field: str = "text"):
        self._files = expand_patterns(patterns)
        for path in self._files:
            if not path.startswith("tfds:") and paths.as_path(path).stat().length == 0:
                raise DataError(f"data file is empty: {path}")
        self._script, self._cleaning, self._parallel, self._field = script, cleaning, parallel, field
        super().__init__(lambda shard: tf.data.Dataset.from_generator(
            lambda: ({"text": t} for t in self.documents(shard)),
            output_signature={"text": tf.TensorSpec([], tf.string)}), self._files)

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def documents(self, shard: tuple[int, int] = (0, 1), stats: Optional[SourceStats] = None) -> Iterator[str]:
        return iter_documents(self._files, self._script, self._cleaning, self._parallel, self._field, shard, stats)


__all__ = [
    "CleaningConfig", "DataError", "DocumentSource", "ParallelRendering", "SourceStats", "TrainSource",
    "clean_text", "document_digest", "drop_reason", "expand_patterns", "iter_documents", "our_message", "read_records",
    "record_field", "record_text",
]
