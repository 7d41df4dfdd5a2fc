"""Shared builders for training tests: a tiny model on small real files."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from allam_jax.data import corpora
from allam_jax.data.text_files import TextFileData
from allam_jax.model import ModelConfig
from allam_jax.core.partitioning import PartitioningConfig
from allam_jax.train.loop import Experiment, TrainerConfig
from allam_jax.train.optimizer import OptimizerConfig

TINY_MODEL = dict(vocab_size=384, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=64)


_BUNDLED: list[Path] = []


def bundled_dir() -> Path:
    """The full bundled corpora (``allam data prepare``), built once per test process."""
    if not _BUNDLED:
        root = Path(tempfile.mkdtemp(prefix="allam-bundled-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # 0.5 GB a test process: not left in /tmp
        corpora.prepare(str(root / "bundled"))
        from allam_jax.align.bundled import make_alignment_sets

        make_alignment_sets(str(root / "bundled" / "parallel.jsonl"), str(root / "bundled"))
        _BUNDLED.append(root / "bundled")
    return _BUNDLED[0]


def corpus_files(directory: Path, en_docs: int = 300, ar_docs: int = 1500) -> list[str]:
    """Real English and Arabic documents: the first lines of the bundled (shuffled) corpora, so that the
    in-memory TextFileData path stays fast."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name, n in (("en.txt", en_docs), ("ar.txt", ar_docs)):
        lines = (bundled_dir() / name).read_text(encoding="utf-8").splitlines()[:n]
        if lines:
            (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
            files.append(str(directory / name))
    return files


def prepare_tfds_text_dataset(class_name: str, data_dir: Path, field: str, texts: list[str]) -> None:
    """A one-split TFDS text dataset (name: ``class_name`` in snake case) built under ``data_dir`` without any
    download, for the ``tfds:`` source tests."""
    import tensorflow_datasets as tfds

    def info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({field: tfds.features.Text()}))

    def generate(self):
        for i, text in enumerate(texts):
            yield i, {field: text}

    builder = type(class_name, (tfds.core.GeneratorBasedBuilder,), {
        "VERSION": tfds.core.Version("1.0.0"), "_info": info, "_generate_examples": generate,
        "_split_generators": lambda self, dl_manager: {"train": self._generate_examples()}})
    builder(data_dir=str(data_dir)).download_and_prepare()


def experiment(files, num_steps=10, model=None, optimizer=None, **trainer) -> Experiment:
    trainer = {"batch_size": 4, "seq_len": 64, "log_every": 1, "checkpoint_every": 5, "progress_bar": False,
               "tensorboard": False, "num_steps": num_steps, **trainer}
    return Experiment(
        model=ModelConfig(**{**TINY_MODEL, **(model or {})}),
        optimizer=OptimizerConfig(**{"learning_rate": 3e-3, "warmup_steps": 2, "decay_steps": 100, **(optimizer or {})}),
        partitioning=PartitioningConfig(mesh_shape=(1, 1, 1)),
        trainer=TrainerConfig(**trainer),
        data=TextFileData(paths=list(files), languages=["en", "ar"]),
    )


def losses(workdir) -> dict[int, float]:
    """Step -> loss from metrics.jsonl; a line still being written by a live run is skipped."""
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[row["step"]] = row["loss"]
    return out


def write_gin(path: Path, files, **bindings) -> Path:
    lines = ["include 'models/tiny.gin'", f"TextFileData.paths = {json.dumps(list(files))}",
             "ModelConfig.d_model = 32", "ModelConfig.mlp_dim = 64", "PartitioningConfig.mesh_shape = (1, 1, 1)",
             "TrainerConfig.batch_size = 4", "TrainerConfig.seq_len = 64", "TrainerConfig.log_every = 1",
             "TrainerConfig.progress_bar = False", "TrainerConfig.tensorboard = False"]
    lines += [f"{k} = {v}" for k, v in bindings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def allam(*args, timeout=600, **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "allam_jax", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **popen)


def file_size_limited(max_bytes: int, *argv: str) -> list[str]:
    """A command running ``python -m allam_jax ARGV`` whose writes past ``max_bytes`` per file fail with EFBIG, as
    a full disk's fail with ENOSPC: a real write failure without root. Set in the child itself (not with
    ``preexec_fn``, which forks a multithreaded process); an ignored SIGXFSZ makes the write fail instead of
    killing the process."""
    import sys

    code = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_bytes}, {max_bytes})); "
            "sys.argv = ['allam'] + sys.argv[1:]; runpy.run_module('allam_jax', run_name='__main__')")
    return [sys.executable, "-c", code, *argv]


def check_batch_contract(it, rows: int, seq_len: int, extra=()) -> None:
    """A data source's iterator keeps ``data/batch.py``'s contract: tokenizer, languages and stage said; every
    batch exactly the layout (plus an objective's ``extra`` features); ``set_state`` returns to ``get_state``."""
    import numpy as np

    from allam_jax.data.batch import BATCH_FEATURES

    assert it.vocab is not None and len(it.languages) >= 2 and it.stage is None
    batch = next(it)
    assert set(batch) == set(BATCH_FEATURES) | set(extra)
    for name, dtype in BATCH_FEATURES.items():
        assert batch[name].shape == (rows, seq_len) and batch[name].dtype == np.dtype(dtype), name
    state = it.get_state()
    after = next(it)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["inputs"], after["inputs"])
