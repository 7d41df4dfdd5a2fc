"""Text normalisation shared by tokenizer training and the data pipeline."""

from __future__ import annotations

import re
import unicodedata

TATWEEL = "\u0640"
# Harakat (fathatan .. sukun, maddah, hamza marks, ...) and the superscript alef.
ARABIC_DIACRITICS = re.compile("[\u064b-\u065f\u0670]")
ARABIC_LETTER = re.compile("[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff]")


def normalize_text(text: str, remove_tatweel: bool = True, strip_diacritics: bool = False) -> str:
    """Optional tatweel (kashida) removal, then NFC, then optional diacritic stripping. Diacritics are kept by
    default: they carry meaning in Quranic and educational text, and a tokenizer that never saw them splits them
    badly. Tatweel goes first so that marks it separated are put in canonical order too."""
    if remove_tatweel:
        text = text.replace(TATWEEL, "")
    text = unicodedata.normalize("NFC", text)
    if strip_diacritics:
        text = ARABIC_DIACRITICS.sub("", text)
    return text


def has_arabic(text: str) -> bool:
    return ARABIC_LETTER.search(text) is not None
