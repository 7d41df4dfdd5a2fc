"""One tokenizer interface for the two kinds a base model brings: SentencePiece ``.model`` (Llama-2, Mistral,
the recipe's default) and byte-level BPE ``tokenizer.json`` (Llama-3.x, Qwen2.5, Qwen3). Fertility, embedding
surgery and the merge checks are written once against it.
"""

from __future__ import annotations

import abc
import json
from typing import Optional, Sequence

from allam_jax.core.paths import as_path
from allam_jax.tokenizer import bpe
from allam_jax.tokenizer.merge import check_extends
from allam_jax.tokenizer.spm_io import ModelProto, Piece, TokenizerError, load_proto, processor_from_proto


class Tokenizer(abc.ABC):
    """Encode/decode without specials, the pieces by id, and how this tokenizer spells another one's piece."""

    kind: str
    path: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def bos_id(self) -> Optional[int]: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> Optional[int]: ...

    @property
    def unk_id(self) -> Optional[int]:
        return None

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abc.abstractmethod
    def id_to_piece(self, i: int) -> str: ...

    @abc.abstractmethod
    def is_normal(self, i: int) -> bool:
        """Whether text can encode to ``i`` (not a control, special or padding entry)."""

    @abc.abstractmethod
    def is_byte(self, i: int) -> bool:
        """Whether ``i`` stands for less than a character: a byte-fallback piece, or a partial UTF-8 sequence."""

    @abc.abstractmethod
    def split_surface(self, piece: str) -> list[int]:
        """This tokenizer's ids for the text of a piece written in its own alphabet (``▁`` for a space in
        SentencePiece, GPT-2's byte characters in byte-level BPE): how the base model spelled a new piece."""

    @abc.abstractmethod
    def check_extends(self, base: "Tokenizer") -> None:
        """Raises unless every id of ``base`` means the same piece here."""


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, proto: ModelProto, path: str = "<proto>"):
        self.proto, self.path = proto, path
        self.sp = processor_from_proto(proto)
        self._split = None

    @property
    def vocab_size(self) -> int:
        return len(self.proto.pieces)

    @property
    def bos_id(self) -> Optional[int]:
        return self.sp.bos_id() if self.sp.bos_id() >= 0 else None

    @property
    def eos_id(self) -> Optional[int]:
        return self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    @property
    def unk_id(self) -> Optional[int]:
        return self.sp.unk_id() if self.sp.unk_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.proto.pieces[i].piece

    def is_normal(self, i: int) -> bool:
        return self.proto.pieces[i].type == Piece.NORMAL

    def is_byte(self, i: int) -> bool:
        return self.sp.is_byte(i)

    def split_surface(self, piece: str) -> list[int]:
        if self._split is None:  # no dummy prefix, whitespace kept: the piece's text exactly
            proto = ModelProto()
            proto.CopyFrom(self.proto)
            proto.normalizer_spec.add_dummy_prefix = False
            proto.normalizer_spec.remove_extra_whitespaces = False
            self._split = processor_from_proto(proto)
        return self._split.encode(piece.replace("\u2581", " "))

    def check_extends(self, base: Tokenizer) -> None:
        if not isinstance(base, SentencePieceTokenizer):
            raise TokenizerError(f"{self.path} is a SentencePiece model but the base {base.path} is a {base.kind} "
                                 "tokenizer: merge with a base of the same kind")
        check_extends(base.proto, self.proto, base.path, self.path)


class ByteLevelBPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, path: str):
        self.path = path
        self.data = bpe.read_json(path)
        self.tok = bpe.load(path, self.data)
        config_path = as_path(path).parent / "tokenizer_config.json"
        config = None
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise TokenizerError(f"{config_path}: malformed JSON ({e})") from None
        self._bos, self._eos = bpe.special_ids(self.data, config if isinstance(config, dict) else None)
        self._size = bpe.vocab_size_of(self.data)
        self._special = {t["id"] for t in self.data.get("added_tokens", []) if t.get("special")}

    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def bos_id(self) -> Optional[int]:
        return self._bos

    @property
    def eos_id(self) -> Optional[int]:
        return self._eos

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        return self.tok.id_to_token(i) or ""

    def is_normal(self, i: int) -> bool:
        return i not in self._special and self.tok.id_to_token(i) is not None

    def is_byte(self, i: int) -> bool:
        raw = bpe.piece_bytes(self.id_to_piece(i))
        if raw is None:
            return False
        try:
            raw.decode("utf-8")
            return False
        except UnicodeDecodeError:
            return True

    def split_surface(self, piece: str) -> list[int]:
        return [t.id for t in self.tok.model.tokenize(piece)]

    def check_extends(self, base: Tokenizer) -> None:
        if not isinstance(base, ByteLevelBPETokenizer):
            raise TokenizerError(f"{self.path} is a byte-level BPE tokenizer.json but the base {base.path} is a "
                                 f"{base.kind} model: merge with a base of the same kind")
        bpe.check_extends_bpe(base.data, self.data, base.path, self.path)


def is_bpe_path(path: str) -> bool:
    return str(path).endswith(".json")


def load_tokenizer(path: str) -> Tokenizer:
    """A ``tokenizer.json`` (byte-level BPE) or a SentencePiece ``.model``, local or ``gs://``."""
    if is_bpe_path(path):
        return ByteLevelBPETokenizer(path)
    return SentencePieceTokenizer(load_proto(path), path)


def as_tokenizer(x) -> Tokenizer:
    """A Tokenizer from a Tokenizer, a SentencePiece ModelProto or a path."""
    if isinstance(x, Tokenizer):
        return x
    if isinstance(x, ModelProto):
        return SentencePieceTokenizer(x)
    return load_tokenizer(str(x))
