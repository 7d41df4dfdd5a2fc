"""Vocabularies for the seqio pipeline: the byte vocabulary of the tiny runs, a SentencePiece model or a byte-level
BPE tokenizer.json."""

from __future__ import annotations

import threading
from typing import Any, Optional, Sequence

import numpy as np
import sentencepiece as spm
import seqio
import tensorflow as tf

from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import as_path, is_remote
from allam_jax.data.text_files import BOS_ID, EOS_ID, PAD_ID
from allam_jax.data.text_files import ByteCodec as _PlainBytes
from allam_jax.tokenizer.interface import ByteLevelBPETokenizer
from allam_jax.tokenizer.spm_io import TokenizerError

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
        from seqio.vocabularies import _ModelContext

        with self._lock:
            if self._sentencepiece_model_file not in self._loaded:
                sp_model = as_path(self._sentencepiece_model_file).read_bytes()
                tokenizer = spm.SentencePieceProcessor()
                tokenizer.LoadFromSerializedProto(sp_model)
                self._loaded[self._sentencepiece_model_file] = _ModelContext(tokenizer=tokenizer, sp_model=sp_model)
            self._model = self._loaded[self._sentencepiece_model_file]
        return self._model


class ByteLevelBPEVocabulary(seqio.Vocabulary):
    """A byte-level BPE ``tokenizer.json`` (Llama-3.x, Qwen2.5, Qwen3, ``tokenizer train --kind bpe``) as a seqio
    vocabulary. Hugging Face tokenizers has no TensorFlow op, so tf.data calls it through ``tf.numpy_function``
    (on the host, like SentencePiece's op)."""

    def __init__(self, path: str):
        super().__init__(extra_ids=0)

        self.path = path
        self.tokenizer = ByteLevelBPETokenizer(path)
        if self.tokenizer.eos_id is None:
            raise ConfigError(f"{path}: no end-of-text token found (none of the usual names among its special tokens); "
                              "put the family's tokenizer_config.json beside it to name eos_token")

    @property
    def bos_id(self) -> Optional[int]:
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> Optional[int]:
        return self.tokenizer.eos_id

    @property
    def unk_id(self) -> Optional[int]:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _encode(self, s: str) -> Sequence[int]:
        return self.tokenizer.encode(s)

    def _decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def encode(x: bytes):
            return np.asarray(self.tokenizer.encode(x.decode("utf-8")), np.int32)

        if s.shape.rank != 0:
            return tf.map_fn(self._encode_tf, s, fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))
        ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode(x):
            return self.tokenizer.decode([int(i) for i in x]).encode("utf-8")

        text = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        text.set_shape([])
        return text

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteLevelBPEVocabulary) and other.path == self.path

    def __hash__(self) -> int:
        return hash(("allam-bpe", self.path))


def stored_offset(vocab: seqio.Vocabulary) -> int:
    """What token ids are stored as between the tasks and the packer: seqio's packer cuts zeros away as padding,
    so a vocabulary whose id 0 is text (byte-level BPE: '!' in Llama-3 and Qwen) has its ids stored +1 there, and
    unshifted after packing. SentencePiece (0 = <unk>) and byte vocabularies store ids as they are."""
    return 1 if isinstance(vocab, ByteLevelBPEVocabulary) and vocab.tokenizer.is_normal(0) else 0


def get_vocabulary(spec: str) -> seqio.Vocabulary:
    """``"byte"``, the path of a SentencePiece ``.model`` or of a byte-level BPE ``tokenizer.json`` (local or
    ``gs://``)."""
    if spec == "byte":
        return ByteVocabulary()
    if not as_path(spec).exists():
        raise ConfigError(f"vocabulary file not found: {spec} (use 'byte', a SentencePiece .model or a "
                          "tokenizer.json path)")
    if as_path(spec).suffix == ".json":
        try:
            return ByteLevelBPEVocabulary(spec)
        except TokenizerError as e:
            raise ConfigError(str(e)) from None
    if as_path(spec).suffix != ".model":
        raise ConfigError(f"vocabulary must be 'byte', a SentencePiece .model or a tokenizer.json file, got {spec}")
    vocab = SentencePieceVocabulary(spec if is_remote(spec) else str(as_path(spec)))
    try:
        vocab.vocab_size  # noqa: B018 - loads the model now, so a corrupt file is named here, not deep in tf.data
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError, sentencepiece's RuntimeError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{spec}: not a readable SentencePiece model ({first})") from None
    return vocab


def describe_vocab(vocab: Any) -> str:
    """How a user named this tokenizer: its SentencePiece model or tokenizer.json file, or ``byte``."""
    return str(getattr(vocab, "sentencepiece_model_file", None) or getattr(vocab, "path", None) or "byte")


def check_fits_model(vocab: seqio.Vocabulary, model_vocab_size: int, name: str = "the tokenizer") -> None:
    """A tokenizer with more ids than the model has embedding rows gives ids with no row: training diverges
    (NaN), decoding prints garbage, scores are NaN. Stop with one line instead."""
    n = int(vocab.vocab_size)
    if n > model_vocab_size:
        raise ConfigError(f"{name} has {n:,} ids but the model has ModelConfig.vocab_size={model_vocab_size:,} "
                          "embedding rows; use the tokenizer the model was trained with, or grow the model to it "
                          "(allam expand-checkpoint)")
