"""tpu_scripts: every script's --dry-run prints the exact gcloud commands it would run."""

import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parents[1] / "tpu_scripts"


def dry_run(script, *args):
    r = subprocess.run(["bash", str(SCRIPTS / script), *args, "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("tpu,runtime", [("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                         ("v5p-8", "v2-alpha-tpuv5")])
def test_create(tpu, runtime):
    [cmd] = dry_run("create.sh", "--name", "exp1", "--zone", "us-east5-b", "--type", tpu, "--spot")
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "exp1", "--zone", "us-east5-b",
                   "--accelerator-type", tpu, "--version", runtime, "--spot"]
    [cmd] = dry_run("create.sh", "--name", "exp1", "--zone", "z", "--type", tpu, "--queued", "--project", "p")
    assert cmd == ["gcloud", "compute", "tpus", "queued-resources", "create", "exp1", "--node-id", "exp1", "--zone",
                   "z", "--accelerator-type", tpu, "--runtime-version", runtime, "--project", "p"]


def test_setup_launch_logs_delete():
    cmds = dry_run("setup_workers.sh", "--name", "exp1", "--zone", "z")
    assert cmds[1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/allam-jax.tgz"] and "--worker=all" in cmds[1]
    assert "bash setup.sh &&" in cmds[2][-1] and "uv python install 3.12" in cmds[2][-1] and "--worker=all" in cmds[2]
    assert "pip install -q 'jax" not in cmds[2][-1]  # libtpu comes with setup.sh's pins, as compiled here
    [cmd] = dry_run("launch.sh", "--name", "exp1", "--zone", "z", "--gin_file", "runs/tiny_cpu.gin", "--workdir",
                    "gs://bucket/run 1", "--gin_bindings", "TrainerConfig.num_steps = 5")
    assert cmd[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "exp1", "--zone", "z", "--worker=all"]
    remote = shlex.split(cmd[-1].split(" > ")[0])  # what each worker runs
    assert remote[3:] == ["nohup", ".venv/bin/allam", "train", "--distributed=auto", "--gin_file=runs/tiny_cpu.gin", "--workdir=gs://bucket/run 1",
                          "--gin_bindings=TrainerConfig.num_steps = 5"]
    [cmd] = dry_run("logs.sh", "--name", "exp1", "--zone", "z")
    assert "--worker=0" in cmd and cmd[-1].startswith("tail -n 200 -f")
    stop, delete = dry_run("delete.sh", "--name", "exp1", "--zone", "z")
    assert "pkill -TERM" in stop[-1]
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "exp1", "--zone", "z", "--quiet"]


def test_bad_flags_fail_with_one_line():
    r = subprocess.run(["bash", str(SCRIPTS / "create.sh"), "--zone", "z", "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "create.sh: error: --name is required (see --help)"
    r = subprocess.run(["bash", str(SCRIPTS / "create.sh"), "--name", "a", "--zone", "z", "--type", "v9-8",
                        "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown accelerator type 'v9-8'" in r.stderr


def test_a_dir_with_spaces_or_shell_metacharacters_stays_one_name_on_the_workers():
    evil = "x; touch PWNED #"
    setup = dry_run("setup_workers.sh", "--name", "exp1", "--zone", "z", "--dir", evil)
    launch, = dry_run("launch.sh", "--name", "exp1", "--zone", "z", "--gin_file", "a.gin", "--workdir", "w", "--dir", evil)
    logs, = dry_run("logs.sh", "--name", "exp1", "--zone", "z", "--dir", "my runs")
    for remote in (setup[2][-1], launch[-1]):
        words = shlex.split(remote)  # as the remote shell splits it
        assert "touch" not in words and not any(w.startswith("PWNED") for w in words), remote
        assert any(w.endswith("x; touch PWNED #") or "x; touch PWNED #/" in w for w in words), words
    assert "~/my\\ runs/train.log" in logs[-1]


def test_multislice_resources_are_one_queued_resource_of_n_slices_and_every_slice_gets_the_job():
    [create] = dry_run("create.sh", "--name", "big", "--zone", "z", "--type", "v5p-128", "--slices", "4")
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "big", "--node-count", "4",
                      "--node-prefix", "big", "--zone", "z", "--accelerator-type", "v5p-128", "--runtime-version",
                      "v2-alpha-tpuv5"]
    launch = dry_run("launch.sh", "--name", "big", "--zone", "z", "--slices", "4", "--gin_file",
                     "runs/allam_7b_stage1_en_4slices.gin", "--workdir", "gs://b/r")
    assert [c[5] for c in launch] == ["big-0", "big-1", "big-2", "big-3"]
    assert all("--worker=all" in c and c[-1] == launch[0][-1] for c in launch)
    setup = dry_run("setup_workers.sh", "--name", "big", "--zone", "z", "--slices", "2")
    assert [c[6].split(":")[0] for c in setup if c[4] == "scp"] == ["big-0", "big-1"]
    *stops, delete = dry_run("delete.sh", "--name", "big", "--zone", "z", "--slices", "2")
    assert [c[5] for c in stops] == ["big-0", "big-1"]
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "big"]
    [logs] = dry_run("logs.sh", "--name", "big", "--zone", "z", "--slices", "2")
    assert logs[5] == "big-0"
    r = subprocess.run(["bash", str(SCRIPTS / "launch.sh"), "--name", "a", "--zone", "z", "--slices", "0",
                        "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "launch.sh: error: --slices takes a count >= 1, got '0'"
