"""``gs://`` end to end against a Cloud Storage emulator started here on 127.0.0.1 (gcs_emulator.py):
train -> SIGKILL -> resume with the workdir, the data and TensorBoard in a bucket; ``init_from`` a bucket;
``convert to-hf`` from a bucket checkpoint with a bucket tokenizer, into a bucket; ``allam data cache`` from a
bucket corpus into a bucket cache, and training on it and on the bucket corpus. Nothing may land in a local
``gs:`` folder.

Which clients reach the emulator: etils.epath through gcsfs (``EPATH_USE_TF=false``; on a real VM epath uses
TensorFlow's GCS client, whose endpoint is fixed to Google's servers and cannot be pointed at an emulator),
Orbax's TensorStore (``TENSORSTORE_GCS_HTTP_URL``) and tensorboardX (google-cloud-storage,
``STORAGE_EMULATOR_HOST``). Training text (the seqio sources, SFT files, the cached tasks) and the Beam cache
job's reads and writes go through epath too, so both data pipelines are exercised on a bucket; ``tfds:``
sources (TensorFlow's GCS client) are not.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import corpus_files, losses

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A fresh emulator, a bucket ``allam-test`` and the environment a client process needs to reach it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator", EPATH_USE_TF="false",
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", GOOGLE_CLOUD_PROJECT="test", NO_GCE_CHECK="true",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    emulator = subprocess.Popen([sys.executable, str(Path(__file__).with_name("gcs_emulator.py")), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or emulator.poll() is not None:
                raise RuntimeError("the storage emulator did not start")
            time.sleep(0.2)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=url)
    fs.mkdir("allam-test")
    yield fs, env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    emulator.terminate()
    emulator.wait(timeout=10)


def _logged_steps(fs, run: str) -> set[int]:
    """Steps logged so far by a live bucket run: ``metrics.jsonl`` and the part objects not yet folded in."""
    fs.invalidate_cache()
    files = [f"{run}/metrics.jsonl"] if fs.exists(f"{run}/metrics.jsonl") else []
    files += sorted(fs.glob(f"{run}/metrics.parts/*.jsonl"))
    steps = set()
    for path in files:
        with fs.open(path, "r") as f:
            steps |= {json.loads(line)["step"] for line in f.read().splitlines() if line.strip()}
    return steps


def _allam(env, cwd, *args, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "allam_jax", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout, **kw)


def _gin(path: Path, data: list[str], **bindings) -> Path:
    lines = ["include 'models/tiny.gin'", f"TextFileData.paths = {json.dumps(data)}",
             "ModelConfig.d_model = 32", "ModelConfig.mlp_dim = 64", "PartitioningConfig.mesh_shape = (1, 1, 1)",
             "TrainerConfig.batch_size = 4", "TrainerConfig.seq_len = 64", "TrainerConfig.log_every = 1",
             "TrainerConfig.progress_bar = False", "TrainerConfig.checkpoint_every = 4"]
    path.write_text("\n".join(lines + [f"{k} = {v}" for k, v in bindings.items()]) + "\n")
    return path


def test_train_kill_resume_init_from_and_export_in_a_bucket(bucket, tmp_path):
    fs, env = bucket
    work = tmp_path / "cwd"
    work.mkdir()
    local = corpus_files(tmp_path / "corpus", en_docs=200, ar_docs=600)
    for f in local:
        fs.put(f, f"allam-test/data/{Path(f).name}")
    data = [f"gs://allam-test/data/{Path(f).name}" for f in local]

    # the straight run, locally: the reference losses
    straight = tmp_path / "straight"
    r = _allam(env, work, "train", "--gin_file", str(_gin(tmp_path / "a.gin", local, **{
        "TrainerConfig.num_steps": 12, "TrainerConfig.tensorboard": False})), "--workdir", str(straight))
    assert r.returncode == 0, r.stderr[-3000:]

    # the same run in the bucket, killed once step 4 is committed, then resumed
    run = "gs://allam-test/runs/a"
    gin = _gin(tmp_path / "b.gin", data, **{"TrainerConfig.num_steps": 12, "TrainerConfig.async_checkpointing": False})
    proc = subprocess.Popen([sys.executable, "-m", "allam_jax", "train", "--gin_file", str(gin), "--workdir", run],
                            env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not _logged_steps(fs, "allam-test/runs/a") & {6, 7}:  # step 4's save was synchronous
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no step 6 logged in the bucket"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = _allam(env, work, "train", "--gin_file", str(gin), "--workdir", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step" in r.stderr, r.stderr[-3000:]
    assert "resumed from step 4" in r.stderr or "resumed from step 8" in r.stderr
    with fs.open("allam-test/runs/a/metrics.jsonl", "r") as f:
        resumed = {}
        for line in f.read().splitlines():
            if line.strip():
                row = json.loads(line)
                resumed[row["step"]] = row["loss"]
    reference = losses(straight)
    assert sorted(resumed) == list(range(1, 13))
    assert [resumed[s] for s in range(1, 13)] == [reference[s] for s in range(1, 13)]
    assert fs.exists("allam-test/runs/a/config.gin")
    assert not fs.glob("allam-test/runs/a/metrics.parts/*.jsonl")  # folded into metrics.jsonl at the end
    assert fs.find("allam-test/runs/a/tensorboard"), "no TensorBoard events in the bucket"
    assert json.loads(fs.cat("allam-test/runs/a/goodput.json"))["runs"] == 2  # written in place: no rename
    assert not fs.glob("allam-test/runs/a/*.tmp*")

    # init_from a bucket checkpoint
    r = _allam(env, work, "train", "--gin_file", str(gin), "--workdir", "gs://allam-test/runs/b", "--gin_bindings",
               "TrainerConfig.num_steps = 2", "--gin_bindings", f"TrainerConfig.init_from = '{run}/checkpoints'")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "initialised parameters from gs://allam-test/runs/a/checkpoints" in r.stderr

    # convert to-hf: checkpoint, tokenizer and output in the bucket
    from allam_jax.tokenizer.train import train_tokenizer

    spm = tmp_path / "tok.model"
    train_tokenizer([local[0]], 384, str(spm))  # the model has 384 rows
    fs.put(str(spm), "allam-test/tok.model")
    r = _allam(env, work, "convert", "to-hf", "--gin_file", str(gin), "--ckpt", f"{run}/checkpoints", "--out",
               "gs://allam-test/hf", "--tokenizer", "gs://allam-test/tok.model")
    assert r.returncode == 0, r.stderr[-3000:]
    fs.get("allam-test/hf", str(tmp_path / "hf"), recursive=True)
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.num_hidden_layers == 2
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.convert_ids_to_tokens(5) == __import__("sentencepiece").SentencePieceProcessor(
        model_file=str(spm)).id_to_piece(5)
    repo = Path(__file__).resolve().parents[1]
    assert not (work / "gs:").exists() and not (repo / "gs:").exists()
    steps = [p.rsplit("/", 1)[-1] for p in fs.ls("allam-test/runs/a/checkpoints", detail=False)]
    assert max(int(s) for s in steps if s.isdigit()) == 12


def test_cache_job_and_both_pipelines_on_a_bucket(bucket, tmp_path):
    """`allam data cache` reads a bucket corpus and writes the cache to the bucket (Beam worker processes,
    gcsfs): the same bytes as a local cache of the same files; training on the bucket cache logs the local
    cache's losses; the on-the-fly seqio pipeline trains on the bucket corpus too."""
    fs, env = bucket
    work = tmp_path / "cwd"
    work.mkdir()
    local = corpus_files(tmp_path / "corpus", en_docs=120, ar_docs=400)
    for f in local:
        fs.put(f, f"allam-test/corpus/{Path(f).name}")

    def corpus(root: str) -> list[str]:
        return ["--gin_file=runs/tiny_cpu.gin", f"--gin_bindings=CorpusPaths.en = ['{root}/en.txt']",
                f"--gin_bindings=CorpusPaths.ar = ['{root}/ar.txt']", "--gin_bindings=CorpusPaths.parallel = []"]

    r = _allam(env, work, "data", "cache", *corpus("gs://allam-test/corpus"), "--out=gs://allam-test/cache")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _allam(env, work, "data", "cache", *corpus(str(tmp_path / "corpus")), f"--out={tmp_path / 'cache'}")
    assert r.returncode == 0, r.stderr[-3000:]
    for task in ("en_pretrain", "ar_pretrain"):
        for f in sorted((tmp_path / "cache" / task).glob("train.*")):
            with fs.open(f"allam-test/cache/{task}/{f.name}", "rb") as g:
                assert g.read() == f.read_bytes(), f.name
        assert fs.exists(f"allam-test/cache/{task}/COMPLETED")

    def train(workdir: str, *bindings: str) -> dict:
        gin = tmp_path / "cached.gin"
        gin.write_text("\n".join([
            "include 'models/tiny.gin'", "include 'data/cached_ar_en_translated.gin'",
            "CachedData.rates = {'en_pretrain': 0.5, 'ar_pretrain': 0.5}",
            "ModelConfig.d_model = 32", "ModelConfig.mlp_dim = 64", "PartitioningConfig.mesh_shape = (1, 1, 1)",
            "TrainerConfig.batch_size = 4", "TrainerConfig.seq_len = 64", "TrainerConfig.log_every = 1",
            "TrainerConfig.num_steps = 3", "TrainerConfig.progress_bar = False",
            "TrainerConfig.tensorboard = False"]) + "\n")
        r = _allam(env, work, "train", f"--gin_file={gin}", f"--workdir={workdir}",
                   *[f"--gin_bindings={b}" for b in bindings])
        assert r.returncode == 0, r.stderr[-3000:]
        return losses(workdir)

    from_bucket = train(str(tmp_path / "w_bucket"), "CachedData.cache_dir = 'gs://allam-test/cache'")
    from_local = train(str(tmp_path / "w_local"), f"CachedData.cache_dir = '{tmp_path / 'cache'}'")
    assert from_bucket == from_local and sorted(from_bucket) == [1, 2, 3]
    on_the_fly = train(str(tmp_path / "w_seqio"), "experiment.data = @SeqioData()",
                       "SeqioData.rates = {'en_pretrain': 0.5, 'ar_pretrain': 0.5}", "SeqioData.paths = @CorpusPaths()",
                       "CorpusPaths.en = ['gs://allam-test/corpus/en.txt']",
                       "CorpusPaths.ar = ['gs://allam-test/corpus/ar.txt']", "CorpusPaths.parallel = []")
    assert sorted(on_the_fly) == [1, 2, 3]
    assert not (work / "gs:").exists()
