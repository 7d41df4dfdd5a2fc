"""A run's profile (``--profile``) and its wall-time accounting (``WORKDIR/goodput.json``), restarts included."""

import glob
import json
import shutil

import pytest

from helpers import allam, corpus_files, write_gin


def _steps_in_trace(path: str) -> list[int]:
    """The step numbers of the ``train`` step annotations in an XPlane trace, read with TensorFlow's own proto."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    steps = []
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stats = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                if names.get(event.metadata_id) == "train":
                    steps += [s.int64_value or s.uint64_value for s in event.stats
                              if stats.get(s.metadata_id) == "step_num"]
    return sorted(steps)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run 1: 5 steps (saves 3 and 5), steps 2..3 profiled; step 5's checkpoint then lost, as in a crash before it
    was written; run 2 resumes from 3 and goes to 6."""
    d = tmp_path_factory.mktemp("goodput")
    gin = write_gin(d / "run.gin", corpus_files(d / "corpus", en_docs=40, ar_docs=120),
                    **{"TrainerConfig.checkpoint_every": 3, "TrainerConfig.log_every": 2,
                       "TrainerConfig.async_checkpointing": False})
    work = d / "w"
    first = allam("train", f"--gin_file={gin}", f"--workdir={work}", "--gin_bindings=TrainerConfig.num_steps = 5",
                  "--profile", "2,2")
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = json.loads((work / "goodput.json").read_text())
    shutil.rmtree(work / "checkpoints" / "5")
    second = allam("train", f"--gin_file={gin}", f"--workdir={work}", "--gin_bindings=TrainerConfig.num_steps = 6")
    assert second.returncode == 0, second.stderr[-3000:]
    return work, first, second, after_first, json.loads((work / "goodput.json").read_text())


@pytest.mark.slow
def test_profile_traces_exactly_the_asked_steps(runs):
    work = runs[0]
    traces = glob.glob(str(work / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1, traces
    assert _steps_in_trace(traces[0]) == [2, 3]


@pytest.mark.slow
def test_goodput_accounts_for_wall_time_and_the_steps_a_restart_lost(runs):
    work, first, second, before, after = runs
    assert before["runs"] == 1 and after["runs"] == 2
    assert after["first_start"] == before["first_start"]
    # the parts, the time nobody accounted for (imports, the gap between runs) and nothing else make the wall time
    for summary in (before, after):
        assert sum(summary["totals"].values()) + summary["unaccounted_s"] == pytest.approx(summary["wall_s"], rel=1e-6)
        assert summary["goodput"] == pytest.approx(summary["productive_s"] / summary["wall_s"])
        assert summary["totals"]["compile"] > 0 and summary["totals"]["startup"] > 0
    # run 2 resumed from step 3: steps 4 and 5 of run 1 were done twice, and their first time is lost
    assert after["lost_s"] == pytest.approx(before["productive_s"] - before["saved"]["3"])
    assert after["lost_s"] > 0
    assert after["productive_s"] == pytest.approx(after["totals"]["step"] - after["lost_s"], rel=1e-6)
    assert sorted(int(s) for s in after["saved"]) == [3, 6]
    assert "goodput" in second.stderr and "over 2 run(s)" in second.stderr


@pytest.mark.slow
def test_metrics_split_each_logged_step(runs):
    work = runs[0]
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for part in ("data", "step", "checkpoint", "compile", "eval"):
            assert row[f"time/{part}"] >= 0
        assert 0 < row["goodput"] < 1
    first_log = rows[0]
    assert first_log["time/compile"] > first_log["time/step"]  # step 1 compiles the step


@pytest.mark.slow
def test_bad_profile_flags_are_one_line_errors(tmp_path):
    gin = write_gin(tmp_path / "g.gin", corpus_files(tmp_path / "c", en_docs=5, ar_docs=5))
    for value, fragment in (("2", "--profile takes START,COUNT"), ("2,0", "--profile takes START,COUNT")):
        r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / 'w'}", "--profile", value)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and fragment in lines[-1], r.stderr[-2000:]
    r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / 'w'}",
              "--gin_bindings=TrainerConfig.profile_steps = (1, 2, 3)")
    assert r.returncode == 2 and "TrainerConfig.profile_steps must be (start >= 0, count >= 1)" in r.stderr
