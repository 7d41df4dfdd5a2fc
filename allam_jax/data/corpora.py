"""Real text that every install can produce locally, with no download at run time.

Sources (licences in the README):
- English: docstrings of the Python standard library installed with the interpreter (PSF licence).
- Arabic and English-Arabic pairs: the Arabic gettext catalogs (``.mo``) that Debian packages install
  under ``/usr/share/locale/ar/LC_MESSAGES`` (each package's own licence, GPL/LGPL mostly).

``allam data prepare --out DIR`` writes ``en.txt``, ``ar.txt`` (one document per line),
``parallel.jsonl`` (``{"en": ..., "ar": ...}``) and ``sources.json`` (counts per source).
"""

from __future__ import annotations

import gettext
import glob
import importlib
import json
import pkgutil
import re
import sys
import warnings
from pathlib import Path
from typing import Iterator

from allam_jax.data.text_files import arabic_fraction

DEFAULT_LOCALE_DIRS = ("/usr/share/locale/ar/LC_MESSAGES", "/usr/share/locale-langpack/ar/LC_MESSAGES")
_SKIP_MODULES = ("antigravity", "this", "idlelib", "tkinter", "turtle", "test", "lib2to3", "ensurepip", "pydoc_data")


def python_docstring_paragraphs(min_words: int = 8) -> Iterator[str]:
    """English paragraphs from the docstrings of the standard library's modules, classes and functions."""
    seen: set[str] = set()
    names = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.startswith(sys.base_prefix))
    names = [n for n in names if not n.startswith("_") and n not in _SKIP_MODULES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - optional stdlib modules may be missing on a given build
                continue
            objects = [module] + [getattr(module, a, None) for a in sorted(vars(module)) if not a.startswith("_")]
            for obj in objects:
                doc = getattr(obj, "__doc__", None)
                if not isinstance(doc, str):
                    continue
                for para in re.split(r"\n\s*\n", doc):
                    text = " ".join(para.split())
                    if len(text.split()) >= min_words and text not in seen and arabic_fraction(text) == 0.0:
                        seen.add(text)
                        yield text


def gettext_pairs(locale_dirs=DEFAULT_LOCALE_DIRS) -> Iterator[tuple[str, str, str]]:
    """``(english, arabic, catalog)`` message pairs from Arabic gettext catalogs."""
    seen: set[tuple[str, str]] = set()
    for directory in locale_dirs:
        for path in sorted(glob.glob(f"{directory}/*.mo")):
            try:
                with open(path, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 - the only public view of all pairs
            except (OSError, gettext.error) as e:
                warnings.warn(f"skipping unreadable catalog {path}: {e}")
                continue
            for key, value in catalog.items():
                if not isinstance(key, str) or not isinstance(value, str) or not key:
                    continue
                en = " ".join(key.split("\x04")[-1].replace("_", "").replace("&", "").split())
                ar = " ".join(value.replace("_", "").replace("&", "").split())
                if en and ar and arabic_fraction(ar) > 0.5 and (en, ar) not in seen:
                    seen.add((en, ar))
                    yield en, ar, Path(path).stem


def prepare(out_dir: str, locale_dirs=DEFAULT_LOCALE_DIRS) -> dict:
    """Writes the bundled corpora into ``out_dir`` and returns the per-file counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    english = list(python_docstring_paragraphs())
    pairs = list(gettext_pairs(locale_dirs))
    arabic = sorted({ar for _, ar, _ in pairs if len(ar.split()) >= 2})
    tmp_files = {}
    for name, lines in (("en.txt", english), ("ar.txt", arabic)):
        tmp = out / (name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        tmp_files[name] = tmp
    tmp = out / "parallel.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for en, ar, source in pairs:
            f.write(json.dumps({"en": en, "ar": ar, "source": source}, ensure_ascii=False) + "\n")
    tmp_files["parallel.jsonl"] = tmp
    for name, path in tmp_files.items():
        path.replace(out / name)
    counts = {
        "en.txt": {"documents": len(english), "words": sum(len(t.split()) for t in english),
                   "source": "Python standard library docstrings (PSF-2.0)"},
        "ar.txt": {"documents": len(arabic), "words": sum(len(t.split()) for t in arabic),
                   "source": "Arabic gettext catalogs of Debian packages (GPL/LGPL, per package)"},
        "parallel.jsonl": {"pairs": len(pairs), "source": "the same gettext catalogs, msgid -> Arabic msgstr"},
    }
    (out / "sources.json").write_text(json.dumps(counts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts
