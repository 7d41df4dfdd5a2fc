"""Fertility (tokens per word) and related compression numbers per tokenizer and language."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Optional, Sequence

from allam_jax.data.language import guess_language
from allam_jax.data.text_files import read_documents
from allam_jax.core.paths import as_path
from allam_jax.data.normalize import ARABIC_DIACRITICS, ARABIC_LETTER, normalize_text
from allam_jax.tokenizer.interface import Tokenizer, load_tokenizer


def fertility_of(tok: Tokenizer, texts: Iterable[str]) -> dict[str, float]:
    """Tokens per word and friends; ``byte_fallback_rate`` counts pieces of less than a character (SentencePiece's
    byte fallback, a byte-level BPE's partial UTF-8 sequences)."""
    words = chars = nbytes = tokens = unknown = byte_tokens = 0
    unk = tok.unk_id
    is_byte: dict[int, bool] = {}
    for text in texts:
        ids = tok.encode(text)
        words += len(text.split())
        chars += len(text)
        nbytes += len(text.encode("utf-8"))
        tokens += len(ids)
        unknown += sum(1 for i in ids if i == unk)
        byte_tokens += sum(1 for i in ids if is_byte.setdefault(i, tok.is_byte(i)))
    tokens = max(tokens, 1)
    return {
        "words": words,
        "tokens": tokens,
        "tokens_per_word": tokens / max(words, 1),
        "chars_per_token": chars / tokens,
        "bytes_per_token": nbytes / tokens,
        "unknown_rate": unknown / tokens,
        "byte_fallback_rate": byte_tokens / tokens,
    }


DIACRITISED_SHARE = 0.1  # an Arabic document whose marks are over 10% of its Arabic characters is "diacritised"


def arabic_register(text: str) -> str:
    """``diacritised`` (vowelled, as Quranic, classical and educational text is written) or ``undiacritised``
    (as modern text is): the share of diacritics among the document's Arabic characters."""
    marks = len(ARABIC_DIACRITICS.findall(text))
    letters = len(ARABIC_LETTER.findall(text))
    return "diacritised" if letters and marks / letters > DIACRITISED_SHARE else "undiacritised"


def labelled(text_files: Sequence[str]) -> list[tuple[Optional[str], str]]:
    """``LABEL=FILE`` names a register for a file's documents (``modern=news.txt``); a plain path has none."""
    out = []
    for arg in text_files:
        label, _, path = arg.partition("=")
        if path and re.fullmatch(r"[A-Za-z_][\w-]*", label) and not as_path(arg).exists():
            out.append((label, path))
        else:
            out.append((None, arg))
    return out


def fertility_table(models: Sequence[str], text_files: Sequence[str], normalize: bool = True) -> list[dict]:
    """Rows per (model, language, register): ``all`` of a language's documents (each language guessed from its
    script), Arabic split into ``diacritised`` and ``undiacritised`` documents, and each labelled file's
    documents under its label (``modern=FILE``)."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for label, path in labelled(text_files):
        for text, lang in read_documents(path):
            text = normalize_text(text) if normalize else text
            lang = lang or guess_language(text)
            groups[(lang, "all")].append(text)
            if lang == "ar":
                groups[(lang, arabic_register(text))].append(text)
            if label:
                groups[(lang, label)].append(text)
    order = sorted(groups, key=lambda k: (k[0], k[1] != "all", k[1]))
    rows = []
    for model in models:
        tok = load_tokenizer(model)
        for lang, register in order:
            rows.append({"model": model, "language": lang, "register": register, "vocab_size": tok.vocab_size,
                         **fertility_of(tok, groups[(lang, register)])})
    return rows


def format_table(rows: list[dict]) -> str:
    cols = [("model", "model", "{}"), ("lang", "language", "{}"), ("register", "register", "{}"),
            ("vocab", "vocab_size", "{:,}"),
            ("words", "words", "{:,}"), ("tok/word", "tokens_per_word", "{:.3f}"),
            ("chars/tok", "chars_per_token", "{:.3f}"), ("bytes/tok", "bytes_per_token", "{:.3f}"),
            ("unk", "unknown_rate", "{:.4%}"), ("bytefb", "byte_fallback_rate", "{:.2%}")]
    cells = [[fmt.format(r[key]) for _, key, fmt in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (h, _, _) in enumerate(cols)]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, ((h, _, _), w) in enumerate(zip(cols, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return "\n".join(lines)
