"""Merge learned Arabic pieces into a base SentencePiece BPE model, keeping every base id."""

from __future__ import annotations

import dataclasses
from typing import Optional

from allam_jax.data.normalize import has_arabic
from allam_jax.tokenizer import charsmap
from allam_jax.tokenizer.spm_io import ModelProto, Piece, TokenizerError, load_proto, write_proto_atomically

BPE = 2  # TrainerSpec.ModelType.BPE


@dataclasses.dataclass
class MergeReport:
    base_size: int
    added: int
    skipped_existing: int
    skipped_other_script: int
    padding: int
    merged_size: int
    normalization: str = "base"


def merge_protos(base: ModelProto, add: ModelProto, pad_to_multiple: int = 128, arabic_only: bool = True,
                 max_new: Optional[int] = None) -> tuple[ModelProto, MergeReport]:
    """Appends ``add``'s normal pieces missing from ``base``; returns the merged proto and counts.

    Ids: every base piece keeps its id, score and type (special and byte-fallback pieces included);
    new pieces follow in ``add``'s order, then ``<unused_N>`` pieces (type UNUSED, never produced by
    encoding) pad the size to a multiple of ``pad_to_multiple``.

    Scores: SentencePiece's BPE encoder repeatedly merges the adjacent pair whose concatenation is a
    piece with the highest score. New pieces get scores *above* every base piece, in ``add``'s order,
    so Arabic text is segmented by the learned Arabic merges rather than by whatever Arabic fragments
    the base happened to have. English is untouched because, with ``arabic_only``, a new piece always
    contains an Arabic letter and so can never match text without one: English encodes to the same
    ids with the merged model as with the base.

    ``max_new`` keeps the first that many new pieces: unpadded, such a merge is a prefix of every larger one (the
    same ids, the same order of scores), the vocabulary of one stage of a progressive expansion.
    """
    if base.trainer_spec.model_type != BPE:
        raise TokenizerError("the base tokenizer is not a BPE model; only BPE bases (Llama-style) are supported")
    merged = ModelProto()
    merged.CopyFrom(base)
    existing = {p.piece for p in base.pieces}
    top = max((p.score for p in base.pieces if p.type == Piece.NORMAL), default=0.0)
    new = []
    skipped_existing = skipped_script = 0
    for p in add.pieces:
        if p.type != Piece.NORMAL:
            continue
        if p.piece in existing:
            skipped_existing += 1
        elif arabic_only and not has_arabic(p.piece):
            skipped_script += 1
        elif max_new is not None and len(new) >= max_new:
            break
        else:
            new.append(p.piece)
            existing.add(p.piece)
    for rank, text in enumerate(new):
        merged.pieces.append(Piece(piece=text, score=top + float(len(new) - rank), type=Piece.NORMAL))
    padding = 0
    while pad_to_multiple > 1 and len(merged.pieces) % pad_to_multiple:
        name = f"<unused_{padding}>"
        while name in existing:
            name = "<" + name + ">"
        merged.pieces.append(Piece(piece=name, score=0.0, type=Piece.UNUSED))
        padding += 1
    merged.trainer_spec.vocab_size = len(merged.pieces)
    report = MergeReport(len(base.pieces), len(new), skipped_existing, skipped_script, padding, len(merged.pieces))
    return merged, report


def merge_tokenizers(base_path: str, add_path: str, out_path: str, pad_to_multiple: int = 128,
                     arabic_only: bool = True, normalization: str = "nfc_tatweel",
                     max_new: Optional[int] = None) -> MergeReport:
    """Writes the merged model with normalisation ``normalization`` compiled in (:mod:`.charsmap`)."""
    merged, report = merge_protos(load_proto(base_path), load_proto(add_path), pad_to_multiple, arabic_only,
                                  max_new)
    charsmap.apply(merged, normalization)
    write_proto_atomically(merged, out_path)
    return dataclasses.replace(report, normalization=normalization)


def check_extends(base: ModelProto, merged: ModelProto, base_name: str, merged_name: str) -> None:
    """Raises unless ``merged`` starts with exactly ``base``'s pieces, in order."""
    if len(merged.pieces) < len(base.pieces):
        raise TokenizerError(f"{merged_name} has {len(merged.pieces)} pieces, fewer than {base_name}'s {len(base.pieces)}")
    for i, (b, m) in enumerate(zip(base.pieces, merged.pieces)):
        if b.piece != m.piece or b.type != m.type:
            raise TokenizerError(
                f"{merged_name} does not begin with {base_name}'s pieces: id {i} is {m.piece!r}, expected {b.piece!r}"
            )
