"""HeldoutWatch: held-out bits/byte per language while training, and the English-retention guard."""

import dataclasses
import json
import math

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import numpy_llama
from helpers import allam, bundled_dir, experiment, write_gin
from allam_jax.core.errors import ConfigError, RetentionError
from allam_jax.data.text_files import ByteCodec
from allam_jax.checkpoint.workdir_files import HELDOUT_START as START_FILE
from allam_jax.train.heldout_watch import HeldoutWatch, read_heldout
from allam_jax.train.loop import train
from allam_jax.train.metrics import read_metrics


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Arabic to train on; English and Arabic held out (other documents of the bundled corpora)."""
    d = tmp_path_factory.mktemp("watch")
    en = (bundled_dir() / "en.txt").read_text(encoding="utf-8").splitlines()
    ar = (bundled_dir() / "ar.txt").read_text(encoding="utf-8").splitlines()
    (d / "train_ar.txt").write_text("\n".join(ar[:400]) + "\n", encoding="utf-8")
    (d / "en.txt").write_text("\n".join(en[-20:]) + "\n", encoding="utf-8")
    (d / "ar.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ar[-20:]), encoding="utf-8")
    return d


def _reference_bpb(params, docs, cfg) -> float:
    """Float64 NumPy Llama: each document in windows of max_seq_len byte tokens, each after BOS alone."""
    codec, nll, n_bytes = ByteCodec(), 0.0, 0
    for doc in docs:
        ids = codec.encode(doc)
        n_bytes += len(doc.encode("utf-8"))
        for s in range(0, len(ids), cfg.max_seq_len):
            window = ids[s: s + cfg.max_seq_len]
            seq = np.array([[codec.bos_id] + window])
            logits = numpy_llama.forward(params, seq[:, :-1], cfg)[0]
            m = logits.max(-1, keepdims=True)
            logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
            nll -= logp[np.arange(len(window)), seq[0, 1:]].sum()
    return nll / n_bytes / math.log(2)


def _exp(texts, num_steps, **watch):
    exp = experiment([str(texts / "train_ar.txt")], num_steps=num_steps, optimizer={"learning_rate": 3e-2},
                     model={"compute_dtype": "float32"}, checkpoint_every=100)
    paths = {"en": str(texts / "en.txt"), "ar": str(texts / "ar.jsonl")}
    return dataclasses.replace(exp, watch=HeldoutWatch(**{"paths": paths, "max_bytes": 300, **watch}))


@pytest.mark.slow
def test_logged_bits_per_byte_match_a_float64_reference_and_the_guard_warns(texts, tmp_path, caplog):
    exp = _exp(texts, 4, every=2, max_rise=1e-6, action="warn")
    with caplog.at_level("WARNING"):
        train(exp, str(tmp_path))
    rows = {r["step"]: r for r in read_metrics(str(tmp_path))}
    assert {"heldout/en", "heldout/ar"} <= set(rows[2]) and {"heldout/en", "heldout/ar"} <= set(rows[4])
    params = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints/4/state")["params"]
    for lang, path in exp.watch.paths.items():
        want = _reference_bpb(jax.device_get(params), read_heldout(path, 300), exp.model)
        assert rows[4][f"heldout/{lang}"] == pytest.approx(want, rel=1e-4), lang
    start = json.loads((tmp_path / START_FILE).read_text())
    assert start["step"] == 0 and set(start["bits_per_byte"]) == {"en", "ar"}
    # trained on Arabic only, English got worse than at the start: warned, not stopped
    assert rows[4]["heldout/en"] > start["bits_per_byte"]["en"]
    assert "en held-out bits/byte rose" in caplog.text and "HeldoutWatch.max_rise" in caplog.text


@pytest.mark.slow
def test_the_guard_saves_and_stops_and_a_resume_keeps_the_first_start(texts, tmp_path):
    exp = _exp(texts, 8, every=2, max_rise=1e-6, action="stop")
    with pytest.raises(RetentionError, match=r"en held-out bits/byte rose .* at step \d\), more than HeldoutWatch"
                                             r".max_rise = 1e-06; saved step \d and stopped") as stopped:
        train(exp, str(tmp_path))
    step = int(str(stopped.value).rsplit("saved step ", 1)[1].split()[0])
    assert step < 8 and (tmp_path / f"checkpoints/{step}").is_dir()
    assert max(r["step"] for r in read_metrics(str(tmp_path))) == step
    first = json.loads((tmp_path / START_FILE).read_text())
    relaxed = dataclasses.replace(exp, watch=dataclasses.replace(exp.watch, max_rise=10.0))
    train(relaxed, str(tmp_path))  # resumes from step 2, compares with the run's own start
    assert json.loads((tmp_path / START_FILE).read_text()) == first
    assert max(r["step"] for r in read_metrics(str(tmp_path))) == 8


@pytest.mark.slow
def test_bad_watch_settings_are_one_line_errors(texts, tmp_path):
    with pytest.raises(ConfigError, match="HeldoutWatch.every is set but HeldoutWatch.paths names no held-out file"):
        HeldoutWatch(every=5)
    with pytest.raises(ConfigError, match=r"HeldoutWatch.guard = 'en' has no held-out file"):
        HeldoutWatch(paths={"ar": "a.txt"}, every=5, max_rise=0.05)
    with pytest.raises(ConfigError, match="HeldoutWatch.action must be one of"):
        HeldoutWatch(action="halt")
    with pytest.raises(ConfigError, match="HeldoutWatch.max_rise must be a non-negative fraction"):
        HeldoutWatch(max_rise=float("nan"))
    gin = write_gin(tmp_path / "w.gin", [str(texts / "train_ar.txt")], **{
        "TrainerConfig.num_steps": 2, "HeldoutWatch.every": 1,
        "HeldoutWatch.paths": json.dumps({"en": str(tmp_path / "missing.txt")})})
    r = allam("train", "--gin_file", str(gin), "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"allam: error: data file not found: {tmp_path / 'missing.txt'}")
    assert not (tmp_path / "w" / "checkpoints").exists()
