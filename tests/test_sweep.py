"""allam sweep: variants file, printed commands, and a real two-variant run."""

import json
import shlex

import pytest

from allam_jax.core.errors import ConfigError
from allam_jax.sweep import read_variants
from helpers import allam, corpus_files, write_gin


def _variants(tmp_path, text):
    p = tmp_path / "variants.txt"
    p.write_text(text)
    return p


def test_variants_file_and_errors(tmp_path):
    p = _variants(tmp_path, "# ablations\n[a]\nTrainerConfig.seed = 1\n\n[b]\nTrainerConfig.seed = 2\nStepConfig.z_loss_weight = 0.0\n")
    assert read_variants(str(p)) == {"a": ["TrainerConfig.seed = 1"],
                                     "b": ["TrainerConfig.seed = 2", "StepConfig.z_loss_weight = 0.0"]}
    with pytest.raises(ConfigError, match=r"variants.txt:1: a binding before the first \[variant\]"):
        read_variants(str(_variants(tmp_path, "TrainerConfig.seed = 1\n")))
    with pytest.raises(ConfigError, match=r"variant \[a\] appears twice"):
        read_variants(str(_variants(tmp_path, "[a]\n[a]\n")))


@pytest.mark.slow
def test_sweep_prints_local_and_launcher_commands(tmp_path):
    v = _variants(tmp_path, "[arabic_only]\nSeqioData.rates = {'ar_pretrain': 1.0}\n[base]\n")
    r = allam("sweep", "--gin_file=runs/tiny_cpu.gin", f"--variants={v}", "--root=gs://bucket/abl", "--print_only",
              "--gin_bindings=TrainerConfig.num_steps = 10")
    assert r.returncode == 0, r.stderr[-2000:]
    first, second = (shlex.split(line) for line in r.stdout.strip().splitlines())
    assert first[-3:] == ["--workdir=gs://bucket/abl/arabic_only", "--gin_bindings=TrainerConfig.num_steps = 10",
                          "--gin_bindings=SeqioData.rates = {'ar_pretrain': 1.0}"]
    assert second[-2] == "--workdir=gs://bucket/abl/base"
    r = allam("sweep", "--gin_file=runs/tiny_cpu.gin", f"--variants={v}", "--root=gs://b/abl",
              "--launcher=tpu_scripts/launch.sh --name exp1 --zone z")
    cmd = shlex.split(r.stdout.strip().splitlines()[0])
    assert cmd == ["tpu_scripts/launch.sh", "--name", "exp1", "--zone", "z", "--gin_file", "runs/tiny_cpu.gin",
                   "--workdir", "gs://b/abl/arabic_only", "--gin_bindings", "SeqioData.rates = {'ar_pretrain': 1.0}"]
    bad = _variants(tmp_path, "[oops]\nTrainerConfig.num_stepz = 3\n")
    r = allam("sweep", "--gin_file=runs/tiny_cpu.gin", f"--variants={bad}", "--root=/tmp/x", "--print_only")
    assert r.returncode == 2 and "variant [oops]" in r.stderr and "num_stepz" in r.stderr


@pytest.mark.slow
def test_sweep_runs_variants_and_summarises(tmp_path):
    gin = write_gin(tmp_path / "base.gin", corpus_files(tmp_path / "c", en_docs=40, ar_docs=100),
                    **{"TrainerConfig.num_steps": 3})
    v = _variants(tmp_path, "[lr_low]\nOptimizerConfig.learning_rate = 1e-4\n[lr_high]\nOptimizerConfig.learning_rate = 3e-3\n")
    r = allam("sweep", f"--gin_file={gin}", f"--variants={v}", f"--root={tmp_path / 'sweep'}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [row["variant"] for row in rows] == ["lr_low", "lr_high"]
    assert all(row["returncode"] == 0 and row["metrics"]["step"] == 3 for row in rows)
    assert rows[0]["metrics"]["learning_rate"] != rows[1]["metrics"]["learning_rate"]
    assert "| lr_high | 0 | 3 |" in (tmp_path / "sweep" / "sweep.md").read_text()
