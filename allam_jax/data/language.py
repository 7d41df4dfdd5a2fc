"""Which language a text is in, from its script (Arabic letters vs the rest): enough to tag documents."""

from __future__ import annotations

import unicodedata


def arabic_fraction(text: str) -> float:
    letters = [c for c in text if unicodedata.category(c).startswith("L")]
    if not letters:
        return 0.0
    return sum("\u0600" <= c <= "\u06ff" or "\u0750" <= c <= "\u077f" for c in letters) / len(letters)


def guess_language(text: str) -> str:
    """'ar' when most letters are Arabic script, else 'en'."""
    return "ar" if arabic_fraction(text) > 0.5 else "en"
