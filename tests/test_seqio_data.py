"""The seqio pipeline: sources, cleaning, tasks, token-share mixtures, packing, resume, sharding, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow as tf

from allam_jax.data import tasks as tasks_lib
from allam_jax.data.pipeline import SeqioData
from allam_jax.data.sources import (CleaningConfig, DataError, DocumentSource, ParallelRendering, SourceStats,
                                    iter_documents)
from allam_jax.data.tasks import CorpusPaths, example_rates_for_token_shares, rates_from_token_counts
from allam_jax.data.language import arabic_fraction
from allam_jax.data.text_files import BOS_ID, EOS_ID
from allam_jax.data.vocabularies import ByteVocabulary
from allam_jax.core.errors import ConfigError
from helpers import bundled_dir


def _write(path: Path, lines, binary=False) -> str:
    if binary:
        path.write_bytes(b"".join(lines))
    else:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def bundled() -> Path:
    return bundled_dir()


@pytest.mark.slow
def test_bundled_corpora_are_real_and_large(bundled):
    sources = json.loads((bundled / "sources.json").read_text())
    assert sources["en.txt"]["words"] >= 100_000
    assert sources["ar.txt"]["words"] >= 50_000
    assert sources["parallel.jsonl"]["pairs"] >= 5_000
    ar_lines = (bundled / "ar.txt").read_text(encoding="utf-8").splitlines()
    arabic = sum(sum("\u0600" <= c <= "\u06ff" for c in line) > len(line) / 2 for line in ar_lines)
    assert arabic > 0.9 * len(ar_lines)
    pair = json.loads((bundled / "parallel.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(pair) >= {"en", "ar"}
    # Arabic by register, for mixtures that weigh classical text apart: the two files partition ar.txt
    modern = (bundled / "ar_modern.txt").read_text(encoding="utf-8").splitlines()
    classical = (bundled / "ar_classical.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(modern + classical) == sorted(ar_lines)
    by_source = sources["sources"]
    assert sources["ar_classical.txt"]["words"] == sum(v["words"] for k, v in by_source.items()
                                                       if k == "ar/quran" or k.startswith("ar/hadith_"))
    assert sources["ar_modern.txt"]["words"] == sum(by_source[k]["words"] for k in (
        "ar/tafsir_muyassar", "ar/gettext_ui", "ar/debian_handbook") if k in by_source)
    if "parallel/debian_handbook" in by_source:  # its paragraph pairs: Arabic side in ar_modern.txt too
        handbook = [json.loads(ln) for ln in (bundled / "parallel.jsonl").read_text(encoding="utf-8").splitlines()
                    if '"debian-handbook/html"' in ln]
        assert len(handbook) == by_source["parallel/debian_handbook"]["pairs"] > 1000
        assert set(p["ar"] for p in handbook) <= set(modern)


def test_byte_vocabulary_tf_matches_python():
    vocab = ByteVocabulary()
    for text in ["Hello, world", "والمدرسة الجديدة", "mixed عربي 123 ✓"]:
        ids = vocab.encode(text)
        assert ids == [b + 3 for b in text.encode("utf-8")]
        assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
        assert vocab.decode_tf(tf.constant(ids + [EOS_ID, 0])).numpy().decode("utf-8") == text
        assert vocab.decode(ids) == text
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.vocab_size) == (0, BOS_ID, EOS_ID, 259)


def test_cleaning_normalises_filters_and_dedups(tmp_path):
    path = _write(tmp_path / "ar.txt", ["العـــربية لغة جميلة", "العربية لغة جميلة", "English only line here",
                                        "قصير", "نص عربي آخر مختلف"])
    stats = SourceStats()
    docs = list(iter_documents([path], "ar", CleaningConfig(min_chars=8), stats=stats))
    assert docs == ["العربية لغة جميلة", "نص عربي آخر مختلف"]  # tatweel removed, then the duplicate dropped
    assert (stats.duplicates, stats.filtered) == (1, 2)
    kept = list(iter_documents([path], "ar", CleaningConfig(dedup=False, normalize=False, min_chars=1)))
    assert "العـــربية لغة جميلة" in kept and len(kept) == 4


def test_malformed_jsonl_skipped_and_counted_or_fatal(tmp_path):
    path = _write(tmp_path / "d.jsonl", [b'{"text": "good one"}\n', b'{"text": broken\n', b'{"other": 1}\n',
                                         b'{"text": "caf\xe9 latin-1"}\n', b'{"text": "good two"}\n'], binary=True)
    stats = SourceStats()
    docs = list(iter_documents([path], None, CleaningConfig(), stats=stats))
    assert docs == ["good one", "good two"] and stats.malformed == 3
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON"):
        list(iter_documents([path], None, CleaningConfig(on_error="fatal")))
    bad_utf8 = _write(tmp_path / "x.txt", [b"fine\n", b"caf\xe9\n"], binary=True)
    with pytest.raises(DataError, match=r"x\.txt:2: not valid UTF-8"):
        list(iter_documents([bad_utf8], None, CleaningConfig(on_error="fatal")))


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope"):
        DocumentSource([str(tmp_path / "nope*.txt")], "en", CleaningConfig())
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="data file is empty: .*empty.txt"):
        DocumentSource([str(tmp_path / "empty.txt")], "en", CleaningConfig())
    with pytest.raises(ConfigError, match="single string"):
        DocumentSource(str(tmp_path / "empty.txt"), "en", CleaningConfig())


def test_parallel_rendering_rotates_styles(tmp_path):
    pairs = [{"en": f"sentence number {i}", "ar": f"الجملة رقم {i}"} for i in range(8)]
    path = _write(tmp_path / "p.jsonl", [json.dumps(p, ensure_ascii=False) for p in pairs])
    docs = list(iter_documents([path], None, CleaningConfig(), parallel=ParallelRendering()))
    assert docs[0] == "الجملة رقم 0"
    assert docs[1] == "sentence number 1\nالجملة رقم 1"
    assert docs[2].startswith("Translate into Arabic: sentence number 2\n") and docs[2].endswith("الجملة رقم 2")
    assert docs[3].startswith("ترجم إلى الإنجليزية: الجملة رقم 3\n") and docs[3].endswith("sentence number 3")
    with pytest.raises(ConfigError, match="unknown style"):
        ParallelRendering(styles=("klingon",))


def test_document_sharding_is_a_disjoint_cover(tmp_path):
    path = _write(tmp_path / "en.txt", [f"document number {i} of the corpus" for i in range(50)])
    shards = [list(iter_documents([path], "en", CleaningConfig(), shard=(i, 3))) for i in range(3)]
    flat = [d for s in shards for d in s]
    assert sorted(flat) == sorted(iter_documents([path], "en", CleaningConfig())) and len(set(flat)) == 50
    files = [_write(tmp_path / f"f{i}.txt", [f"file {i} line {j} text" for j in range(3)]) for i in range(4)]
    by_file = [list(iter_documents(files, "en", CleaningConfig(), shard=(i, 2))) for i in range(2)]
    assert all(d.startswith(("file 0", "file 2")) for d in by_file[0]) and len(by_file[0]) == 6


def test_token_share_rate_math():
    shares = rates_from_token_counts({"a": 300.0, "b": 100.0})
    assert shares == pytest.approx({"a": 0.75, "b": 0.25})
    flat = rates_from_token_counts({"a": 300.0, "b": 100.0}, temperature=1e9)
    assert flat == pytest.approx({"a": 0.5, "b": 0.5}, abs=1e-6)
    rates = example_rates_for_token_shares({"a": 0.5, "b": 0.5}, {"a": 100.0, "b": 25.0})
    # a draws 4x fewer examples, each 4x longer: equal token shares
    assert rates["b"] / rates["a"] == pytest.approx(4.0)


def _data(bundled: Path, registers: bool = False, **kw) -> SeqioData:
    """The bundled mixture; ``registers``: modern and classical Arabic as two tasks (data/ar_registers.gin)."""
    ar = {"ar": [str(bundled / "ar_modern.txt")], "ar_classical": [str(bundled / "ar_classical.txt")]} if registers \
        else {"ar": [str(bundled / "ar.txt")]}
    paths = CorpusPaths(en=[str(bundled / "en.txt")], parallel=[str(bundled / "parallel.jsonl")], **ar)
    return SeqioData(paths=paths, shuffle_buffer=2000, **kw)


def _segments(batch, row):
    seg = batch["segment_ids"][row]
    for s in np.unique(seg[seg > 0]):
        idx = np.nonzero(seg == s)[0]
        yield idx


@pytest.mark.slow
def test_packed_batches_have_the_trainer_layout(bundled):
    it = _data(bundled, rate_unit="examples").make_iterator(seq_len=128, batch_size=4)
    vocab = ByteVocabulary()
    for _ in range(8):
        batch = next(it)
        assert {k: v.shape for k, v in batch.items()} == {k: (4, 128) for k in batch}
        for row in range(4):
            for idx in _segments(batch, row):
                assert np.all(np.diff(idx) == 1), "a segment is contiguous"
                assert batch["positions"][row, idx].tolist() == list(range(len(idx)))
                assert batch["inputs"][row, idx[0]] == BOS_ID
                assert batch["inputs"][row, idx[1:]].tolist() == batch["targets"][row, idx[:-1]].tolist()
                assert len(set(batch["lang_id"][row, idx].tolist())) == 1
                text = vocab.decode(batch["targets"][row, idx].tolist())
                assert text.strip(), "segments hold real text"
                task = tasks_lib.TASKS[int(batch["task_id"][row, idx[0]])]
                assert len(set(batch["task_id"][row, idx].tolist())) == 1
                assert tasks_lib.LANGUAGES[int(batch["lang_id"][row, idx[0]])] == task.lang
                if task.name == "en_pretrain":  # ids line up with the text they label
                    assert arabic_fraction(text) < 0.5, text[:80]
                elif task.name == "ar_pretrain":
                    assert arabic_fraction(text) > 0.5, text[:80]
            pad = batch["segment_ids"][row] == 0
            assert np.all(batch["loss_weights"][row][pad] == 0) and np.all(batch["loss_weights"][row][~pad] == 1)
            assert np.all(batch["inputs"][row][pad] == 0)
    it.close()


@pytest.mark.slow
def test_realised_token_shares_match_configured_rates(bundled):
    """Over 200 batches each task's share of real tokens is within 0.05 of its configured token share."""
    rates = {"en_pretrain": 0.4, "ar_pretrain": 0.2, "ar_classical_pretrain": 0.2, "translated_pretrain": 0.2}
    it = _data(bundled, registers=True, rates=rates, rate_unit="tokens").make_iterator(seq_len=128, batch_size=8)
    counts = np.zeros(len(tasks_lib.TASKS))
    for _ in range(200):
        batch = next(it)
        real = batch["loss_weights"] > 0
        counts += np.bincount(batch["task_id"][real], minlength=len(counts))
    realised = counts / counts.sum()
    for i, spec in enumerate(tasks_lib.TASKS):
        assert abs(realised[i] - rates[spec.name]) < 0.05, (spec.name, realised[i], rates[spec.name])
    it.close()


@pytest.mark.slow
def test_resume_gives_exactly_the_next_batches(bundled):
    data = _data(bundled, rate_unit="examples", seed=7)
    straight = data.make_iterator(seq_len=64, batch_size=4)
    expected = [next(straight) for _ in range(6)]
    first = data.make_iterator(seq_len=64, batch_size=4)
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # as the checkpoint stores it
    resumed = data.make_iterator(seq_len=64, batch_size=4)
    resumed.set_state(state)
    for want in expected[3:]:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    other_seed = _data(bundled, rate_unit="examples", seed=8).make_iterator(seq_len=64, batch_size=4)
    assert not np.array_equal(next(other_seed)["targets"], expected[0]["targets"])
    with pytest.raises(ConfigError, match="not from the seqio pipeline"):
        resumed.set_state({"epoch": 0, "row": 3})
    # a run that starts 2 batches into the stream (a later stage of a progressive expansion) takes batches 2, 3, ...
    # and counts its own steps: its resume is exact too
    later = _data(bundled, rate_unit="examples", seed=7, start_batch=2)
    it = later.make_iterator(seq_len=64, batch_size=4)
    np.testing.assert_array_equal(next(it)["targets"], expected[2]["targets"])
    assert it.get_state()["batches"] == 1 and it.get_state()["stream_offset"] == 2
    again = later.make_iterator(seq_len=64, batch_size=4)
    again.set_state(json.loads(json.dumps(it.get_state())))
    for want in expected[3:5]:
        np.testing.assert_array_equal(next(again)["targets"], want["targets"])
    with pytest.raises(ConfigError, match="start_batch must be a non-negative integer"):
        _data(bundled, start_batch=-1)


@pytest.mark.slow
def test_each_process_reads_its_own_shard(bundled):
    data = _data(bundled, rate_unit="examples")
    parts = [data.make_iterator(seq_len=64, batch_size=4, process_index=i, process_count=2) for i in range(2)]
    batches = [next(p) for p in parts]
    assert all(b["targets"].shape == (2, 64) for b in batches)
    assert not np.array_equal(batches[0]["targets"], batches[1]["targets"])
    with pytest.raises(ConfigError, match="not divisible by the process count"):
        data.make_iterator(seq_len=64, batch_size=3, process_index=0, process_count=2)


def test_bad_mixture_and_task_configuration(bundled, tmp_path):
    with pytest.raises(ConfigError, match="no files .* or do not exist"):
        _data(bundled, rates={"fr_pretrain": 1.0}).make_iterator(64, 2)
    with pytest.raises(ConfigError, match="non-negative"):
        _data(bundled, rates={"en_pretrain": -1.0}, rate_unit="examples").make_iterator(64, 2)
    with pytest.raises(ConfigError, match="vocabulary file not found"):
        _data(bundled, vocabulary=str(tmp_path / "missing.model")).make_iterator(64, 2)
    fatal = SeqioData(paths=CorpusPaths(en=[_write(tmp_path / "bad.jsonl", ['{"text": "ok fine text"}', "{oops"])],
                                        ar=[], parallel=[]),
                      rates={"en_pretrain": 1.0}, rate_unit="examples", cleaning=CleaningConfig(on_error="fatal"))
    it = fatal.make_iterator(16, 2)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        for _ in range(5):
            next(it)


def test_tfds_source(tmp_path, monkeypatch):
    """A TFDS dataset prepared locally (no download) is read through the ``tfds:`` spec."""
    from helpers import prepare_tfds_text_dataset

    prepare_tfds_text_dataset("TinyArabicNews", tmp_path, "body", [f"خبر رقم {i} من الأخبار العربية" for i in range(5)])
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    docs = sorted(iter_documents(["tfds:tiny_arabic_news@train#body"], "ar", CleaningConfig()))
    assert docs == sorted(f"خبر رقم {i} من الأخبار العربية" for i in range(5))


def test_task_registry_contents(bundled):
    rates = {t.name: 1.0 for t in tasks_lib.TASKS}
    data = _data(bundled, registers=True, rates=rates, rate_unit="examples")
    data.build(seq_len=64)
    for spec in tasks_lib.TASKS:
        task = seqio.get_mixture_or_task(spec.name)
        ex = next(task.get_dataset(None, "train", shuffle=False, num_epochs=1).as_numpy_iterator())
        assert len(ex["targets"]) <= 64
        assert set(ex["lang"].tolist()) == {tasks_lib.LANGUAGES.index(spec.lang) + 1}  # stored +1 for packing
    assert "ar_en_translated" in seqio.MixtureRegistry.names()


@pytest.mark.slow
def test_the_seqio_mixture_keeps_the_batch_contract(bundled):
    from helpers import check_batch_contract

    it = _data(bundled).make_iterator(64, 4)
    check_batch_contract(it, 4, 64)
    it.close()


def test_a_new_task_is_one_tasks_line(tmp_path, monkeypatch):
    """A task added to TASKS, its files named in CorpusPaths.more: registered and read, no other change."""
    from allam_jax.data.tasks import InputGroup, TaskSpec, register_tasks

    code = tmp_path / "code.txt"
    code.write_text("".join(f"def function_number_{i}(x): return x + {i}\n\n" for i in range(5)))
    monkeypatch.setattr(tasks_lib, "TASKS", tasks_lib.TASKS + (TaskSpec("code_pretrain", "en", (InputGroup("code"),)),))
    paths = CorpusPaths(ar=(), en=(), parallel=(), more={"code": [str(code)]})
    names = register_tasks(paths, ByteVocabulary(), CleaningConfig(dedup=False), ParallelRendering(), 64)
    assert names == ["code_pretrain"]
    ds = seqio.get_mixture_or_task("code_pretrain").get_dataset(None, "train", shuffle=False, num_epochs=1)
    text = bytes(b - 3 for ex in ds.as_numpy_iterator() for b in ex["targets"] if 3 <= b < 259).decode()
    assert all(f"function_number_{i}" in text for i in range(5))
    assert set(next(ds.as_numpy_iterator())["task"].tolist()) == {len(tasks_lib.TASKS)}  # its id, stored +1


@pytest.mark.slow
def test_train_on_mixture_resumes_exactly(bundled, tmp_path):
    """6 steps straight vs 3 + restart + 3 on the seqio mixture: the same losses, bit for bit."""
    import dataclasses

    from allam_jax.train.loop import train
    from allam_jax.objectives.lm import LmObjective, StepConfig
    from helpers import experiment, losses

    def exp(steps):
        e = experiment([], num_steps=steps, checkpoint_every=3, async_checkpointing=False)
        return dataclasses.replace(e, data=_data(bundled, rate_unit="examples"),
                                   objective=LmObjective(StepConfig(num_languages=3)))

    train(exp(6), str(tmp_path / "straight"))
    train(exp(3), str(tmp_path / "split"))
    last = train(exp(6), str(tmp_path / "split"))
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    assert {"loss/en", "loss/ar", "loss/translated"} <= set(last)


@pytest.mark.slow
def test_cli_inspect_reports_shares(bundled, tmp_path):
    from helpers import allam

    gin = tmp_path / "mix.gin"
    gin.write_text("\n".join([
        "include 'runs/tiny_cpu.gin'",
        f"CorpusPaths.ar = ['{bundled / 'ar.txt'}']",
        f"CorpusPaths.en = ['{bundled / 'en.txt'}']",
        f"CorpusPaths.parallel = ['{bundled / 'parallel.jsonl'}']",
        "SeqioData.shuffle_buffer = 2000",
    ]) + "\n")
    r = allam("data", "inspect", f"--gin_file={gin}", "--batches=5", "--batch_size=4", "--seq_len=64", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert sum(t["realised_share"] for t in report["tasks"].values()) == pytest.approx(1.0)
    assert report["tasks"]["en_pretrain"]["configured_share"] == pytest.approx(0.4)
    assert 0 < report["packing_efficiency"] <= 1 and len(report["examples"]) == 3
    # the shipped register mixture: classical Arabic as a task of its own, at its configured share
    registers = tmp_path / "registers.gin"
    registers.write_text("\n".join([
        "include 'runs/tiny_cpu.gin'", "include 'data/ar_registers.gin'",
        *(f"CorpusPaths.{k} = ['{bundled / f}']" for k, f in (("ar", "ar_modern.txt"), ("ar_classical", "ar_classical.txt"),
                                                                ("en", "en.txt"), ("parallel", "parallel.jsonl"))),
        "SeqioData.shuffle_buffer = 2000"]) + "\n")
    r = allam("data", "inspect", f"--gin_file={registers}", "--batches=5", "--batch_size=4", "--seq_len=64", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    tasks = json.loads(r.stdout)["tasks"]
    assert tasks["ar_classical_pretrain"]["configured_share"] == pytest.approx(0.15)
    assert tasks["ar_classical_pretrain"]["realised_share"] > 0 and tasks["ar_pretrain"]["realised_share"] > 0
    r = allam("data", "inspect", f"--gin_file={gin}", "--mixture=nope", "--batches=1")
    assert r.returncode == 2 and "unknown mixture 'nope'" in r.stderr.strip().splitlines()[-1]
    r = allam("data", "inspect", f"--gin_file={gin}", "--gin_bindings=CorpusPaths.en = ['/no/such/en.txt']")
    assert r.returncode == 2 and "data file not found: /no/such/en.txt" in r.stderr.strip().splitlines()[-1]


def test_handbook_paragraphs_pair_in_page_order_and_skip_the_untranslated(tmp_path):
    from allam_jax.data.corpora import handbook_pairs

    def page(lang, name, paras):
        (tmp_path / lang).mkdir(exist_ok=True)
        body = "".join(f'<div class="para">{p}</div>' for p in paras)
        (tmp_path / lang / name).write_text(f"<html><body><h1>t</h1>{body}</body></html>", encoding="utf-8")

    page("en-US", "apt.html", ["APT reads <code>sources.list</code> first.",
                               'A list: <div class="itemizedlist"><ul><li>one item</li></ul></div> and more.',
                               "Not yet translated here.", "Run it:<pre>apt update</pre> as root."])
    page("ar-MA", "apt.html", ["تقرأ APT الملف <code>sources.list</code> أولا.",
                               'قائمة: <div class="itemizedlist"><ul><li>عنصر واحد</li></ul></div> وغيرها.',
                               "Not yet translated here.", "شغّله:<pre>apt update</pre> بصلاحيات الجذر."])
    page("en-US", "odd.html", ["One.", "Two."])
    page("ar-MA", "odd.html", ["واحد اثنان ثلاثة"])
    with pytest.warns(UserWarning, match="odd.html: 1 paragraphs in ar-MA, 2 in en-US"):
        pairs = list(handbook_pairs(tmp_path))
    assert pairs == [("APT reads sources.list first.", "تقرأ APT الملف sources.list أولا.", "apt"),
                     ("A list: one item and more.", "قائمة: عنصر واحد وغيرها.", "apt"),
                     ("Run it: as root.", "شغّله: بصلاحيات الجذر.", "apt")]


def test_deb_extraction_rejects_non_debs(tmp_path):
    from allam_jax.data.corpora import extract_deb

    fake = tmp_path / "fake.deb"
    fake.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(ValueError, match="not a .deb"):
        extract_deb(fake, tmp_path / "out")


def test_data_prepare_skips_a_package_that_is_not_a_deb_with_a_warning(tmp_path):
    """What `allam data prepare --no_fetch` unpacks from --deb_dir: a crafted file is a source that cannot be
    had (skipped with a warning, as docs/data.md says), not a traceback."""
    from allam_jax.data.corpora import extract_debs

    fake = tmp_path / "libreoffice-l10n-ar_1.0_all.deb"
    fake.write_bytes(b"!<arch>\ngarbage that is not an ar member")
    plain = tmp_path / "sword-text-web_1.0_all.deb"
    plain.write_text("hello")
    with pytest.warns(UserWarning, match="skipping libreoffice-l10n-ar"):
        done = extract_debs({"libreoffice-l10n-ar": fake, "sword-text-web": plain}, tmp_path / "unpacked")
    assert done == {} and not (tmp_path / "unpacked" / "libreoffice-l10n-ar").exists()


@pytest.mark.parametrize("compression", ["zstd", "xz", "gzip"])
def test_deb_extraction_handles_every_compression_debian_ships(tmp_path, compression):
    """The hand-written unpacker rejected zstd data members (what Ubuntu ships); dpkg-deb -x reads them all.
    Packages are built here with dpkg-deb --build, the file read back byte for byte."""
    import shutil
    import subprocess

    from allam_jax.data.corpora import extract_deb

    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed (the project's machines are Debian: it is)")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: allam-test\nVersion: 1.0\nArchitecture: all\n"
                                              "Maintainer: t <t@example.org>\nDescription: test\n")
    catalog = root / "usr/share/locale/ar/LC_MESSAGES/x.txt"
    catalog.parent.mkdir(parents=True)
    catalog.write_text("مرحبا hello\n", encoding="utf-8")
    deb = tmp_path / f"x-{compression}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    out = extract_deb(deb, tmp_path / "out")
    assert (out / "usr/share/locale/ar/LC_MESSAGES/x.txt").read_bytes() == catalog.read_bytes()


@pytest.mark.slow
def test_sentencepiece_vocabulary_in_the_pipeline(bundled, tmp_path):
    """With a (merged-style) SentencePiece model, segments start with its BOS and decode back to real text
    exactly as sentencepiece itself encodes it."""
    import sentencepiece as spm

    from allam_jax.tokenizer.train import train_tokenizer

    model = str(tmp_path / "sp.model")
    train_tokenizer([str(bundled / "en.txt"), str(bundled / "ar.txt")], 1200, model, max_sentences=3000)
    sp = spm.SentencePieceProcessor(model_file=model)
    it = _data(bundled, vocabulary=model, rate_unit="examples").make_iterator(seq_len=128, batch_size=4)
    batch = next(it)
    checked = 0
    for row in range(4):
        for idx in _segments(batch, row):
            assert batch["inputs"][row, idx[0]] == sp.bos_id()
            tokens = batch["targets"][row, idx].tolist()
            # A whole document, or the last piece of a long one; only a piece that starts at a word boundary
            # re-encodes to itself (sentencepiece marks the first word of any text with "▁").
            if tokens[-1] == sp.eos_id() and len(tokens) < 128 and sp.id_to_piece(tokens[0]).startswith("▁"):
                text = sp.decode(tokens[:-1])
                assert sp.encode(text) == tokens[:-1]
                checked += 1
    assert checked > 0
    assert int(batch["targets"].max()) < sp.get_piece_size()
    it.close()


@pytest.mark.slow
@pytest.mark.parametrize("bad_file,content,reason", [
    ("en.txt", b"a fine english line of text\n\xff\xfe not utf-8\nanother fine english line\n", "not valid UTF-8"),
    ("pairs.jsonl", b'{"en": "good morning friend", "ar": "\xd8\xb5\xd8\xa8\xd8\xa7\xd8\xad"}\n{"en": broken\n',
     "JSON"),
])
def test_fatal_bad_line_in_the_seqio_path_is_one_line_exit_2(tmp_path, bad_file, content, reason):
    """CleaningConfig.on_error='fatal' used to end in a TensorFlow traceback and exit 1 (the error is raised in a
    tf.data generator, first while the mixture's mean token counts are measured)."""
    from helpers import allam

    good = tmp_path / "good.txt"
    good.write_text("\n".join(f"a perfectly ordinary english sentence number {i}" for i in range(50)), encoding="utf-8")
    bad = tmp_path / bad_file
    bad.write_bytes(content)
    paths = ([f"CorpusPaths.en = ['{bad}']", "CorpusPaths.parallel = []"] if bad_file.endswith(".txt") else
             [f"CorpusPaths.en = ['{good}']", f"CorpusPaths.parallel = ['{bad}']"])
    rates = ("SeqioData.rates = {'en_pretrain': 1.0}" if bad_file.endswith(".txt") else
             "SeqioData.rates = {'en_pretrain': 0.5, 'translated_pretrain': 0.5}")
    args = ["train", "--gin_file", "runs/tiny_cpu.gin", "--workdir", str(tmp_path / "w"),
            "--gin_bindings", "CleaningConfig.on_error = 'fatal'", "--gin_bindings", rates,
            "--gin_bindings", f"CorpusPaths.ar = ['{good}']", "--gin_bindings", "TrainerConfig.num_steps = 2"]
    for binding in paths:
        args += ["--gin_bindings", binding]
    r = allam(*args)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"allam: error: {bad}:2:") and reason in lines[0], r.stderr[-3000:]


def test_a_skipped_line_is_reported_once_however_often_the_data_is_read(tmp_path, caplog):
    import logging

    from allam_jax.data.sources import CleaningConfig, iter_documents

    path = tmp_path / "en.txt"
    path.write_bytes(b"a fine english line of text here\n\xff\xfe not utf-8\nanother fine english line here\n")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # three epochs / measurements of the same file
            assert len(list(iter_documents([str(path)], None, CleaningConfig()))) == 2
    assert caplog.text.count(f"skipping {path}:2") == 1
    assert caplog.text.count("1 malformed line(s) skipped") == 1


@pytest.mark.slow
def test_data_shards_give_the_same_global_batches_on_any_process_count(bundled):
    """With ``data_shards = 4`` the global batch (process batches stacked in process order) is the same for
    1, 2 and 4 processes, and so is a resume from a state saved under another process count; with the
    default (one shard per process) it is not, which is what the setting is for."""
    data = _data(bundled, rate_unit="examples", data_shards=4)

    def global_batches(processes: int, state=None, n: int = 3) -> list[np.ndarray]:
        its = [data.make_iterator(64, 8, p, processes) for p in range(processes)]
        if state is not None:
            for it in its:
                it.set_state(state)
        out = []
        for _ in range(n):
            parts = [next(it) for it in its]
            out.append(np.concatenate([p["targets"] for p in parts]))
        return out

    one = global_batches(1, n=4)
    for processes in (2, 4):
        got = global_batches(processes)
        assert all(np.array_equal(a, b) for a, b in zip(one, got)), processes
    state = data.make_iterator(64, 8, 0, 2).get_state() | {"batches": 1}
    assert state["data_shards"] == 4
    resumed = global_batches(4, state, n=3)
    assert all(np.array_equal(a, b) for a, b in zip(one[1:], resumed))
    per_process = _data(bundled, rate_unit="examples")
    a = next(per_process.make_iterator(64, 8, 0, 1))["targets"]
    b = np.concatenate([next(per_process.make_iterator(64, 8, p, 2))["targets"] for p in range(2)])
    assert not np.array_equal(a, b)
    with pytest.raises(ConfigError, match="data_shards = 4 cannot be split over 8 processes"):
        data.make_iterator(64, 8, 0, 8)
    with pytest.raises(ConfigError, match="data_shards = 3 must be 0 or a positive divisor of the batch size 8"):
        _data(bundled, data_shards=3).make_iterator(64, 8)


@pytest.mark.slow
def test_mixture_schedule_switches_at_its_step_and_resumes_across_the_boundary(bundled):
    """English only for 3 batches, then the mix; a resume from batch 2 (one before the boundary) continues
    with the same batches as the straight run, across the boundary; bad schedules are one line."""
    from allam_jax.data.pipeline import MixtureSchedule

    schedule = MixtureSchedule(stages=[(0, {"en_pretrain": 1.0}),
                                       (3, {"en_pretrain": 0.2, "ar_pretrain": 0.4, "translated_pretrain": 0.4})])
    data = _data(bundled, rate_unit="examples", schedule=schedule)
    it = data.make_iterator(64, 4)
    straight = [next(it) for _ in range(6)]
    tasks = [set(np.unique(b["task_id"][b["segment_ids"] > 0]).tolist()) for b in straight]
    assert tasks[:3] == [{0}] * 3 and all(t - {0} for t in tasks[3:]), tasks
    assert it.stage == 1 and it.get_state()["stage"] == 1
    resumed = data.make_iterator(64, 4)
    resumed.set_state({"batches": 2, "stage": 0, "stage_starts": [0, 3]})
    for want in straight[2:]:
        assert np.array_equal(next(resumed)["targets"], want["targets"])
    with pytest.raises(ConfigError, match="must start at step 0 and rise strictly"):
        MixtureSchedule(stages=[(5, {"en_pretrain": 1.0})])
    with pytest.raises(ConfigError, match="non-empty list of"):
        MixtureSchedule(stages=[{"en_pretrain": 1.0}])


@pytest.mark.slow
def test_staged_run_resumes_exactly_across_its_boundary(tmp_path):
    """runs/tiny_cpu_staged.gin with the boundary moved to step 3: a run of 6 steps and a run of 2 +
    restart + 4 log the same losses, bit for bit, and the metrics say the stage of each step."""
    from helpers import allam, losses

    b = bundled_dir()
    common = ["--gin_file", "runs/tiny_cpu_staged.gin"]
    for binding in ("MixtureSchedule.stages = [(0, {'en_pretrain': 1.0}), (3, {'en_pretrain': 0.4, "
                    "'ar_pretrain': 0.35, 'translated_pretrain': 0.25})]", "TrainerConfig.log_every = 1",
                    "TrainerConfig.checkpoint_every = 2", "TrainerConfig.batch_size = 4", "TrainerConfig.seq_len = 64",
                    "ModelConfig.d_model = 32", "ModelConfig.mlp_dim = 64", "SeqioData.rate_unit = 'examples'",
                    "SeqioData.shuffle_buffer = 200", "TrainerConfig.progress_bar = False",
                    f"CorpusPaths.en = ['{b / 'en.txt'}']", f"CorpusPaths.ar = ['{b / 'ar.txt'}']",
                    f"CorpusPaths.parallel = ['{b / 'parallel.jsonl'}']"):
        common += ["--gin_bindings", binding]
    for workdir, steps in (("straight", [6]), ("split", [2, 6])):
        for n in steps:
            r = allam("train", *common, "--workdir", str(tmp_path / workdir), "--gin_bindings",
                      f"TrainerConfig.num_steps = {n}")
            assert r.returncode == 0, r.stderr[-3000:]
    assert "data stage 1 from batch 3" in r.stderr and "resumed from step 2" in r.stderr
    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert [split[s] for s in range(1, 7)] == [straight[s] for s in range(1, 7)]
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["data_stage"] for r in rows] == [0, 0, 0, 1, 1, 1]
