import json

import pytest

from helpers import allam, corpus_files, write_gin


@pytest.fixture(scope="module")
def gin(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return write_gin(d / "run.gin", corpus_files(d / "corpus"), **{"TrainerConfig.num_steps": 3})


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("allam: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("binding,fragments", [
    ("ModelConfig.num_layrs = 2", ["num_layrs"]),
    ("NoSuchThing.x = 1", ["NoSuchThing"]),
    ("ModelConfig.num_layers = 'two'", ["ModelConfig.num_layers", "'two'"]),
    ("TrainerConfig.batch_size = -4", ["TrainerConfig.batch_size", "-4"]),
    ("OptimizerConfig.schedule = 'wavy'", ["OptimizerConfig.schedule", "'wavy'"]),
    ("PartitioningConfig.mesh_shape = (2, 2, 2)", ["needs 8 devices, but there are 1"]),
    ("TextFileData.paths = ['/nonexistent/corpus.txt']", ["/nonexistent/corpus.txt"]),
    ("ModelConfig.num_layers = (", ["bad gin binding 'ModelConfig.num_layers = ('"]),
])
def test_bad_bindings_give_one_line_and_exit_2(gin, tmp_path, binding, fragments):
    r = allam("train", "--gin_file", str(gin), "--workdir", str(tmp_path / "w"), "--gin_bindings", binding)
    _one_line_error(r, *fragments)
    assert not (tmp_path / "w" / "checkpoints").exists() or not any((tmp_path / "w" / "checkpoints").iterdir())


@pytest.mark.slow
def test_missing_gin_file_names_it(tmp_path):
    r = allam("train", "--gin_file", "nope/missing.gin", "--workdir", str(tmp_path))
    _one_line_error(r, "nope/missing.gin")


@pytest.mark.slow
def test_train_via_python_dash_m_module_and_bindings(gin, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "allam_jax.train", "--gin_file", str(gin), "--workdir",
                        str(tmp_path / "w"), "--gin_bindings", "TrainerConfig.num_steps = 2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["workdir"] == str(tmp_path / "w") and summary["loss"] > 0
    assert "TrainerConfig.num_steps = 2" in (tmp_path / "w" / "config.gin").read_text()
    rows = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("gin_file,low,high", [
    ("models/allam_1b.gin", 0.95e9, 1.05e9), ("models/allam_7b.gin", 6.9e9, 7.1e9),
    ("models/allam_13b.gin", 12.8e9, 13.5e9),
    ("models/allam_70b.gin", 68e9, 70e9),
])
def test_info_reports_param_counts(gin_file, low, high):
    r = allam("info", "--gin_file", gin_file, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert low <= info["params"] <= high
    assert info["train_flops_per_token"] == 3 * info["forward_flops_per_token"]


@pytest.mark.slow
def test_help_explains_every_flag():
    for args in (["--help"], ["train", "--help"], ["info", "--help"], ["data", "prepare", "--help"]):
        r = allam(*args)
        assert r.returncode == 0 and "usage: allam" in r.stdout
    text = allam("train", "--help").stdout
    for flag in ("--gin_file", "--gin_bindings", "--workdir"):
        assert flag in text


@pytest.mark.slow
def test_refused_resume_keeps_the_accepted_config_gin(gin, tmp_path):
    """A resume refused for a shape mismatch must not overwrite WORKDIR/config.gin with the refused config."""
    from allam_jax import runner
    from allam_jax.checkpoint.regular import CheckpointError

    workdir = str(tmp_path / "w")
    runner.train_from_gin([str(gin)], ["TrainerConfig.num_steps = 2"], workdir)
    accepted = (tmp_path / "w" / "config.gin").read_text()
    assert "ModelConfig.d_model = 32" in accepted
    with pytest.raises(CheckpointError):
        runner.train_from_gin([str(gin)], ["TrainerConfig.num_steps = 4", "ModelConfig.d_model = 48"], workdir)
    assert (tmp_path / "w" / "config.gin").read_text() == accepted


@pytest.mark.slow
def test_startup_is_quiet_on_a_cpu_machine(tmp_path):
    """TensorFlow's start-up lines (oneDNN, CUDA drivers, cuInit) and libtpu's missing-TPU warnings stay out of
    stderr: a bad input prints its one line and nothing else."""
    r = allam("data", "inspect", "--batches", "2", "--gin_bindings", f"CorpusPaths.en = ['{tmp_path}/none.txt']")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"allam: error: data file not found: {tmp_path}/none.txt"], r.stderr


@pytest.mark.slow
def test_os_errors_and_corrupt_tokenizer_are_one_line(gin, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for workdir in (a_file / "w", a_file):  # under a file, or the file itself
        r = allam("train", "--gin_file", str(gin), "--workdir", str(workdir))
        _one_line_error(r, f"{a_file} is a file, but a folder is needed there", str(workdir))
    bad_model = tmp_path / "broken.model"
    bad_model.write_bytes(b"\x00garbage\x01\x02")
    r = allam("generate", "--gin_file", "models/tiny.gin", "--ckpt", str(tmp_path / "none"), "--vocabulary",
              str(bad_model), "--prompt", "hello")
    _one_line_error(r, str(bad_model), "not a readable SentencePiece model")


def _as_a_plain_user() -> list[str]:
    """Root ignores file modes; a new user namespace (``unshare -U``) runs the command as an unprivileged user."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") and subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-U"]
    pytest.skip("running as root without user namespaces: a read-only folder cannot be made read-only for us")


@pytest.mark.slow
def test_read_only_workdir_is_one_line_and_changes_nothing(gin, tmp_path):
    import os
    import subprocess
    import sys

    from allam_jax.checkpoint.workdir_lock import LOCK_NAME

    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "config.gin").write_text("# an earlier run's\n")
    os.chmod(ro, 0o555)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    as_user = _as_a_plain_user()
    try:
        for workdir, culprit in ((ro, str(ro / LOCK_NAME)), (ro / "new", str(ro / "new"))):
            r = subprocess.run([*as_user, sys.executable, "-m", "allam_jax", "train", "--gin_file", str(gin),
                                "--workdir", str(workdir)], capture_output=True, text=True, env=env, timeout=600)
            _one_line_error(r, "Permission denied", culprit)
        assert sorted(p.name for p in ro.iterdir()) == ["config.gin"]
        assert (ro / "config.gin").read_text() == "# an earlier run's\n"
    finally:
        os.chmod(ro, 0o755)
