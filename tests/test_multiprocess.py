"""Real multi-process training on this machine: 2 and 4 CPU processes (gloo collectives) on one mesh."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import corpus_files, losses, write_gin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(n: int, gin: Path, workdir: Path, steps: int, mesh: str = "", *bindings: str) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for i in range(n):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // n}", TF_CPP_MIN_LOG_LEVEL="3",
                   JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "allam_jax", "train", f"--gin_file={gin}", f"--workdir={workdir}",
                f"--gin_bindings=TrainerConfig.num_steps = {steps}"]
        if mesh:
            args.append(f"--gin_bindings=PartitioningConfig.mesh_shape = {mesh}")
        args += [f"--gin_bindings={b}" for b in bindings]
        if n > 1:
            args += [f"--coordinator_address=localhost:{port}", f"--num_processes={n}", f"--process_id={i}",
                     "--distributed_timeout=120"]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return procs


def _train(n: int, gin: Path, workdir: Path, steps: int, mesh: str = "", *bindings: str) -> None:
    procs = _start(n, gin, workdir, steps, mesh, *bindings)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("mp")
    gin = write_gin(d / "run.gin", corpus_files(d / "corpus", en_docs=60, ar_docs=200), **{
        "PartitioningConfig.mesh_shape": "(2, 2, 2)", "TrainerConfig.batch_size": 8, "TrainerConfig.checkpoint_every": 3,
        "TrainerConfig.async_checkpointing": False})
    _train(1, gin, d / "single", 6)
    return d, gin, losses(d / "single")


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_processes_match_one_process_with_the_same_mesh(setup, n):
    d, gin, want = setup
    _train(n, gin, d / f"p{n}", 6)
    got = losses(d / f"p{n}")
    assert sorted(got) == list(range(1, 7))
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=1e-5), step


@pytest.mark.slow
def test_checkpoints_move_between_process_counts(setup):
    d, gin, want = setup
    _train(2, gin, d / "2to1", 3)   # written by 2 processes ...
    _train(1, gin, d / "2to1", 6)   # ... continued by one
    _train(1, gin, d / "1to2", 3)
    _train(2, gin, d / "1to2", 6)
    for run in ("2to1", "1to2"):
        got = losses(d / run)
        for step in range(4, 7):
            assert got[step] == pytest.approx(want[step], rel=1e-5), (run, step)


@pytest.mark.slow
def test_two_slices_of_processes_match_one_process_and_resume_onto_one_slice(setup):
    """4 processes as 2 slices of 2 hosts (PartitioningConfig.num_slices: consecutive processes form a slice), each
    slice a (1, 2, 2) mesh and the slices on data: the same (2, 2, 2) mesh as the one-process run, so the same
    losses; its checkpoint then continues on one slice (one process, no DCN axis) with the same batches."""
    d, gin, want = setup
    _train(4, gin, d / "slices", 3, "(1, 2, 2)", "PartitioningConfig.num_slices = 2")
    _train(1, gin, d / "slices", 6)
    got = losses(d / "slices")
    assert sorted(got) == list(range(1, 7))
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), step


def _emergency(local: Path) -> tuple[str, ...]:
    return ("PartitioningConfig.num_slices = 2", "CheckpointConfig.emergency = True",
            f"CheckpointConfig.local_dir = '{local}/{{process}}'", "CheckpointConfig.local_every = 1")


@pytest.mark.slow
def test_emergency_checkpoints_resume_from_a_peer_or_the_bucket_after_sigkill(setup):
    """2 processes as 2 slices (replicas on data): slice 0 saves the persistent checkpoint every 3 steps, slice 1
    its host-local copy every step. SIGKILL the job past step 5; restart: from the newest local step (newer than
    the persistent one), broadcast to slice 0; with slice 1's local directory gone, from the persistent step.
    Both continue with the one-process run's losses."""
    import shutil
    import signal
    import time

    from helpers import losses as read_losses

    d, gin, _ = setup
    _train(1, gin, d / "straight10", 10)
    want = read_losses(d / "straight10")
    work, local = d / "emergency", d / "local"
    procs = _start(2, gin, work, 1000, "(1, 2, 2)", *_emergency(local))
    deadline = time.time() + 300
    while not (work / "metrics.jsonl").exists() or max(read_losses(work), default=0) < 5:
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
        assert time.time() < deadline, "no step 5 logged"
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    killed_at = max(read_losses(work))
    assert killed_at < 9, killed_at
    persistent = max(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    local_steps = sorted(int(p.name) for p in (local / "1").iterdir() if p.name.isdigit())
    assert local_steps and local_steps[-1] > persistent, (local_steps, persistent)  # the local tier is ahead

    lost = d / "emergency_lost_host"  # the same moment, but slice 1's host lost its disk
    shutil.copytree(work, lost)
    shutil.copytree(local / "0", d / "local_lost" / "0")
    (d / "local_lost" / "1").mkdir()

    for run, loc, resumed in ((work, local, local_steps[-1]), (lost, d / "local_lost", persistent)):
        procs = _start(2, gin, run, 10, "(1, 2, 2)", *_emergency(loc))
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        assert f"emergency checkpoints: restored step {resumed}" in outs[0][1], outs[0][1][-3000:]
        got = read_losses(run)
        for step in range(resumed + 1, 11):
            assert got[step] == pytest.approx(want[step], rel=1e-4), (run.name, step)

    from helpers import allam

    one = "--gin_bindings=PartitioningConfig.mesh_shape = (1, 1, 1)"  # this process has one device
    regular = allam("train", f"--gin_file={gin}", f"--workdir={work}", "--gin_bindings=TrainerConfig.num_steps = 12", one)
    assert regular.returncode == 1 and "holds emergency checkpoints" in regular.stderr.splitlines()[-1], \
        regular.stderr[-2000:]
    moved = allam("train", f"--gin_file={gin}", f"--workdir={d / 'from_emergency'}", one,
                  "--gin_bindings=TrainerConfig.num_steps = 1",
                  f"--gin_bindings=TrainerConfig.init_from = '{work / 'checkpoints'}'")  # its parameters, in a new run
    assert moved.returncode == 0 and "initialised parameters from" in moved.stderr, moved.stderr[-3000:]


@pytest.mark.slow
def test_bad_distributed_settings_are_one_line_errors(tmp_path):
    from helpers import allam

    gin = write_gin(tmp_path / "g.gin", [str(_write(tmp_path))])
    r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / 'w'}", "--num_processes=2", "--process_id=2",
              "--coordinator_address=localhost:1")
    assert r.returncode == 2 and "--process_id 2 is out of range for --num_processes 2" in r.stderr
    r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / 'w'}", "--num_processes=2", "--process_id=1",
              f"--coordinator_address=localhost:{_free_port()}", "--distributed_timeout=3")
    assert r.returncode == 2 and "could not join the distributed job" in r.stderr.strip().splitlines()[-1]


def _write(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("some english text for the test\n" * 20)
    return p


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_sigterm_to_one_process_saves_one_agreed_step_on_all(setup, n):
    """SIGTERM to the last process only: every process stops after saving the same step (JAX's preemption
    sync point), exits 143, and the restart continues with the losses of a run that never stopped."""
    import json
    import re
    import signal
    import time

    d, gin, _ = setup
    workdir = d / f"preempt{n}"
    procs = _start(n, gin, workdir, 5000)
    deadline = time.time() + 300
    while len(losses(workdir) if (workdir / "metrics.jsonl").exists() else {}) < 3:
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
        assert time.time() < deadline, "the run logged no step 3"
        time.sleep(0.1)
    procs[-1].send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [143] * n, [e[-1500:] for e in errs]
    saved = {int(m) for e in errs for m in re.findall(r"SIGTERM: saved step (\d+)", e)}
    assert len(saved) == 1 and all("SIGTERM: saved step" in e for e in errs), [e[-1500:] for e in errs]
    step = saved.pop()
    assert (workdir / "checkpoints" / str(step)).is_dir()
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
    _train(n, gin, workdir, step + 3)
    _train(1, gin, d / f"straight{n}", step + 3)
    want, got = losses(d / f"straight{n}"), {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        got[row["step"]] = row["loss"]  # the restart's rows come last
    for s in range(step + 1, step + 4):
        assert got[s] == pytest.approx(want[s], rel=1e-5), s


_MOVE_RUN = ["ModelConfig.d_model = 32", "ModelConfig.mlp_dim = 64", "TrainerConfig.batch_size = 8",
             "TrainerConfig.seq_len = 64", "TrainerConfig.log_every = 1", "TrainerConfig.checkpoint_every = 2",
             "TrainerConfig.progress_bar = False", "TrainerConfig.tensorboard = False",
             "TrainerConfig.async_checkpointing = False"]


def _assert_moves_between_1_2_and_4_processes(tmp_path: Path, data_lines: list[str]) -> None:
    """Written by 2 processes, continued by 4, finished by 1 (each with its own mesh over 8 devices), the run
    logs the straight single-process run's losses."""
    gin = tmp_path / "run.gin"
    gin.write_text("\n".join(["include 'models/tiny.gin'", *data_lines, *_MOVE_RUN]) + "\n")
    _train(1, gin, tmp_path / "straight", 6)
    _train(2, gin, tmp_path / "moved", 2, mesh="(2, 2, 2)")
    _train(4, gin, tmp_path / "moved", 4, mesh="(4, 2, 1)")
    _train(1, gin, tmp_path / "moved", 6, mesh="(1, 4, 2)")
    want, got = losses(tmp_path / "straight"), losses(tmp_path / "moved")
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert got[step] == pytest.approx(want[step], rel=2e-5), step


@pytest.mark.slow
def test_seqio_checkpoint_moves_between_1_2_and_4_processes(tmp_path):
    """On the seqio mixture with ``SeqioData.data_shards = 4``."""
    from helpers import bundled_dir

    b = bundled_dir()
    _assert_moves_between_1_2_and_4_processes(tmp_path, [
        "include 'data/ar_en_translated.gin'",
        f"CorpusPaths.en = ['{b / 'en.txt'}']", f"CorpusPaths.ar = ['{b / 'ar.txt'}']",
        f"CorpusPaths.parallel = ['{b / 'parallel.jsonl'}']", "SeqioData.data_shards = 4",
        "SeqioData.rate_unit = 'examples'", "SeqioData.shuffle_buffer = 200"])


@pytest.mark.slow
def test_cached_mixture_moves_between_1_2_and_4_processes(tmp_path):
    """On cached tasks (``allam data cache``): each process reads only its rows of the global batch."""
    from allam_jax.data.cache_job import run_cache
    from allam_jax.data.sources import CleaningConfig, ParallelRendering
    from allam_jax.data.tasks import CorpusPaths
    from helpers import bundled_dir

    b = bundled_dir()
    paths = CorpusPaths(en=[str(b / "en.txt")], ar=[str(b / "ar.txt")], parallel=[str(b / "parallel.jsonl")])
    run_cache(str(tmp_path / "cached"), paths, "byte", CleaningConfig(min_chars=8), ParallelRendering(), num_shards=2)
    _assert_moves_between_1_2_and_4_processes(tmp_path, [
        "include 'data/cached_ar_en_translated.gin'", f"CachedData.cache_dir = '{tmp_path / 'cached'}'"])
