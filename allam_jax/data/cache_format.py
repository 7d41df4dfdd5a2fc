"""The on-disk form of a cached task (what ``allam data cache`` writes, what ``CachedData`` reads).

seqio's cache layout, so seqio itself can read a task back (``seqio.add_global_cache_dirs``)::

    CACHE_DIR/TASK/COMPLETED                    written last: the task is whole
    CACHE_DIR/TASK/info.train.json              features, shard count, seqio version, our vocabulary fingerprint
    CACHE_DIR/TASK/stats.train.json             examples, tokens, documents read, dropped by reason
    CACHE_DIR/TASK/train.tfrecord-00000-of-00004  tf.train.Example records, ``targets`` = token ids + EOS
    CACHE_DIR/TASK/train.index-00000-of-00004   our addition (npz): byte offset and token count of every record

The index is what makes reading random-access: record ``i`` of a shard is the bytes at ``offsets[i]``, so a
reader starts anywhere without scanning (seqio reads the same files front to back). Every record read checks
its length header and both CRC32C checksums of the TFRecord framing, so a damaged shard is named, not
silently trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
import zipfile
import zlib
from typing import Optional, Sequence

import google_crc32c
import numpy as np

from allam_jax.core.errors import ConfigError, DataError
from allam_jax.core.paths import PathLike, as_path, write_bytes_atomically

SPLIT = "train"
FEATURE = "targets"
_MASK_DELTA = 0xA282EAD8


def shard_name(index: int, count: int, kind: str = "tfrecord") -> str:
    """seqio's shard file names (``train.tfrecord-00000-of-00004``); ``kind="index"`` for our index files."""
    return f"{SPLIT}.{kind}-{index:05d}-of-{count:05d}"


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def example_bytes(tokens: Sequence[int]) -> bytes:
    """One ``tf.train.Example`` with an int64 list ``targets``, serialised (what seqio's cache holds)."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature[FEATURE].int64_list.value.extend(int(t) for t in tokens)
    return ex.SerializeToString()


def frame(record: bytes) -> bytes:
    """TFRecord framing: length, CRC of the length, data, CRC of the data."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def write_shard(path: PathLike, index_path: PathLike, token_lists: Sequence[Sequence[int]]) -> dict:
    """Writes one TFRecord shard and its index (each all-or-nothing); returns the shard's statistics."""
    buf = io.BytesIO()
    offsets = np.zeros(len(token_lists), np.uint64)
    lengths = np.zeros(len(token_lists), np.uint32)
    for i, tokens in enumerate(token_lists):
        offsets[i], lengths[i] = buf.tell(), len(tokens)
        buf.write(frame(example_bytes(tokens)))
    index = io.BytesIO()
    np.savez(index, offsets=offsets, lengths=lengths, size=np.uint64(buf.tell()))
    write_bytes_atomically(path, buf.getvalue())
    write_bytes_atomically(index_path, index.getvalue())
    return {"examples": len(token_lists), "tokens": int(lengths.sum(dtype=np.int64)),
            "max_tokens": int(lengths.max()) if len(lengths) else 0}


def vocabulary_fingerprint(spec: str) -> str:
    """Names the token ids a cache holds: ``byte``, or the SHA-256 of the SentencePiece model's bytes (the
    same model under another path is the same vocabulary; another model under the same path is not)."""
    if spec == "byte":
        return "byte"
    return "sha256:" + hashlib.sha256(as_path(spec).read_bytes()).hexdigest()


def info_json(num_shards: int, vocabulary: str) -> dict:
    import seqio

    return {"num_shards": num_shards, "features": {FEATURE: {"shape": [None], "dtype": "int32"}},
            "seqio_version": seqio.__version__,
            "allam": {"vocabulary": vocabulary, "vocabulary_fingerprint": vocabulary_fingerprint(vocabulary),
                      "eos_appended": True, "index": "npz offsets/lengths per shard"}}


@dataclasses.dataclass(frozen=True)
class CachedTask:
    """A cached task opened for random access: per record its shard, byte offset and token count."""

    name: str
    directory: str
    info: dict
    stats: dict
    shard_files: tuple[str, ...]
    shard_of: np.ndarray  # record -> shard
    offsets: np.ndarray  # record -> byte offset in its shard
    lengths: np.ndarray  # record -> tokens (EOS included)

    @property
    def num_records(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))

    @classmethod
    def open(cls, cache_dir: PathLike, name: str, vocabulary: Optional[str] = None) -> "CachedTask":
        """Opens ``cache_dir/name``; a missing or unfinished task, a cache of another vocabulary than
        ``vocabulary``, or a shard whose size disagrees with its index is a one-line error."""
        directory = as_path(cache_dir) / name
        if not (directory / "COMPLETED").exists():
            what = "is unfinished (no COMPLETED file)" if directory.exists() else "does not exist"
            raise ConfigError(f"task {name} is not cached in {cache_dir}: {directory} {what}; run "
                              "`allam data cache` for it, or remove it from CachedData.rates")
        try:
            info = json.loads((directory / f"info.{SPLIT}.json").read_text())
            stats = json.loads((directory / f"stats.{SPLIT}.json").read_text())
            num_shards = int(info["num_shards"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{directory}: unreadable cache info/stats ({type(e).__name__}: {e})") from None
        cached_vocab = info.get("allam", {}).get("vocabulary_fingerprint")
        if vocabulary is not None and cached_vocab != vocabulary_fingerprint(vocabulary):
            raise ConfigError(f"{directory} was cached with vocabulary {info.get('allam', {}).get('vocabulary')!r} "
                              f"({cached_vocab}), but this run uses {vocabulary!r} "
                              f"({vocabulary_fingerprint(vocabulary)}): re-run `allam data cache` with it")
        files, shard_of, offsets, lengths = [], [], [], []
        for i in range(num_shards):
            path, index_path = directory / shard_name(i, num_shards), directory / shard_name(i, num_shards, "index")
            try:
                with index_path.open("rb") as f:
                    index = np.load(io.BytesIO(f.read()))
                    shard_offsets, shard_lengths, size = index["offsets"], index["lengths"], int(index["size"])
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise DataError(f"{index_path}: missing or corrupt cache index ({type(e).__name__}); re-run "
                                "`allam data cache`") from None
            if not path.exists() or path.stat().length != size:
                actual = path.stat().length if path.exists() else "missing"
                raise DataError(f"{path}: corrupt cache shard (size {actual}, its index says {size} bytes); "
                                "re-run `allam data cache`")
            files.append(str(path))
            shard_of.append(np.full(len(shard_lengths), i, np.int32))
            offsets.append(shard_offsets.astype(np.int64))
            lengths.append(shard_lengths.astype(np.int64))
        lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        if len(lengths_all) == 0 or lengths_all.sum() == 0:
            raise DataError(f"{directory}: the cached task holds no tokens (every document was filtered out?)")
        return cls(name, str(directory), info, stats, tuple(files), np.concatenate(shard_of),
                   np.concatenate(offsets), lengths_all)


class ShardReader:
    """Reads records of one shard through a read-ahead buffer: consecutive records cost one read, not one
    each (what makes reading from ``gs://`` practical)."""

    def __init__(self, path: str, readahead: int = 1 << 20):
        self.path, self.readahead = path, readahead
        self._file = as_path(path).open("rb")
        self._start, self._buf = 0, b""

    def _bytes(self, start: int, size: int) -> bytes:
        end = start + size
        if not (self._start <= start and end <= self._start + len(self._buf)):
            self._file.seek(start)
            self._buf, self._start = self._file.read(max(size, self.readahead)), start
        return self._buf[start - self._start:end - self._start]

    def tokens(self, offset: int, expected: int) -> np.ndarray:
        """The token ids of the record at ``offset``; any damage is a DataError naming the shard."""
        from tensorflow.core.example import example_pb2

        header = self._bytes(offset, 12)
        if len(header) < 12:
            raise DataError(f"{self.path}: corrupt cache shard (truncated at byte {offset}); re-run `allam data cache`")
        (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
        if _masked_crc(header[:8]) != length_crc:
            raise DataError(f"{self.path}: corrupt cache shard (bad record header at byte {offset}); re-run "
                            "`allam data cache`")
        body = self._bytes(offset + 12, length + 4)
        (data_crc,) = struct.unpack("<I", body[-4:]) if len(body) == length + 4 else (None,)
        if data_crc is None or _masked_crc(body[:-4]) != data_crc:
            raise DataError(f"{self.path}: corrupt cache shard (checksum mismatch in the record at byte {offset}); "
                            "re-run `allam data cache`")
        values = example_pb2.Example.FromString(body[:-4]).features.feature[FEATURE].int64_list.value
        if len(values) != expected:
            raise DataError(f"{self.path}: the record at byte {offset} has {len(values)} tokens, its index says "
                            f"{expected}; re-run `allam data cache`")
        return np.asarray(values, np.int32)

    def close(self) -> None:
        self._file.close()
