import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import corpus_files, experiment, losses, write_gin
from allam_jax.checkpoint import regular as ckpt_lib
from allam_jax.train.loop import NonFiniteLossError, train


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return corpus_files(tmp_path_factory.mktemp("corpus"))


@pytest.mark.slow
def test_training_lowers_the_loss_and_logs_per_language(files, tmp_path):
    train(experiment(files, num_steps=40, log_every=10, optimizer={"learning_rate": 1e-2}), str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    for key in ("grad_norm", "learning_rate", "tokens_per_s", "mfu", "mfu_causal"):
        assert np.isfinite(rows[-1][key])
    assert 0 < rows[-1]["mfu_causal"] < rows[-1]["mfu"]  # the causal count halves attention's FLOPs
    # a window may hold one language only (long English chapters, runs of hadith); some window has each
    assert any("loss/en" in r and np.isfinite(r["loss/en"]) for r in rows)
    if len(files) == 2:
        assert any("loss/ar" in r and np.isfinite(r["loss/ar"]) for r in rows)


@pytest.fixture
def cpu_transfer_guard(monkeypatch):
    """Makes ``jax.transfer_guard_device_to_host`` bite on CPU too. The CPU backend never enforces it (its
    device memory is host memory), so reads are refused where every host read of an array goes through:
    ``ArrayImpl._value`` (float, int, bool, tolist) and ``__array__`` (jax.device_get)."""
    from jax._src import array, config

    def refused() -> bool:
        return config.transfer_guard_device_to_host.value in ("disallow", "disallow_explicit")

    value, to_numpy = array.ArrayImpl._value, array.ArrayImpl.__array__

    def guarded_value(self):
        if refused():
            raise RuntimeError("device-to-host transfer while the transfer guard disallows it")
        return value.fget(self)

    def guarded_array(self, *args, **kwargs):
        if refused():
            raise RuntimeError("device-to-host transfer (__array__) while the transfer guard disallows it")
        return to_numpy(self, *args, **kwargs)

    monkeypatch.setattr(array.ArrayImpl, "_value", property(guarded_value))
    monkeypatch.setattr(array.ArrayImpl, "__array__", guarded_array)
    with pytest.raises(RuntimeError), jax.transfer_guard_device_to_host("disallow_explicit"):
        jax.device_get(jax.numpy.ones(2) + 1)  # the guard bites


@pytest.mark.slow
def test_steps_between_log_steps_never_read_the_device(files, tmp_path, cpu_transfer_guard):
    """Steps that neither log nor save run with every device-to-host transfer disallowed (explicit ones
    too): the loop queues them on the accelerator without a sync. The logged values are those of a run that
    logs every step (the window's per-language loss is its token-weighted mean)."""
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        train(experiment(files, num_steps=12, log_every=4, checkpoint_every=6), str(tmp_path / "windowed"))
    train(experiment(files, num_steps=12, log_every=1, checkpoint_every=6), str(tmp_path / "every"))
    rows = [json.loads(line) for line in (tmp_path / "windowed/metrics.jsonl").read_text().splitlines()]
    every = {r["step"]: r for r in map(json.loads, (tmp_path / "every/metrics.jsonl").read_text().splitlines())}
    assert [r["step"] for r in rows] == [4, 8, 12]
    for r in rows:
        assert r["loss"] == every[r["step"]]["loss"] and np.isfinite(r["tokens_per_s"])
        for lang in ("en", "ar"):
            window = [every[s][f"loss/{lang}"] for s in range(r["step"] - 3, r["step"] + 1) if f"loss/{lang}" in every[s]]
            assert (f"loss/{lang}" in r) == bool(window)
            if window:  # a token-weighted mean of the window's steps
                assert min(window) - 1e-5 <= r[f"loss/{lang}"] <= max(window) + 1e-5


@pytest.mark.slow
def test_resume_is_bit_exact(files, tmp_path):
    train(experiment(files, num_steps=20), str(tmp_path / "straight"))
    train(experiment(files, num_steps=10), str(tmp_path / "split"))
    assert (tmp_path / "split/checkpoints/10").is_dir()
    train(experiment(files, num_steps=20), str(tmp_path / "split"))
    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 21))
    assert [straight[s] for s in range(1, 21)] == [split[s] for s in range(1, 21)]


@pytest.mark.slow
def test_partial_and_corrupt_checkpoints_fall_back(files, tmp_path, caplog, capfd):
    import gc

    train(experiment(files, num_steps=10, keep_checkpoints=5), str(tmp_path))
    ckdir = tmp_path / "checkpoints"
    (ckdir / "15.orbax-checkpoint-tmp-1234567").mkdir()
    (ckdir / "15.orbax-checkpoint-tmp-1234567" / "junk").write_text("half-written")
    for f in (ckdir / "10" / "state").rglob("*"):
        if f.is_file() and f.name != "_CHECKPOINT_METADATA":
            f.write_bytes(b"\0corrupt")
    caplog.set_level(logging.WARNING)
    with caplog.at_level(logging.INFO):
        train(experiment(files, num_steps=12, keep_checkpoints=5), str(tmp_path))
    text = caplog.text
    assert "ignoring incomplete checkpoint" in text and "15.orbax-checkpoint-tmp" in text
    assert "step 10" in text and "unreadable" in text
    assert "resumed from step 5" in text
    gc.collect()  # asyncio reports an unretrieved exception when its task is collected
    assert "never retrieved" not in caplog.text and "Event loop is closed" not in capfd.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-7:] == [6, 7, 8, 9, 10, 11, 12]


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_checkpoints(files, tmp_path):
    train(experiment(files, num_steps=5), str(tmp_path))
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        train(experiment(files, num_steps=30, optimizer={"learning_rate": 3e38, "warmup_steps": 0}),
              str(tmp_path))
    mngr = ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("state", "data"))
    steps = mngr.all_steps()
    restored = mngr.restore(max(steps), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(restored["state"]))
    mngr.close()


@pytest.mark.slow
def test_checkpoint_from_another_config_is_an_error_not_skipped(files, tmp_path):
    train(experiment(files, num_steps=5), str(tmp_path))
    with pytest.raises(ckpt_lib.CheckpointError, match=r"model config: .*embedding.* is \(384, 32\) on disk, \(384, 48\)"):
        train(experiment(files, num_steps=10, model={"d_model": 48}), str(tmp_path))
    with pytest.raises(ckpt_lib.CheckpointError, match="optimizer config"):
        train(experiment(files, num_steps=10, optimizer={"clip_norm": 0.0}), str(tmp_path))
    assert (tmp_path / "checkpoints/5").is_dir()


@pytest.mark.slow
def test_continued_pretraining_loads_params_with_fresh_optimizer(files, tmp_path):
    train(experiment(files, num_steps=6), str(tmp_path / "base"))
    base = ocp.StandardCheckpointer().restore(tmp_path / "base/checkpoints/6/state")
    train(experiment(files, num_steps=1, init_from=str(tmp_path / "base/checkpoints"),
                     optimizer={"learning_rate": 0.0}), str(tmp_path / "cont"))
    cont = ocp.StandardCheckpointer().restore(tmp_path / "cont/checkpoints/1/state")
    assert int(cont["step"]) == 1
    for a, b in zip(jax.tree_util.tree_leaves(base["params"]), jax.tree_util.tree_leaves(cont["params"])):
        np.testing.assert_array_equal(a, b)
    counts = [int(x) for x in jax.tree_util.tree_leaves(cont["opt_state"]) if np.ndim(x) == 0]
    assert counts and all(c == 1 for c in counts)
    with pytest.raises(ckpt_lib.CheckpointError, match="checkpoint not found"):
        train(experiment(files, num_steps=1, init_from=str(tmp_path / "nope")), str(tmp_path / "c2"))


def _start(gin, workdir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "allam_jax", "train", "--gin_file", str(gin), "--workdir",
                             str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_step(workdir: Path, step: int, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workdir / "metrics.jsonl").exists() and max(losses(workdir), default=0) >= step:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    raise AssertionError("training did not reach step %d" % step)


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_resumes_from_last_complete_checkpoint(files, tmp_path):
    gin = write_gin(tmp_path / "run.gin", files, **{"TrainerConfig.num_steps": 2000,
                                                    "TrainerConfig.checkpoint_every": 4})
    proc = _start(gin, tmp_path / "w")
    _wait_for_step(tmp_path / "w", 14, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = losses(tmp_path / "w")
    committed = sorted(int(p.name) for p in (tmp_path / "w/checkpoints").iterdir() if p.name.isdigit())
    assert committed and committed[-1] >= 8
    gin2 = write_gin(tmp_path / "run2.gin", files, **{"TrainerConfig.num_steps": committed[-1] + 6,
                                                      "TrainerConfig.checkpoint_every": 4})
    proc = _start(gin2, tmp_path / "w")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert f"resumed from step {committed[-1]}" in err
    rows = [json.loads(line) for line in (tmp_path / "w/metrics.jsonl").read_text().splitlines()]
    after = {r["step"]: r["loss"] for r in rows[-6:]}
    assert sorted(after) == list(range(committed[-1] + 1, committed[-1] + 7))
    # Steps logged both before the kill and after the restart must agree bit for bit.
    overlap = [s for s in after if s in before]
    assert overlap and all(after[s] == before[s] for s in overlap)


@pytest.mark.slow
def test_sigterm_saves_then_exits_143(files, tmp_path):
    gin = write_gin(tmp_path / "run.gin", files, **{"TrainerConfig.num_steps": 5000,
                                                    "TrainerConfig.checkpoint_every": 1000})
    proc = _start(gin, tmp_path / "w")
    _wait_for_step(tmp_path / "w", 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    saved = [int(p.name) for p in (tmp_path / "w/checkpoints").iterdir() if p.name.isdigit()]
    assert saved and saved[0] >= 3 and "SIGTERM" in err, err[-3000:]


@pytest.mark.slow
def test_sigterm_during_start_up_says_so(files, tmp_path):
    """A SIGTERM that lands before the first step (data set-up, restore, compile) used to end the process with
    no word at all; now it says what happened, exits 143 and leaves the workdir unlocked and unchanged."""
    from allam_jax.checkpoint.workdir_lock import LOCK_NAME

    gin = write_gin(tmp_path / "run.gin", files, **{"TrainerConfig.num_steps": 5000})
    proc = _start(gin, tmp_path / "w")
    deadline = time.time() + 120
    while not (tmp_path / "w" / LOCK_NAME).exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err or "SIGTERM: saved step" in err, err[-2000:]
    assert not (tmp_path / "w" / LOCK_NAME).exists()


def test_metrics_survive_a_torn_line_and_duplicate_steps(tmp_path):
    from allam_jax.train.metrics import MetricsWriter, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n{"step": 3, "lo')
    w = MetricsWriter(str(tmp_path), tensorboard=True)
    w.write(2, {"loss": 2.25})
    w.write(3, {"loss": 2.0, "nan_metric": float("nan")})
    w.close()
    assert read_metrics(str(tmp_path)) == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.25},
                                           {"step": 3, "loss": 2.0}]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_bucket_metrics_upload_bounded_parts_and_fold_them(tmp_path, monkeypatch):
    """On a bucket (``is_remote``, simulated on a local folder) each write uploads one part of at most
    PART_ROWS rows, never the whole log; a crashed writer's parts are folded in by the next one, a closed
    writer folds its own; read_metrics sees every row at every moment."""
    from allam_jax.checkpoint.workdir import Workdir
    from allam_jax.core import paths
    from allam_jax.train import metrics

    monkeypatch.setattr(Workdir, "remote", property(lambda self: True))
    monkeypatch.setattr(metrics, "PART_ROWS", 10)
    uploads = []
    original = paths.epath.Path.write_text
    monkeypatch.setattr(paths.epath.Path, "write_text",
                        lambda self, text, **kw: uploads.append((self.name, text.count("\n"))) or original(self, text, **kw))
    w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
    for step in range(1, 26):
        w.write(step, {"loss": 1.0 / step})
        assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == list(range(1, step + 1))
    assert max(n for _, n in uploads) == 10 and len(uploads) == 25  # each write: one part, at most 10 rows
    assert not (tmp_path / "metrics.jsonl").exists() and len(list((tmp_path / "metrics.parts").iterdir())) == 3
    # a crash (no close): the next writer folds the 25 rows in, then logs its own (steps 21.. again, resumed)
    w2 = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 25
    assert not list((tmp_path / "metrics.parts").glob("*.jsonl"))
    for step in range(21, 31):
        w2.write(step, {"loss": 2.0})
    w2.close()
    assert not list((tmp_path / "metrics.parts").glob("*.jsonl"))
    rows = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == list(range(1, 31)) and rows[24]["loss"] == 2.0


@pytest.mark.slow
def test_second_trainer_on_a_workdir_is_refused_and_a_stale_lock_is_taken_over(files, tmp_path):
    import json as json_lib
    import os
    import socket

    from allam_jax.core.errors import ConfigError
    from allam_jax.checkpoint.workdir_lock import LOCK_NAME, WorkdirLocked, workdir_lock

    workdir = tmp_path / "w"
    workdir.mkdir()
    exp = experiment(files, num_steps=2)
    with workdir_lock(str(workdir)):  # a live trainer (this very process) holds it
        with pytest.raises(WorkdirLocked, match=f"in use by another trainer .*pid {os.getpid()}") as e:
            train(exp, str(workdir))
        assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)
        assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())
    # a lock left by a process of this host that no longer exists is stale: the run goes ahead and releases it
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = finished.pid
    (workdir / LOCK_NAME).write_text(json_lib.dumps({"host": socket.gethostname(), "pid": dead}))
    train(exp, str(workdir))
    assert (workdir / "checkpoints" / "2").exists() and not (workdir / LOCK_NAME).exists()


def test_tokenizer_larger_than_the_model_vocabulary_stops_before_training(files, tmp_path):
    """259 byte ids against 200 embedding rows used to train into 'loss is nan at step 1'."""
    from allam_jax.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"259 ids but the model has ModelConfig.vocab_size=200"):
        train(experiment(files, num_steps=2, model={"vocab_size": 200}), str(tmp_path))
    assert not (tmp_path / "config.gin").exists() and not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_params_restore_falls_back_past_an_unreadable_step_and_names_a_mismatch(files, tmp_path, caplog, capfd):
    """What eval, generate, chat and export read: a truncated newest step is skipped for the previous one (as
    training's resume does) with one warning line, not the 150-300 lines of abandoned-read echoes
    ("Event loop is closed", "Task exception was never retrieved") Orbax left behind; a checkpoint of another
    shape names the array."""
    import gc
    import time

    from allam_jax.model import Decoder
    from allam_jax.checkpoint.params_io import restore_params
    from allam_jax.core.params import abstract_params

    exp = experiment(files, num_steps=10, keep_checkpoints=5)
    train(exp, str(tmp_path))
    abstract = abstract_params(Decoder(exp.model))
    older = restore_params(str(tmp_path / "checkpoints" / "5"), abstract)
    for f in (tmp_path / "checkpoints" / "10" / "state").rglob("*"):
        if f.is_file() and "_METADATA" not in f.name and f.stat().st_size > 64:
            f.write_bytes(f.read_bytes()[:16])  # truncated
    with caplog.at_level(logging.WARNING):
        params = restore_params(str(tmp_path / "checkpoints"), abstract)
    assert "trying an older step" in caplog.text
    time.sleep(1.0)  # the abandoned reads finish in the background
    gc.collect()  # asyncio reports an unretrieved exception when its task is collected
    echoes = capfd.readouterr().err + "".join(r.getMessage() for r in caplog.records)
    assert "Event loop is closed" not in echoes and "never retrieved" not in echoes
    assert not [r for r in caplog.records if r.name == "absl" and r.levelno == logging.WARNING]
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(older)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wider = abstract_params(Decoder(exp.model.replace(d_model=48, mlp_dim=96)))
    with pytest.raises(ckpt_lib.CheckpointError, match=r"\['embed'\]\['embedding'\] is \(384, 32\) on disk, \(384, 48\)"):
        restore_params(str(tmp_path / "checkpoints" / "5"), wider)


@pytest.mark.slow
def test_a_failed_save_stops_the_run_with_the_step_named(files, tmp_path, monkeypatch):
    """A full disk used to give a 465-line traceback, and training went on for 5 more steps after the background
    save had failed. Both ways a save fails (at once, or later in the background) stop at that point."""
    import errno

    real_save = ocp.CheckpointManager.save

    def full_disk_at_10(self, step, *args, **kwargs):
        if step >= 10:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "now"))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk_at_10)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"saving step 10 to .* No space left on device.*last complete step: 5"):
        train(experiment(files, num_steps=20), str(tmp_path / "now"))
    assert max(losses(tmp_path / "now")) == 10
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)

    calls = {"n": 0}

    def background_failure(self):
        calls["n"] += 1
        if self.latest_step() is not None and self.latest_step() >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", background_failure)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"background save .* failed: .*No space left"):
        train(experiment(files, num_steps=20), str(tmp_path / "later"))
    assert max(losses(tmp_path / "later")) <= 6  # stopped at the first step after the failed save of step 5


@pytest.mark.slow
def test_every_step_unreadable_refuses_to_start_over(files, tmp_path):
    train(experiment(files, num_steps=5, keep_checkpoints=1), str(tmp_path))
    for f in (tmp_path / "checkpoints" / "5" / "state").rglob("*"):
        if f.is_file() and f.name != "_CHECKPOINT_METADATA":
            f.write_bytes(b"\0corrupt")
    with pytest.raises(ckpt_lib.CheckpointError, match="every checkpoint step in .* is unreadable.*refusing to start over"):
        train(experiment(files, num_steps=8, keep_checkpoints=1), str(tmp_path))
    assert max(losses(tmp_path)) == 5  # nothing was trained again from step 0
