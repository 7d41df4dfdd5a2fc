"""Reading and writing SentencePiece model protobufs with one-line errors."""

from __future__ import annotations


import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from allam_jax.core.errors import TokenizerError
from allam_jax.core.paths import as_path, write_bytes_atomically

ModelProto = spm_pb2.ModelProto
Piece = spm_pb2.ModelProto.SentencePiece


def load_proto(path: str) -> ModelProto:
    p = as_path(path)
    if not p.is_file():
        raise TokenizerError(f"tokenizer not found: {path}")
    proto = ModelProto()
    try:
        proto.ParseFromString(p.read_bytes())
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise TokenizerError(f"{path} is not a SentencePiece model (protobuf parse failed)") from None
    if not proto.pieces:
        raise TokenizerError(f"{path} is not a SentencePiece model (it has no pieces)")
    return proto


def load_processor(path: str) -> spm.SentencePieceProcessor:
    proto = load_proto(path)
    return processor_from_proto(proto)


def processor_from_proto(proto: ModelProto) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


def write_proto_atomically(proto: ModelProto, out: str) -> None:
    """Writes next to the target then renames: a crash never leaves half a model."""
    write_bytes_atomically(out, proto.SerializeToString())
