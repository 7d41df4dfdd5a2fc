"""Byte-level BPE tokenizers (Hugging Face ``tokenizer.json``: Llama-3.x, Qwen2.5, Qwen3, GPT-2 style): read,
train Arabic merges with a base's own pre-tokenizer, and merge them into the base keeping every base id.

SentencePiece cannot read these files (they are merge lists over a byte alphabet, with a regex pre-tokenizer), so
this module uses Hugging Face ``tokenizers``, the library that defines the format.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Iterator, Optional, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from allam_jax.core.paths import write_text_atomically
from allam_jax.data.normalize import normalize_text
from allam_jax.data.text_files import read_documents
from allam_jax.tokenizer.from_hf import added_tokens, is_byte_level, load_hf_json, merge_pair
from allam_jax.tokenizer.merge import MergeReport
from allam_jax.tokenizer.spm_io import TokenizerError
from allam_jax.tokenizer.train import input_files

# Llama-3's pre-tokenizer regex (tokenizer.json of Meta-Llama-3.x): contractions, letters, 1-3 digits, punctuation,
# newlines, spaces. The English base of the recipe and a `train --kind bpe` without --base use it.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ("<|pad|>", "<|begin_of_text|>", "<|end_of_text|>")  # ids 0, 1, 2 of a tokenizer trained from scratch
_EOS_NAMES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<|im_end|>", "<eos>")
ARABIC_LEAD_BYTES = frozenset(range(0xD8, 0xDC))  # UTF-8 lead bytes of U+0600-U+06FF, the Arabic block


def _byte_maps() -> tuple[dict[int, str], dict[str, int]]:
    """GPT-2's byte <-> printable character table, which every byte-level BPE vocabulary is written in."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    to_char = {b: chr(c) for b, c in zip(keep, chars)}
    return to_char, {c: b for b, c in to_char.items()}


BYTE_TO_CHAR, CHAR_TO_BYTE = _byte_maps()


def piece_bytes(piece: str) -> Optional[bytes]:
    """The bytes a byte-level piece stands for (None: not written in the byte alphabet, e.g. a special token)."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in piece)
    except KeyError:
        return None


def is_arabic_piece(piece: str) -> bool:
    """Whether a byte-level piece holds (part of) an Arabic-block character: such a piece, and any merge making
    it, can only occur in text with Arabic in it."""
    raw = piece_bytes(piece)
    return raw is not None and any(b in ARABIC_LEAD_BYTES for b in raw)


def read_json(path: str) -> dict:
    """A byte-level BPE ``tokenizer.json`` as a dict; another model type or a SentencePiece-style BPE is refused."""
    data = load_hf_json(path)
    model = data["model"]
    kind = model.get("type", "BPE")
    if kind != "BPE":
        raise TokenizerError(f"{path}: model type {kind} is not supported (byte-level BPE only; SentencePiece models "
                             "are read as .model files)")
    if not is_byte_level(data):
        raise TokenizerError(f"{path}: a BPE without a ByteLevel pre-tokenizer (SentencePiece-style, byte fallback); "
                             "convert it with `allam tokenizer from-hf` and use the .model")
    if not isinstance(model.get("merges", []), list) or not isinstance(model.get("vocab", {}), dict):
        raise TokenizerError(f"{path}: model.merges must be a list and model.vocab an object")
    added_tokens(data, path)  # each an object with a string 'content'
    return data


def _merges(model: dict) -> list[tuple[str, str]]:
    """Merges as pairs: tokenizers >= 0.20 writes ``[a, b]``, older files ``"a b"``."""
    return [merge_pair(m, "tokenizer.json") for m in model.get("merges", [])]


def load(path: str, data: Optional[dict] = None):
    """A ``tokenizers.Tokenizer`` for a byte-level BPE ``tokenizer.json`` (checked first, one line if not);
    ``data``: the file as :func:`read_json` already read it."""
    data = read_json(path) if data is None else data
    try:
        return Tokenizer.from_str(json.dumps(data))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception subclass with the serde message
        raise TokenizerError(f"{path}: Hugging Face tokenizers cannot load it ({str(e)[:160]})") from None


def special_ids(data: dict, config: Optional[dict] = None) -> tuple[Optional[int], Optional[int]]:
    """(bos, eos) ids: from ``tokenizer_config.json`` when given, else BOS from the post-processor's template and
    EOS from the usual names of the added special tokens."""
    added = {t["content"]: t["id"] for t in data.get("added_tokens", []) if isinstance(t, dict) and "content" in t}
    vocab = data["model"].get("vocab", {})

    def token_id(name) -> Optional[int]:
        if isinstance(name, dict):
            name = name.get("content")
        return added.get(name, vocab.get(name)) if isinstance(name, str) else None

    if config:
        return token_id(config.get("bos_token")), token_id(config.get("eos_token"))
    bos = None
    post = data.get("post_processor") or {}
    for proc in post.get("processors", [post]):
        single = proc.get("single") if isinstance(proc, dict) else None
        if single and "SpecialToken" in single[0]:
            bos = token_id(single[0]["SpecialToken"]["id"])
    eos = next((added[n] for n in _EOS_NAMES if n in added), None)
    return bos, eos


# ---------------------------------------------------------------- training


def new_tokenizer(base: Optional[str] = None):
    """An empty byte-level BPE with ``base``'s normaliser, pre-tokenizer and decoder, or Llama-3's."""
    tok = Tokenizer(models.BPE(ignore_merges=True))
    if base is not None:
        b = load(base)
        tok.normalizer, tok.pre_tokenizer, tok.decoder = b.normalizer, b.pre_tokenizer, b.decoder
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(documents: Iterable[str], vocab_size: int, out: str, base: Optional[str] = None,
              progress: bool = False) -> dict:
    """Learns ``vocab_size`` byte-level pieces (the 256 bytes included) from ``documents``. Without ``base`` the
    result is a base tokenizer of its own: specials <|pad|>, <|begin_of_text|>, <|end_of_text|> at ids 0-2 and
    a BOS template; with ``base``, pieces to merge into it (no specials), split by the base's own pre-tokenizer."""
    if vocab_size < 256 + len(SPECIALS) + 1:
        raise TokenizerError(f"--vocab_size {vocab_size} is too small: the byte alphabet alone is 256 pieces")
    tok = new_tokenizer(base)
    specials = [] if base is not None else list(SPECIALS)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=progress,
                                  initial_alphabet=sorted(BYTE_TO_CHAR.values()))
    seen = [0]

    def counted() -> Iterator[str]:
        for doc in documents:
            seen[0] += 1
            yield doc

    tok.train_from_iterator(counted(), trainer)
    if seen[0] == 0:
        raise TokenizerError("no text to train on: the file(s) are empty or every line is blank")
    if base is None:
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", 1)])
    write_text_atomically(out, tok.to_str(pretty=False))
    return {"documents": seen[0], "vocab_size": tok.get_vocab_size(with_added_tokens=True), "out": out}


# ---------------------------------------------------------------- merging


@dataclasses.dataclass
class BpeMergeReport(MergeReport):
    merges_added: int = 0  # the merges ranked before the base's that the base did not have


def vocab_size_of(data: dict) -> int:
    """One past the largest id of the model's vocabulary and the added tokens."""
    ids = list(data["model"].get("vocab", {}).values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


def merge_data(base: dict, add: dict, pad_to_multiple: int = 128, arabic_only: bool = True,
               max_new: Optional[int] = None) -> tuple[dict, BpeMergeReport]:
    """``base`` with ``add``'s pieces appended: every base id, piece and merge kept; new pieces take the ids after
    the base's largest (its added tokens included), in ``add``'s order; unused special tokens pad the size.

    Ranks: ``add``'s merges that make Arabic pieces go *before* the base's merges (the byte-level twin of giving
    new SentencePiece pieces the top scores), so Arabic words are built by the merges learned on Arabic rather
    than by the base's Arabic fragments. Each such merge makes a piece with an Arabic-block byte, so it can only
    fire inside text with Arabic in it: English encodes to the base's ids, byte for byte. ``max_new`` keeps the
    first that many new pieces in the order they were learned (e.g. exactly 16K from a larger Arabic BPE, since
    part of what it learns the base already has). A merge is kept only
    when both its halves are pieces of the merged vocabulary (HF requires it); with ``arabic_only`` off, pieces
    without Arabic are added too (and may change how other text splits)."""
    merged = json.loads(json.dumps(base))
    vocab: dict[str, int] = merged["model"]["vocab"]
    base_merges = _merges(base["model"])
    base_pairs = set(base_merges)
    next_id = vocab_size_of(base)
    first_new = next_id
    existing = skipped_script = 0
    priority: list[tuple[str, str]] = []
    for a, b in _merges(add["model"]):
        piece = a + b
        if a not in vocab or b not in vocab:
            continue
        if arabic_only and not is_arabic_piece(piece):
            if piece not in vocab:
                skipped_script += 1
            continue
        if piece in vocab:
            existing += piece in base["model"]["vocab"]
        elif max_new is not None and next_id - first_new >= max_new:
            continue  # the first max_new new pieces in the learned order; later merges need only those
        else:
            vocab[piece] = next_id
            next_id += 1
        priority.append((a, b))
    kept = set(priority)
    merged["model"]["merges"] = [list(m) for m in priority] + [list(m) for m in base_merges if m not in kept]
    padding = 0
    taken = set(vocab) | {t["content"] for t in merged.get("added_tokens", [])}
    while pad_to_multiple > 1 and next_id % pad_to_multiple:
        name = f"<|allam_unused_{padding}|>"
        while name in taken:
            name = "<" + name + ">"
        merged.setdefault("added_tokens", []).append({"id": next_id, "content": name, "single_word": False,
                                                     "lstrip": False, "rstrip": False, "normalized": False,
                                                     "special": True})
        next_id += 1
        padding += 1
    # Hugging Face gives an added token that is not in the model's vocabulary the next free id *at load time*,
    # whatever id the file says: with new pieces after them, Llama-3's specials (128000-128255) would move. In the
    # vocabulary too, each keeps its id (the added-token matcher still splits them out of text first).
    for t in merged.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    report = BpeMergeReport(base_size=first_new, added=next_id - first_new - padding,
                            skipped_existing=existing, skipped_other_script=skipped_script, padding=padding,
                            merged_size=next_id, merges_added=len([m for m in priority if m not in base_pairs]))
    return merged, report


def merge_bpe(base_path: str, add_path: str, out_path: str, pad_to_multiple: int = 128,
              arabic_only: bool = True, max_new: Optional[int] = None) -> BpeMergeReport:
    """Writes the merged ``tokenizer.json`` (checked to load in Hugging Face tokenizers first)."""
    merged, report = merge_data(read_json(base_path), read_json(add_path), pad_to_multiple, arabic_only, max_new)
    text = json.dumps(merged, ensure_ascii=False)
    Tokenizer.from_str(text)  # a merge HF cannot load is a bug here, not a file to leave behind
    write_text_atomically(out_path, text)
    return report


def check_extends_bpe(base: dict, merged: dict, base_name: str, merged_name: str) -> None:
    """Raises unless every base piece and added token has its base id in ``merged``."""
    mv = merged["model"].get("vocab", {})
    for piece, i in base["model"].get("vocab", {}).items():
        if mv.get(piece) != i:
            raise TokenizerError(f"{merged_name} does not extend {base_name}: piece {piece!r} has id {mv.get(piece)}, "
                                 f"expected {i}")
    madded = {t["content"]: t["id"] for t in merged.get("added_tokens", [])}
    for t in base.get("added_tokens", []):
        if madded.get(t["content"]) != t["id"]:
            raise TokenizerError(f"{merged_name} does not extend {base_name}: token {t['content']!r} has id "
                                 f"{madded.get(t['content'])}, expected {t['id']}")


def iter_documents(patterns: Sequence[str], remove_tatweel: bool = True, strip_diacritics: bool = False,
                   max_documents: Optional[int] = None) -> Iterator[str]:
    """The first ``max_documents`` documents of text files, cleaned as for SentencePiece training."""
    n = 0
    for path in input_files(patterns):
        for text, _ in read_documents(path):
            text = normalize_text(text, remove_tatweel, strip_diacritics)
            if text.strip():
                if max_documents is not None and n >= max_documents:
                    return
                n += 1
                yield text
