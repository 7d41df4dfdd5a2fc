"""Fertility (tokens per word) and related compression numbers per tokenizer and language."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import sentencepiece as spm

from allam_jax.data.language import guess_language
from allam_jax.data.text_files import read_documents
from allam_jax.data.normalize import normalize_text
from allam_jax.tokenizer.spm_io import load_processor


def fertility_of(sp: spm.SentencePieceProcessor, texts: Iterable[str]) -> dict[str, float]:
    words = chars = nbytes = tokens = unknown = byte_tokens = 0
    unk = sp.unk_id()
    for text in texts:
        ids = sp.encode(text)
        words += len(text.split())
        chars += len(text)
        nbytes += len(text.encode("utf-8"))
        tokens += len(ids)
        unknown += sum(1 for i in ids if i == unk)
        byte_tokens += sum(1 for i in ids if sp.is_byte(i))
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


def fertility_table(models: Sequence[str], text_files: Sequence[str], normalize: bool = True) -> list[dict]:
    """One row per (model, language); each document's language is guessed from its script."""
    by_lang: dict[str, list[str]] = defaultdict(list)
    for path in text_files:
        for text, lang in read_documents(path):
            by_lang[lang or guess_language(text)].append(normalize_text(text) if normalize else text)
    rows = []
    for model in models:
        sp = load_processor(model)
        for lang in sorted(by_lang):
            rows.append({"model": model, "language": lang, "vocab_size": sp.get_piece_size(),
                         **fertility_of(sp, by_lang[lang])})
    return rows


def format_table(rows: list[dict]) -> str:
    cols = [("model", "model", "{}"), ("lang", "language", "{}"), ("vocab", "vocab_size", "{:,}"),
            ("words", "words", "{:,}"), ("tok/word", "tokens_per_word", "{:.3f}"),
            ("chars/tok", "chars_per_token", "{:.3f}"), ("bytes/tok", "bytes_per_token", "{:.3f}"),
            ("unk", "unknown_rate", "{:.4%}"), ("bytefb", "byte_fallback_rate", "{:.2%}")]
    cells = [[fmt.format(r[key]) for _, key, fmt in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (h, _, _) in enumerate(cols)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, ((h, _, _), w) in enumerate(zip(cols, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return "\n".join(lines)
