"""A Hugging Face ``tokenizer.json`` of the Llama family (BPE on '▁'-escaped text with byte fallback, as
transformers converts SentencePiece models) back to a SentencePiece model, so the vocabulary-expansion
commands (merge, fertility, expand-checkpoint) work from a model that ships only ``tokenizer.json``.

SentencePiece's BPE merges the adjacent pair whose concatenation has the highest score; Hugging Face's
applies the lowest-ranked merge. transformers writes the merges in the order of the merged pieces' scores,
so each piece's score is minus the rank of the first merge that makes it: the two encoders then agree.
Characters no merge makes score below every merged piece; specials and byte pieces keep their ids.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from allam_jax.core.errors import TokenizerError
from allam_jax.core.paths import as_path
from allam_jax.tokenizer.spm_io import ModelProto, Piece

_BYTE = re.compile(r"^<0x[0-9A-F]{2}>$")
_SPACE = "\u2581"


def load_hf_json(path: str) -> dict:
    p = as_path(path)
    if not p.is_file():
        raise TokenizerError(f"tokenizer.json not found: {path}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} is not a tokenizer.json ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError(f"{path} is not a tokenizer.json (no 'model' object)")
    return data


def merge_pair(merge: Any, where: str) -> tuple[str, str]:
    if isinstance(merge, str) and merge.count(" ") == 1:
        a, b = merge.split(" ")
        return a, b
    if isinstance(merge, (list, tuple)) and len(merge) == 2 and all(isinstance(x, str) for x in merge):
        return merge[0], merge[1]
    raise TokenizerError(f"{where}: model.merges has {merge!r}; expected 'a b' or [a, b]")


def added_tokens(data: dict, where: str) -> list[dict]:
    """``added_tokens``, checked: a list of objects, each with a string ``content``."""
    tokens = data.get("added_tokens") or []
    if not isinstance(tokens, list):
        raise TokenizerError(f"{where}: added_tokens must be a list of objects, got {type(tokens).__name__}")
    for i, token in enumerate(tokens):
        if not isinstance(token, dict) or not isinstance(token.get("content"), str):
            raise TokenizerError(f"{where}: added_tokens[{i}] must be an object with a string 'content' (and 'id'), "
                                 f"got {json.dumps(token)[:80]}")
    return tokens


def _adds_dummy_prefix(data: dict) -> bool:
    """Llama-2-era files prepend '▁' in the normalizer; older and newer ones in a Metaspace pre-tokenizer."""
    def steps(node: Any) -> list:
        if not isinstance(node, dict):
            return []
        if node.get("type") == "Sequence":
            return [s for child in node.get("normalizers", node.get("pretokenizers", [])) for s in steps(child)]
        return [node]

    for step in steps(data.get("normalizer")):
        if step.get("type") == "Prepend" and step.get("prepend") == _SPACE:
            return True
    for step in steps(data.get("pre_tokenizer")):
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
            return scheme != "never"
    return False


def proto_from_hf_json(data: dict, where: str = "tokenizer.json") -> ModelProto:
    """The SentencePiece model that encodes as ``data`` (a parsed ``tokenizer.json``) does."""
    model = data["model"]
    if model.get("type") != "BPE":
        raise TokenizerError(f"{where}: model.type is {model.get('type')!r}; only BPE tokenizers converted from "
                             "SentencePiece (Llama, Mistral) can be turned back into a SentencePiece model")
    if is_byte_level(data) or _mentions(data.get("decoder"), "ByteLevel"):  # some files name it only there
        raise TokenizerError(f"{where}: a byte-level BPE (Llama-3, Qwen, GPT-2 style) has no SentencePiece twin; use "
                             "the tokenizer.json itself (allam tokenizer merge/fertility, SeqioData.vocabulary)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError(f"{where}: model.vocab is missing or empty")
    by_id: dict[int, str] = {}
    for piece, i in vocab.items():
        if not isinstance(i, int) or i < 0 or i in by_id:
            raise TokenizerError(f"{where}: model.vocab gives {piece!r} the id {i!r} (ids must be distinct, >= 0)")
        by_id[i] = piece
    n = len(by_id)
    if max(by_id) != n - 1:
        raise TokenizerError(f"{where}: model.vocab ids are not 0..{n - 1} (largest {max(by_id)})")

    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise TokenizerError(f"{where}: model.merges must be a list of 'a b' or [a, b], got {type(merges).__name__}")
    first_rank: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        a, b = merge_pair(merge, where)
        first_rank.setdefault(a + b, rank)
    specials = {t["content"] for t in added_tokens(data, where) if t.get("special")}
    unk = model.get("unk_token") or ("<unk>" if "<unk>" in specials else None)  # transformers 5 leaves it unset
    if unk is None or unk not in vocab:
        raise TokenizerError(f"{where}: model.unk_token {unk!r} is not in model.vocab; SentencePiece needs an "
                             "unknown piece")

    proto = ModelProto()
    floor = -float(len(first_rank) + 1)
    for i in range(n):
        piece = by_id[i]
        p = proto.pieces.add()
        p.piece = piece
        if piece == unk:
            p.type, p.score = Piece.UNKNOWN, 0.0
        elif piece in specials:
            p.type, p.score = Piece.CONTROL, 0.0
        elif model.get("byte_fallback") and _BYTE.match(piece):
            p.type, p.score = Piece.BYTE, 0.0
        elif piece in first_rank:
            p.type, p.score = Piece.NORMAL, -float(first_rank[piece])
        else:
            p.type, p.score = Piece.NORMAL, floor - i

    t = proto.trainer_spec
    t.model_type = t.BPE
    t.vocab_size = n
    t.byte_fallback = bool(model.get("byte_fallback"))
    t.unk_piece = unk
    t.unk_id = vocab[unk]
    for field, piece in (("bos", "<s>"), ("eos", "</s>")):
        setattr(t, f"{field}_id", vocab[piece] if piece in specials and piece in vocab else -1)
        if piece in vocab:
            setattr(t, f"{field}_piece", piece)
    t.pad_id = -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = _adds_dummy_prefix(data)
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto


def _mentions(node: Any, kind: str) -> bool:
    """Whether a tokenizer.json component (or a Sequence of them) has a step of ``type`` ``kind``."""
    if isinstance(node, dict):
        return node.get("type") == kind or any(_mentions(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, kind) for v in node)
    return False


def is_byte_level(data: dict) -> bool:
    """Whether a ``tokenizer.json`` splits text into GPT-2's byte alphabet (a ByteLevel pre-tokenizer)."""
    return _mentions(data.get("pre_tokenizer"), "ByteLevel")


def convert_hf_json(path: str) -> ModelProto:
    return proto_from_hf_json(load_hf_json(path), path)


def hf_json_from_pieces(vocab: Sequence[str], merges: Sequence[tuple[str, str]]) -> dict:
    """A Llama-2-style ``tokenizer.json`` from a vocabulary in id order and merges in rank order (how some
    packages ship Llama's tokenizer without its ``tokenizer.model``)."""
    specials = [{"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                 "special": True} for i, p in enumerate(vocab) if p in ("<unk>", "<s>", "</s>")]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": _SPACE},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": _SPACE}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": _SPACE}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                  "vocab": {p: i for i, p in enumerate(vocab)}, "merges": [f"{a} {b}" for a, b in merges]},
    }
