"""The project's text normalisation compiled into a SentencePiece model, so it travels with the tokenizer.

Training text goes through ``data.normalize.normalize_text`` (NFC, tatweel removed) before it is tokenized; an
evaluation file, a prompt typed into ``allam chat`` or another library loading the ``.model`` did not, and a
decomposed hamza or a kashida then splits into other pieces than the model trained on. SentencePiece applies a
model's own normalisation (its ``precompiled_charsmap``) inside every encoder: its Python binding, TF-Text (and
so seqio) and C++. ``allam tokenizer merge`` therefore writes the rules into the merged model: every canonical
composition (a base character and one combining mark become the precomposed character, as NFC does) and tatweel
deleted, optionally Arabic diacritics deleted too. SentencePiece's own trainer compiles them (from a rule TSV),
and ``normalizer_spec.name`` records which rules they are.
"""

from __future__ import annotations

import functools
import tempfile
import unicodedata
from pathlib import Path

import sentencepiece as spm

from allam_jax.data.normalize import ARABIC_DIACRITICS, TATWEEL
from allam_jax.tokenizer import NORMALIZATIONS  # "base": keep the base model's own
from allam_jax.tokenizer.spm_io import ModelProto, TokenizerError


def _rules(strip_diacritics: bool) -> list[tuple[str, str]]:
    def hexes(text: str) -> str:
        return " ".join(f"{ord(c):04X}" for c in text)

    rules = [(hexes(TATWEEL), "")]
    for cp in range(0x80, 0x30000):
        char = chr(cp)
        parts = unicodedata.normalize("NFD", char)
        if len(parts) == 2 and unicodedata.normalize("NFC", parts) == char:
            rules.append((hexes(parts), hexes(char)))
    rules += [(hexes(run), hexes(nfc)) for run, nfc in _unordered_mark_runs()]
    if strip_diacritics:
        marks = [chr(cp) for cp in range(0x0600, 0x0700) if ARABIC_DIACRITICS.fullmatch(chr(cp))]
        rules += [(hexes(m), "") for m in marks]
    return rules


ARABIC_MARKS = [chr(cp) for cp in (*range(0x0610, 0x061B), *range(0x064B, 0x0660), 0x0670, *range(0x06D6, 0x06EE),
                                   *range(0x08D3, 0x0900)) if unicodedata.combining(chr(cp))]
_HARAKAT = [m for m in ARABIC_MARKS if "\u064b" <= m <= "\u065f" or m == "\u0670"]


def _unordered_mark_runs() -> list[tuple[str, str]]:
    """(run, its NFC) for the runs of Arabic combining marks NFC reorders (shadda + fatha -> fatha + shadda:
    canonical order is by combining class), with the letter they may compose with. SentencePiece's charsmap
    replaces the longest matching string, so each run is a rule of its own: any two marks; any three harakat; a
    letter that composes with a mark (alef, waw, yeh, heh) followed by two marks, one of them a composing one;
    and those with a tatweel before the marks (removed, as cleaning removes it before NFC). Not covered: four marks
    or more in a row, and a letter's marks continued after a tatweel that carries marks of its own."""
    pairs = {a + b for a in ARABIC_MARKS for b in ARABIC_MARKS}
    runs = pairs | {a + b + c for a in _HARAKAT for b in _HARAKAT for c in _HARAKAT}
    decomposed = [d for d in (unicodedata.normalize("NFD", chr(cp)) for cp in range(0x0600, 0x0700)) if len(d) == 2]
    composing = sorted({d[0] for d in decomposed})  # alef, waw, yeh, heh
    joining = {d[1] for d in decomposed}  # madda, hamza above and below
    rules = {r: unicodedata.normalize("NFC", r) for r in runs if unicodedata.normalize("NFC", r) != r}
    for base in composing:  # only where the letter composes: a longer rule through it would hide the marks' own
        for run in (a + b for a in ARABIC_MARKS for b in ARABIC_MARKS if a in joining or b in joining):
            if unicodedata.normalize("NFC", base + run) != base + unicodedata.normalize("NFC", run):
                rules[base + run] = unicodedata.normalize("NFC", base + run)
    rules |= {TATWEEL + r: unicodedata.normalize("NFC", r) for r in pairs if unicodedata.normalize("NFC", r) != r}
    rules |= {base + TATWEEL + m: unicodedata.normalize("NFC", base + m) for base in composing for m in ARABIC_MARKS
              if unicodedata.normalize("NFC", base + m) != base + m}
    return sorted(rules.items())


@functools.lru_cache(maxsize=None)
def compiled(name: str) -> bytes:
    """The ``precompiled_charsmap`` of rule set ``name``, built by SentencePiece's trainer from a rule TSV."""
    if name not in NORMALIZATIONS or name == "base":
        raise TokenizerError(f"normalization must be one of {NORMALIZATIONS}, got {name!r}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "rules.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in _rules(name.endswith("nodiacritics"))))
        (d / "text.txt").write_text("abc\n" * 20)
        spm.SentencePieceTrainer.train(input=str(d / "text.txt"), model_prefix=str(d / "m"), vocab_size=8,
                                       model_type="char", normalization_rule_tsv=str(d / "rules.tsv"),
                                       minloglevel=2)
        proto = ModelProto()
        proto.ParseFromString((d / "m.model").read_bytes())
    return proto.normalizer_spec.precompiled_charsmap


def apply(proto: ModelProto, name: str) -> None:
    """Gives ``proto`` rule set ``name`` (``base``: leaves its own normalisation as it is)."""
    if name == "base":
        return
    proto.normalizer_spec.precompiled_charsmap = compiled(name)
    proto.normalizer_spec.name = f"allam_{name}"


__all__ = ["NORMALIZATIONS", "apply", "compiled"]
