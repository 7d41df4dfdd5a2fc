"""``allam data cache`` (the Beam job) and ``CachedData`` (training on its output).

References: the cache's records are compared with documents cleaned, de-duplicated and tokenised here in plain
Python, and read back by seqio's own cache reader and by ``tf.data.TFRecordDataset``; the row plan with a
brute-force count; the packed rows with the documents they must consist of.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from allam_jax.core.errors import ConfigError, DataError
from allam_jax.data import cache_format
from allam_jax.data.cached_pipeline import CachedData, RowPlan
from allam_jax.data.sources import CleaningConfig, ParallelRendering, clean_text, drop_reason
from allam_jax.data.tasks import CorpusPaths
from allam_jax.data.vocabularies import get_vocabulary
from helpers import allam, bundled_dir

CLEANING = CleaningConfig(min_chars=8)


def _corpora(d: Path) -> CorpusPaths:
    """Small real corpora with planted duplicates (inside a file and across files), a malformed JSONL line, a
    too-short line and an English line in the Arabic file."""
    b = bundled_dir()
    d.mkdir(parents=True, exist_ok=True)
    en = (b / "en.txt").read_text(encoding="utf-8").splitlines()[:60]
    ar = (b / "ar.txt").read_text(encoding="utf-8").splitlines()[:300]
    pairs = (b / "parallel.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    (d / "en_a.txt").write_text("\n".join(en[:40] + [en[3], "short"]) + "\n", encoding="utf-8")
    (d / "en_b.txt").write_text("\n".join(en[35:] + [en[0]]) + "\n", encoding="utf-8")  # 35..39 in both files
    (d / "ar.txt").write_text("\n".join(ar + [ar[7], en[1]]) + "\n", encoding="utf-8")
    (d / "parallel.jsonl").write_text("\n".join(pairs + [pairs[5], "{not json"]) + "\n", encoding="utf-8")
    return CorpusPaths(en=[str(d / "en_*.txt")], ar=[str(d / "ar.txt")], parallel=[str(d / "parallel.jsonl")])


def _expected(paths: CorpusPaths) -> dict[str, dict]:
    """Per task: the kept documents' token ids (+EOS) and the dropped counts, computed here without Beam."""
    import glob

    vocab, render = get_vocabulary("byte"), ParallelRendering()
    plan = {"en_pretrain": [(f, "en", False) for p in paths.en for f in sorted(glob.glob(p))],
            "ar_pretrain": [(f, "ar", False) for f in paths.ar],
            "translated_pretrain": [(f, None, True) for f in paths.parallel]}
    out = {}
    for task, files in plan.items():
        kept, dropped = {}, collections.Counter()
        for path, script, parallel in files:
            for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                if parallel:
                    try:
                        pair = json.loads(line)
                    except json.JSONDecodeError:
                        dropped["malformed"] += 1
                        continue
                    text = render.render(line_no, clean_text(pair["en"], CLEANING), clean_text(pair["ar"], CLEANING))
                else:
                    text = clean_text(line, CLEANING)
                reason = drop_reason(text, script, CLEANING)
                if reason:
                    dropped[reason] += 1
                elif text in kept:
                    dropped["duplicate"] += 1
                else:
                    kept[text] = tuple(vocab.encode(text)) + (vocab.eos_id,)
        out[task] = {"tokens": sorted(kept.values()), "dropped": dropped}
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from allam_jax.data.cache_job import run_cache

    d = tmp_path_factory.mktemp("cache")
    paths = _corpora(d / "corpus")
    stats = run_cache(str(d / "cached"), paths, "byte", CLEANING, ParallelRendering(), num_shards=3)
    return d, paths, stats


def _records_by_tf(directory: Path) -> list[tuple]:
    import tensorflow as tf

    files = sorted(str(p) for p in directory.glob("train.tfrecord-*"))
    spec = {"targets": tf.io.VarLenFeature(tf.int64)}
    return sorted(tuple(tf.sparse.to_dense(tf.io.parse_single_example(r, spec)["targets"]).numpy().tolist())
                  for r in tf.data.TFRecordDataset(files))


@pytest.mark.slow
def test_cache_holds_each_clean_document_once_with_stats_by_reason(cache):
    d, paths, stats = cache
    expected = _expected(paths)
    assert expected["en_pretrain"]["dropped"]["duplicate"] == 7 and expected["ar_pretrain"]["dropped"]["script"] == 1
    for task, want in expected.items():
        directory = d / "cached" / task
        assert _records_by_tf(directory) == want["tokens"], task
        opened = cache_format.CachedTask.open(str(d / "cached"), task, "byte")
        assert opened.num_records == len(want["tokens"]) and len(opened.shard_files) == 3
        got_stats = json.loads((directory / "stats.train.json").read_text())
        assert got_stats == stats[task]
        assert got_stats["examples"] == len(want["tokens"])
        assert got_stats["targets_tokens"] == sum(len(t) for t in want["tokens"])
        assert {k: v for k, v in got_stats["dropped"].items() if v} == dict(want["dropped"]), task
        assert got_stats["documents_read"] == len(want["tokens"]) + sum(want["dropped"].values())


@pytest.mark.slow
def test_seqio_reads_the_cache_as_a_cached_task(cache):
    """The layout is seqio's: a seqio Task with a cache placeholder, pointed at the cache dir, reads it."""
    import seqio
    import tensorflow as tf

    d, paths, _ = cache
    name = "ar_pretrain"
    feature = {"targets": seqio.Feature(get_vocabulary("byte"), add_eos=False, dtype=tf.int32)}
    source = seqio.FunctionDataSource(lambda split, shuffle_files: tf.data.Dataset.from_tensors({"targets": "x"}),
                                      splits=["train"])
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=source, preprocessors=[seqio.CacheDatasetPlaceholder(required=True)],
                           output_features=feature)
    try:
        seqio.add_global_cache_dirs([str(d / "cached")])
        ds = seqio.get_mixture_or_task(name).get_dataset(None, "train", use_cached=True, shuffle=False,
                                                         num_epochs=1)
        got = sorted(tuple(ex["targets"].tolist()) for ex in ds.as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove(name)
        seqio.set_global_cache_dirs([])
    assert got == _expected(paths)[name]["tokens"]


@pytest.mark.slow
def test_output_does_not_depend_on_the_runner_or_its_workers(cache, tmp_path):
    """Shard contents are functions of the documents: 2 worker processes write the bytes one in-memory
    worker wrote."""
    from allam_jax.data.cache_job import run_cache

    d, paths, _ = cache
    run_cache(str(tmp_path), paths, "byte", CLEANING, ParallelRendering(), num_shards=3,
              beam_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    for task in ("en_pretrain", "ar_pretrain", "translated_pretrain"):
        for f in sorted((d / "cached" / task).glob("train.*")):
            assert (tmp_path / task / f.name).read_bytes() == f.read_bytes(), f


def test_row_plan_counts_match_a_brute_force_walk():
    stages = [(0, {"en_pretrain": 1.0}), (7, {"en_pretrain": 0.4, "ar_pretrain": 0.35, "translated_pretrain": 0.25})]
    plan = RowPlan(stages, batch_size=6, seed=3, block_rows=16)
    seen = collections.Counter()
    for r in range(600):
        task, j = plan.row(r)
        assert j == seen[task], r  # the closed form equals counting every earlier row
        seen[task] += 1
        if r < 42:
            assert task == "en_pretrain"
    # the mixed stage: 558 rows, shares exact to 1/16 per block of 16
    mixed = collections.Counter(plan.row(r)[0] for r in range(42, 42 + 16 * 30))
    assert mixed == {"en_pretrain": 30 * 6, "ar_pretrain": 30 * 6, "translated_pretrain": 30 * 4}


def _iterator(cache_dir, process_index=0, process_count=1, **kw):
    data = CachedData(cache_dir=str(cache_dir), **{"block_records": 4, **kw})
    return data.make_iterator(48, 8, process_index, process_count)


@pytest.mark.slow
def test_rows_are_whole_documents_cut_at_row_edges_each_once_per_epoch(cache):
    """Concatenate a task's rows over its first epoch: the segments re-join into the cached documents, each
    exactly once, in one order (the stream is the documents back to back)."""
    d, paths, _ = cache
    it = _iterator(d / "cached", rates={"ar_pretrain": 1.0})
    stream = it.streams["ar_pretrain"]
    n_rows = stream.tokens_per_epoch // 48
    docs, current = [], []
    for j in range(n_rows):
        tokens, segments, positions = stream.row(j)
        for s in np.unique(segments):
            piece = tokens[segments == s]
            assert (positions[segments == s] == np.arange(len(piece))).all()
            current += piece.tolist()
            if piece[-1] == 2:  # EOS ends a document
                docs.append(tuple(current))
                current = []
    want = _expected(paths)["ar_pretrain"]["tokens"]
    assert len(docs) == len(set(docs)) and set(docs) <= set(want) and len(docs) >= len(want) - 2


@pytest.mark.slow
def test_resume_anywhere_and_any_process_count_give_the_same_batches(cache, monkeypatch):
    d, _, _ = cache
    straight = _iterator(d / "cached")
    batches = [next(straight) for _ in range(40)]
    for at in (0, 1, 17, 39):
        it = _iterator(d / "cached")
        it.set_state(json.loads(json.dumps(straight.get_state())) | {"batches": at})
        got = next(it)
        for k in batches[at]:
            np.testing.assert_array_equal(got[k], batches[at][k], err_msg=f"{k} at {at}")
    for count in (2, 4):
        parts = []
        for p in range(count):
            it = _iterator(d / "cached", p, count)
            it.set_state({"batches": 25})
            parts.append(next(it))
        for k in batches[25]:
            np.testing.assert_array_equal(np.concatenate([b[k] for b in parts]), batches[25][k])
    # a restore reads only the records of the batch it serves: nothing is replayed
    reads = []
    original = cache_format.ShardReader.tokens
    monkeypatch.setattr(cache_format.ShardReader, "tokens", lambda self, *a: reads.append(a) or original(self, *a))
    for at in (10, 10**3, 10**6):
        reads.clear()
        it = _iterator(d / "cached")
        it.set_state({"batches": at})
        next(it)
        assert 0 < len(reads) <= 8 * 48, (at, len(reads))


@pytest.mark.slow
def test_token_shares_follow_the_rates(cache):
    d, _, _ = cache
    it = _iterator(d / "cached", rates={"en_pretrain": 2, "ar_pretrain": 1, "translated_pretrain": 1},
                   block_rows=64)
    counts = collections.Counter()
    for _ in range(32):  # 256 rows = 4 blocks
        b = next(it)
        counts.update(b["task_id"][:, 0].tolist())
    assert counts == {0: 128, 1: 64, 2: 64}
    assert (b["loss_weights"] == 1).all() and (b["lang_id"][:, 0] == b["task_id"][:, 0]).all()


@pytest.mark.slow
def test_the_cached_mixture_keeps_the_batch_contract(cache):
    from helpers import check_batch_contract

    d, _, _ = cache
    check_batch_contract(_iterator(d / "cached"), 8, 48)


@pytest.mark.slow
def test_bad_caches_are_one_line_errors(cache, tmp_path):
    import shutil

    d, _, _ = cache
    with pytest.raises(ConfigError, match="task ar_pretrain is not cached in .*run `allam data cache`"):
        _iterator(tmp_path, rates={"ar_pretrain": 1.0})
    import sentencepiece as spm

    text = tmp_path / "t.txt"
    text.write_text((bundled_dir() / "en.txt").read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "other"), vocab_size=300)
    sp = tmp_path / "other.model"
    with pytest.raises(ConfigError, match="cached with vocabulary 'byte'.*re-run `allam data cache`"):
        _iterator(d / "cached", vocabulary=str(sp), rates={"ar_pretrain": 1.0})
    broken = tmp_path / "broken"
    shutil.copytree(d / "cached" / "en_pretrain", broken / "en_pretrain")
    shard = broken / "en_pretrain" / "train.tfrecord-00001-of-00003"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    it = _iterator(broken, rates={"en_pretrain": 1.0})
    with pytest.raises(DataError, match="train.tfrecord-00001-of-00003: corrupt cache shard"):
        for _ in range(200):
            next(it)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="train.tfrecord-00001-of-00003: corrupt cache shard .*size"):
        _iterator(broken, rates={"en_pretrain": 1.0})
    index = broken / "en_pretrain" / "train.index-00001-of-00003"
    for cut in (len(index.read_bytes()) // 2, 20):  # a truncated index (zip directory or data lost), checked like a shard
        shutil.copyfile(d / "cached" / "en_pretrain" / index.name, index)
        index.write_bytes(index.read_bytes()[:cut])
        with pytest.raises(DataError, match="train.index-00001-of-00003: missing or corrupt cache index"):
            _iterator(broken, rates={"en_pretrain": 1.0})


@pytest.mark.slow
def test_cli_errors_exit_2_with_one_line(cache, tmp_path):
    d, paths, _ = cache
    r = allam("data", "cache", f"--out={tmp_path / 'c'}", "--gin_bindings=CorpusPaths.en = ['/nowhere/*.txt']",
              "--gin_file=runs/tiny_cpu.gin")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "allam: error: data file not found: /nowhere/*.txt"
    r = allam("data", "cache", f"--out={tmp_path / 'c'}", "--gin_file=runs/tiny_cpu.gin", "--shardz=4")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("allam: error: unknown option(s) --shardz")
    assert not (tmp_path / "c").exists()
    gin = tmp_path / "g.gin"
    gin.write_text("\n".join(["include 'runs/tiny_cpu_cached.gin'", f"CachedData.cache_dir = '{d / 'cached'}'",
                              "CachedData.rates = {'en_pretrain': 1.0, 'translated_pretrain': 1.0}"]) + "\n")
    only_en = tmp_path / "only_en"
    only_en.mkdir()
    import shutil

    shutil.copytree(d / "cached" / "en_pretrain", only_en / "en_pretrain")
    r = allam("train", f"--gin_file={gin}", f"--gin_bindings=CachedData.cache_dir = '{only_en}'",
              f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("allam: error: task translated_pretrain is not cached in")


@pytest.mark.slow
def test_inspect_reports_the_cached_mixture(cache, tmp_path):
    """`allam data inspect` on CachedData: whole blocks of rows realise the rates exactly."""
    d, _, _ = cache
    gin = tmp_path / "g.gin"
    gin.write_text("\n".join(["include 'runs/tiny_cpu_cached.gin'", f"CachedData.cache_dir = '{d / 'cached'}'",
                              "CachedData.rates = {'en_pretrain': 0.5, 'ar_pretrain': 0.25, "
                              "'translated_pretrain': 0.25}", "CachedData.block_rows = 32"]) + "\n")
    r = allam("data", "inspect", f"--gin_file={gin}", "--batches=8", "--batch_size=8", "--seq_len=32", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["packing_efficiency"] == 1.0
    assert {k: v["realised_share"] for k, v in report["tasks"].items()} == {
        "en_pretrain": 0.5, "ar_pretrain": 0.25, "translated_pretrain": 0.25}


@pytest.mark.slow
def test_cli_caches_the_bundled_corpora_and_trains_on_them(tmp_path):
    """`allam data cache` with its default runner (Beam's DirectRunner, worker processes) on the bundled
    corpora, then `allam train` on the cached mixture: 3 steps, a restart to 5, equal to a straight 5."""
    from helpers import losses

    b = bundled_dir()
    corpus = [f"--gin_bindings=CorpusPaths.{k} = ['{b / f}']"
              for k, f in (("en", "en.txt"), ("ar", "ar.txt"), ("parallel", "parallel.jsonl"))]
    r = allam("data", "cache", "--gin_file=runs/tiny_cpu.gin", *corpus, f"--out={tmp_path / 'cached'}")
    assert r.returncode == 0, r.stderr[-3000:]
    for task in ("en_pretrain", "ar_pretrain", "translated_pretrain"):
        stats = json.loads((tmp_path / "cached" / task / "stats.train.json").read_text())
        assert stats["examples"] > 1000 and f"{task}" in r.stdout
    gin = tmp_path / "run.gin"
    gin.write_text("\n".join([
        "include 'runs/tiny_cpu_cached.gin'", f"CachedData.cache_dir = '{tmp_path / 'cached'}'",
        "ModelConfig.d_model = 32", "ModelConfig.mlp_dim = 64", "TrainerConfig.batch_size = 4",
        "TrainerConfig.seq_len = 64", "TrainerConfig.log_every = 1", "TrainerConfig.checkpoint_every = 3",
        "TrainerConfig.progress_bar = False", "TrainerConfig.tensorboard = False",
        "PartitioningConfig.mesh_shape = (1, 1, 1)"]) + "\n")
    for workdir, steps in (("straight", 5), ("resumed", 3), ("resumed", 5)):
        r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / workdir}",
                  f"--gin_bindings=TrainerConfig.num_steps = {steps}")
        assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 3" in r.stderr
    want, got = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(got) == list(range(1, 6)) and "loss/ar" in (tmp_path / "resumed" / "metrics.jsonl").read_text()
    for step in range(1, 6):
        assert got[step] == pytest.approx(want[step], rel=1e-6), step


def test_cache_reads_tfds_and_jsonl_sources(tmp_path, monkeypatch):
    """A TFDS dataset prepared locally (the ``tfds:NAME@SPLIT#FIELD`` spec) and a JSONL file with a text field
    go through the Beam job like text files."""
    from allam_jax.data.cache_job import run_cache
    from helpers import prepare_tfds_text_dataset

    docs = [f"خبر رقم {i} من الأخبار العربية اليوم" for i in range(6)]
    prepare_tfds_text_dataset("TinyCachedNews", tmp_path / "tfds", "body", docs + docs[:2])  # two duplicates
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    en = tmp_path / "en.jsonl"
    en.write_text("\n".join(json.dumps({"body": f"English document number {i} of the test."}) for i in range(4)))
    paths = CorpusPaths(ar=["tfds:tiny_cached_news@train#body"], en=[str(en)], parallel=[], text_field="body")
    stats = run_cache(str(tmp_path / "cached"), paths, "byte", CLEANING, ParallelRendering())
    assert stats["ar_pretrain"]["examples"] == 6 and stats["ar_pretrain"]["dropped"]["duplicate"] == 2
    assert stats["en_pretrain"]["examples"] == 4
    vocab = get_vocabulary("byte")
    assert _records_by_tf(tmp_path / "cached" / "ar_pretrain") == sorted(
        tuple(vocab.encode(d)) + (vocab.eos_id,) for d in docs)


@pytest.mark.slow
def test_a_write_failure_in_the_beam_job_is_one_line_and_leaves_no_partial_task(tmp_path):
    """The operating system refuses the shard writes (a file-size limit, as a full disk would, without root):
    one line, exit 2, and no unfinished task folder or .tmp shard left behind."""
    import subprocess

    from helpers import bundled_dir, file_size_limited

    b = bundled_dir()
    out = tmp_path / "c"
    r = subprocess.run(file_size_limited(64 << 10, "data", "cache", f"--out={out}", "--gin_file=runs/tiny_cpu.gin",
                                         f"--gin_bindings=CorpusPaths.en = ['{b / 'en.txt'}']",
                                         "--gin_bindings=CorpusPaths.ar = []", "--gin_bindings=CorpusPaths.parallel = []"),
                       capture_output=True, text=True, timeout=900)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("allam: error:"), r.stderr[-3000:]
    assert "writing the cache failed (File too large)" in lines[0] and str(out) in lines[0]
    assert not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))
