"""Vocabularies for the seqio pipeline: the byte vocabulary of the tiny runs, or a SentencePiece model."""

from __future__ import annotations

import threading
from typing import Any, Optional, Sequence

import seqio
import tensorflow as tf

from allam_jax.data.text_files import BOS_ID, EOS_ID, PAD_ID
from allam_jax.data.text_files import ByteCodec as _PlainBytes
from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import as_path, is_remote

try:  # tf.data runs on the host; a TF that also claimed the GPU would fight JAX for its memory
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # devices already initialised by the caller: leave them as they are
    pass


class ByteVocabulary(seqio.Vocabulary):
    """UTF-8 bytes + 3 with pad 0, bos 1, eos 2: the same ids as ``text_files.ByteCodec``.

    (``seqio.ByteVocabulary`` puts EOS at 1 and has no BOS; decoder-only training wants both.)
    """

    def __init__(self):
        super().__init__(extra_ids=0)
        self._plain = _PlainBytes()

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> Optional[int]:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return 259

    def _encode(self, s: str) -> Sequence[int]:
        return self._plain.encode(s)

    def _decode(self, ids) -> str:
        return self._plain.decode(int(i) for i in ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.io.decode_raw(s, tf.uint8), tf.int32) + 3

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        table = tf.constant([bytes([b]) for b in range(256)])
        return tf.strings.reduce_join(tf.gather(table, tf.boolean_mask(ids, ids >= 3) - 3), axis=-1)

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteVocabulary)

    def __hash__(self) -> int:
        return hash("allam-bytes")


def bos_id(vocab: seqio.Vocabulary) -> int:
    """BOS of a vocabulary: its own, or EOS when it has none (as many decoder-only recipes do)."""
    bos = getattr(vocab, "bos_id", None)
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        bos = vocab.tokenizer.bos_id()
    return int(bos) if bos is not None and bos >= 0 else int(vocab.eos_id)


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """seqio's SentencePiece vocabulary, its model file read through ``etils.epath`` (as every file of the
    project is) instead of ``tf.io.gfile``: one storage client for every path, local or ``gs://``."""

    _lock = threading.Lock()
    _loaded: dict[str, object] = {}

    def _model_context(self):
        if self._model:
            return self._model
        if self._extra_ids or self._normalizer_spec_overrides:  # seqio's own loader handles those
            return super()._model_context()
        import sentencepiece as spm
        from seqio.vocabularies import _ModelContext

        with self._lock:
            if self._sentencepiece_model_file not in self._loaded:
                sp_model = as_path(self._sentencepiece_model_file).read_bytes()
                tokenizer = spm.SentencePieceProcessor()
                tokenizer.LoadFromSerializedProto(sp_model)
                self._loaded[self._sentencepiece_model_file] = _ModelContext(tokenizer=tokenizer, sp_model=sp_model)
            self._model = self._loaded[self._sentencepiece_model_file]
        return self._model


def get_vocabulary(spec: str) -> seqio.Vocabulary:
    """``"byte"`` or the path of a SentencePiece ``.model`` (local or ``gs://``)."""
    if spec == "byte":
        return ByteVocabulary()
    if not as_path(spec).exists():
        raise ConfigError(f"vocabulary file not found: {spec} (use 'byte' or a SentencePiece .model path)")
    if as_path(spec).suffix != ".model":
        raise ConfigError(f"vocabulary must be 'byte' or a SentencePiece .model file, got {spec}")
    vocab = SentencePieceVocabulary(spec if is_remote(spec) else str(as_path(spec)))
    try:
        vocab.vocab_size  # noqa: B018 - loads the model now, so a corrupt file is named here, not deep in tf.data
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError, sentencepiece's RuntimeError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{spec}: not a readable SentencePiece model ({first})") from None
    return vocab


def describe_vocab(vocab: Any) -> str:
    """How a user named this tokenizer: its SentencePiece model file, or ``byte``."""
    return str(getattr(vocab, "sentencepiece_model_file", None) or "byte")


def check_fits_model(vocab: seqio.Vocabulary, model_vocab_size: int, name: str = "the tokenizer") -> None:
    """A tokenizer with more ids than the model has embedding rows gives ids with no row: training diverges
    (NaN), decoding prints garbage, scores are NaN. Stop with one line instead."""
    n = int(vocab.vocab_size)
    if n > model_vocab_size:
        raise ConfigError(f"{name} has {n:,} ids but the model has ModelConfig.vocab_size={model_vocab_size:,} "
                          "embedding rows; use the tokenizer the model was trained with, or grow the model to it "
                          "(allam expand-checkpoint)")
