"""Issue 30's bad inputs, each in one process with tiny shapes: a one-line error and exit 2 before any model is
loaded or step is run, nothing overwritten, no hang."""

import sys

import pytest

from allam_jax import gin_setup
from allam_jax.cli.main import main
from allam_jax.core.errors import ConfigError


def _run(capsys, *argv) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse refuses a value itself
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_a_cyclic_gin_include_is_named_not_followed_forever(tmp_path, capsys):
    (tmp_path / "a.gin").write_text("include 'b.gin'\n")
    (tmp_path / "b.gin").write_text("include 'a.gin'\nTrainerConfig.batch_size = 8\n")
    rc, err = _run(capsys, "info", "--gin_file", str(tmp_path / "a.gin"))
    assert rc == 2 and "gin include cycle" in err and "a.gin -> " in err and "b.gin -> " in err, err


def test_a_diamond_of_includes_is_not_a_cycle(tmp_path):
    (tmp_path / "d.gin").write_text("TrainerConfig.batch_size = 8\n")
    (tmp_path / "b.gin").write_text("include 'd.gin'\n")
    (tmp_path / "c.gin").write_text("include 'd.gin'\n")
    (tmp_path / "a.gin").write_text("include 'b.gin'\ninclude 'c.gin'\n")
    texts = gin_setup._config_texts([str(tmp_path / "a.gin")], [])
    assert sum("batch_size = 8" in t for t in texts) == 2


def test_a_gin_file_that_is_not_utf8_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.gin"
    bad.write_bytes(b"\xff\xfeTrainerConfig.batch_size = 8\n")
    rc, err = _run(capsys, "info", "--gin_file", str(bad))
    assert rc == 2 and "bad.gin is not UTF-8" in err, err


def test_a_binding_with_a_syntax_error_is_named(capsys):
    rc, err = _run(capsys, "info", "--gin_file", "runs/tiny_cpu.gin", "--gin_bindings", "TrainerConfig.batch_size = (8")
    assert rc == 2 and "'TrainerConfig.batch_size = (8'" in err, err


@pytest.mark.parametrize("binding,field", [("OptimizerConfig.learning_rate = 1e999", "OptimizerConfig.learning_rate"),
                                           ("ModelConfig.rope_theta = 1e999", "ModelConfig.rope_theta")])
def test_infinite_floats_in_configs_stop_at_build_time(binding, field):
    with pytest.raises(ConfigError, match=f"{field} must be a finite number"):  # since issue 44: at parse time
        gin_setup.parse(["runs/tiny_cpu.gin"], [binding])
        gin_setup.build_experiment()


@pytest.mark.parametrize("argv,flag", [
    (["eval", "--batch_size", "0"], "--batch_size"),
    (["eval", "--num_fewshot", "-3"], "--num_fewshot"),
    (["eval", "--limit", "0"], "--limit"),
    (["generate", "--temperature", "nan"], "--temperature"),
    (["generate", "--temperature", "inf"], "--temperature"),
    (["generate", "--top_p", "0"], "--top_p"),
    (["generate", "--top_k", "-1"], "--top_k"),
    (["generate", "--max_new_tokens", "0"], "--max_new_tokens"),
    (["tokenizer", "train", "--input", "x.txt", "--vocab_size", "300", "--out", "o.model", "--max_sentences", "0"],
     "--max_sentences"),
    (["tokenizer", "merge", "--base", "a", "--add", "b", "--out", "c", "--pad_to_multiple", "-128"],
     "--pad_to_multiple"),
])
def test_out_of_range_command_line_values_are_refused_by_name(argv, flag, capsys):
    if argv[0] in ("eval", "generate"):
        argv = argv + ["--gin_file", "runs/tiny_cpu.gin", "--ckpt", "/nonexistent"]
    rc, err = _run(capsys, *argv)
    assert rc == 2 and f"argument {flag}:" in err, err


@pytest.mark.slow
def test_top_k_above_the_vocabulary_is_refused_before_decoding():
    import jax
    import jax.numpy as jnp

    from allam_jax.data.vocabularies import ByteVocabulary
    from allam_jax.inference.generate import Generator, SamplingConfig
    from allam_jax.model import Decoder, ModelConfig

    cfg = ModelConfig(vocab_size=384, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64,
                      max_seq_len=32, compute_dtype="float32")
    params = Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    gen = Generator(cfg, params, ByteVocabulary(), bos_id=1)
    with pytest.raises(ConfigError, match="top_k=100000 is above the vocabulary's 384"):
        gen.generate([[1, 2, 3]], SamplingConfig(max_new_tokens=2, temperature=1.0, top_k=100000))
    with pytest.raises(ConfigError, match="temperature=nan"):
        SamplingConfig(temperature=float("nan"))


def test_chat_with_stdin_closed_says_so_before_loading(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", None)
    rc, err = _run(capsys, "chat", "--gin_file", "runs/tiny_cpu.gin", "--ckpt", "/nonexistent")
    assert rc == 2 and "standard input, which is closed" in err, err


def test_eval_checks_its_task_specs_before_loading_a_model(tmp_path, capsys):
    # the checkpoint does not exist: an error about it would mean the model was loaded first
    rc, err = _run(capsys, "eval", "--gin_file", "runs/tiny_cpu.gin", "--ckpt", "/nonexistent", "--task", "nope:x.csv")
    assert rc == 2 and "bad task 'nope:x.csv'" in err, err
    rc, err = _run(capsys, "eval", "--gin_file", "runs/tiny_cpu.gin", "--ckpt", "/nonexistent", "--task",
                   f"acva:{tmp_path / 'missing.csv'}")
    assert rc == 2 and "benchmark file not found" in err and "missing.csv" in err, err
    rc, err = _run(capsys, "eval", "--gin_file", "runs/tiny_cpu.gin", "--ckpt", "/nonexistent", "--perplexity",
                   str(tmp_path / "x.txt"))
    assert rc == 2 and "use LANG:PATH" in err, err


def test_tokenizer_commands_never_overwrite_unasked(tmp_path, capsys):
    base, add, out = (tmp_path / n for n in ("base.model", "add.model", "out.model"))
    base.write_bytes(b"base")
    add.write_bytes(b"add")
    out.write_bytes(b"precious")
    for target in (base, add):  # never one of its own inputs, even with --overwrite
        rc, err = _run(capsys, "tokenizer", "merge", "--base", str(base), "--add", str(add), "--out", str(target),
                       "--overwrite")
        assert rc == 2 and f"--out {target} is the" in err, err
    rc, err = _run(capsys, "tokenizer", "merge", "--base", str(base), "--add", str(add), "--out", str(out))
    assert rc == 2 and "--overwrite" in err, err
    rc, err = _run(capsys, "tokenizer", "train", "--input", str(base), "--vocab_size", "300", "--out", str(out))
    assert rc == 2 and "--overwrite" in err, err
    assert (base.read_bytes(), add.read_bytes(), out.read_bytes()) == (b"base", b"add", b"precious")


@pytest.mark.parametrize("name", ["..", "."])
def test_a_sweep_variant_cannot_name_a_folder_outside_the_root(tmp_path, name):
    from allam_jax.sweep import read_variants

    variants = tmp_path / "v.variants"
    variants.write_text(f"[ok]\nTrainerConfig.num_steps = 2\n[{name}]\nTrainerConfig.num_steps = 3\n")
    with pytest.raises(ConfigError, match=r"v.variants:3: \[\.+\] cannot name a variant"):
        read_variants(str(variants))


def test_a_precomputed_dpo_reference_requires_it_in_every_pair(tmp_path):
    import json

    from allam_jax.core.errors import DataError

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "chosen": "yes", "rejected": "no"}) + "\n")
    gin_setup.parse(["runs/dpo_tiny_cpu.gin"], [f"DpoData.paths = ['{pairs}']", "DpoConfig.reference = 'precomputed'",
                                                "TrainerConfig.init_from = None"])
    exp = gin_setup.build_experiment()
    assert exp.data.require_reference
    with pytest.raises(DataError, match="no usable preference pairs"):
        exp.data.load(256)


@pytest.mark.slow
@pytest.mark.parametrize("gin", ["runs/sft_tiny_cpu.gin", "runs/tiny_cpu.gin"])
def test_training_data_that_gives_no_batch_exits_2_before_any_step(tmp_path, capsys, gin):
    import json

    if "sft" in gin:  # conversations without an assistant turn are all skipped
        data = tmp_path / "sft.jsonl"
        data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n"
                                for i in range(20)))
        bindings = [f"SftData.paths = ['{data}']", "SftData.epochs = 1"]
    else:
        empty = tmp_path / "empty.txt"
        empty.write_text("")
        bindings = ["experiment.data = @TextFileData()", f"TextFileData.paths = ['{empty}']"]
    rc, err = _run(capsys, "train", "--gin_file", gin, "--workdir", str(tmp_path / "run"),
                   "--gin_bindings", "TrainerConfig.init_from = None", *sum((["--gin_bindings", b] for b in bindings), []))
    assert rc == 2, err
    assert "no" in err and ("batch" in err or "usable" in err or "empty" in err), err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_binding_of_a_data_class_the_run_does_not_use_is_refused(tmp_path, capsys):
    # tiny_cpu.gin trains on SeqioData: a TextFileData.paths binding alone would be ignored in silence
    rc, err = _run(capsys, "train", "--gin_file", "runs/tiny_cpu.gin", "--workdir", str(tmp_path / "run"),
                   "--gin_bindings", f"TextFileData.paths = ['{tmp_path / 'mine.txt'}']")
    assert rc == 2
    assert "sets TextFileData, but this run's data is SeqioData" in err and "experiment.data = @TextFileData()" in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.slow
def test_a_resume_that_changes_the_data_positions_meaning_is_refused(tmp_path, capsys):
    """Two steps trained, then resumed: another batch size refused; num_steps below the checkpoint's step refused
    with config.gin left as the accepted run wrote it; the same settings resume."""
    from helpers import corpus_files, write_gin

    files = corpus_files(tmp_path / "corpus", en_docs=40, ar_docs=40)
    gin = write_gin(tmp_path / "run.gin", files, **{"TrainerConfig.num_steps": 2, "TrainerConfig.checkpoint_every": 2})
    work = str(tmp_path / "work")
    assert _run(capsys, "train", "--gin_file", str(gin), "--workdir", work)[0] == 0
    config = (tmp_path / "work" / "config.gin").read_text()
    rc, err = _run(capsys, "train", "--gin_file", str(gin), "--workdir", work,
                   "--gin_bindings", "TrainerConfig.batch_size = 8", "--gin_bindings", "TrainerConfig.num_steps = 4")
    assert rc == 2 and "TrainerConfig.batch_size is 8 but the checkpoint" in err and "trained with 4" in err, err
    rc, err = _run(capsys, "train", "--gin_file", str(gin), "--workdir", work, "--gin_bindings",
                   "TrainerConfig.num_steps = 1")
    assert rc == 2 and "num_steps=1 is below the step of the checkpoint" in err and "(2)" in err, err
    assert (tmp_path / "work" / "config.gin").read_text() == config
    assert _run(capsys, "train", "--gin_file", str(gin), "--workdir", work,
                "--gin_bindings", "TrainerConfig.num_steps = 3")[0] == 0


def test_resume_checks_process_count_and_warns_on_new_rates(caplog):
    from allam_jax.train.run_record import check_resume

    saved = {"batch_size": 8, "seq_len": 64, "process_count": 2, "data_shards": 0, "rates": {"ar": 1.0, "en": 1.0}}
    with pytest.raises(ConfigError, match="written by 2 process"):
        check_resume(saved, {**saved, "process_count": 1}, 10, 20, "ckpt")
    check_resume(saved, {**saved, "process_count": 1, "data_shards": 8}, 10, 20, "ckpt")  # shards fixed: same data
    with caplog.at_level("WARNING"):
        check_resume(saved, {**saved, "process_count": 1}, 10, 20, "ckpt", accept_new_data_order=True)
    assert "continues on other batches" in caplog.text
    with caplog.at_level("WARNING"):
        check_resume(saved, {**saved, "rates": {"ar": 3.0, "en": 1.0}}, 10, 20, "ckpt")
    assert "ar 1.0 -> 3.0" in caplog.text


def test_an_error_whose_message_is_an_objects_repr_is_reported_by_its_cause():
    from allam_jax.core.errors import first_line

    try:
        try:
            raise OSError("DATA_LOSS: Error reading local file .../d/abc: unexpected end of file")
        except OSError as cause:
            raise ValueError("<bound method pybind11_detail_function_record_v1_system_libstdcpp of <object>>") \
                from cause
    except ValueError as e:
        assert first_line(e) == "DATA_LOSS: Error reading local file .../d/abc: unexpected end of file"
    assert first_line(RuntimeError("<object at 0x1>")) == "RuntimeError"
    assert first_line(RuntimeError("plain\nmore")) == "plain"


def test_micro_batches_that_do_not_split_the_batch_stop_at_build_time():
    gin_setup.parse(["runs/tiny_cpu.gin"], ["TrainerConfig.batch_size = 8", "StepConfig.grad_accum_steps = 3"])
    with pytest.raises(ConfigError, match="batch_size=8 is not divisible by TrainerConfig.grad_accum_steps=3"):
        gin_setup.build_experiment()


def test_training_a_tokenizer_on_an_empty_file_names_the_file(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    rc, err = _run(capsys, "tokenizer", "train", "--input", str(empty), "--vocab_size", "300", "--out",
                   str(tmp_path / "o.model"))
    assert rc == 2 and f"no text to train on in {empty}" in err, err


@pytest.mark.slow
def test_a_real_failed_background_save_stops_the_run_in_one_line(tmp_path):
    """A real write failure inside Orbax's background save (the file-size limit makes the operating system refuse
    the checkpoint's writes, as a full disk does, without root): exit 1, one line naming the step, the reason and
    the last complete step, and the run stopped long before num_steps; no Orbax/asyncio tracebacks."""
    import json
    import subprocess

    from helpers import corpus_files, file_size_limited, write_gin

    files = corpus_files(tmp_path / "corpus", en_docs=40, ar_docs=40)
    gin = write_gin(tmp_path / "run.gin", files, **{"TrainerConfig.num_steps": 200, "TrainerConfig.checkpoint_every": 5,
                                                   "ModelConfig.d_model": 128, "ModelConfig.mlp_dim": 384})

    r = subprocess.run(file_size_limited(1 << 20, "train", "--gin_file", str(gin), "--workdir", str(tmp_path / "w")),
                       capture_output=True, text=True, timeout=600)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("allam: error: saving step 5 to "), r.stderr[-3000:]
    assert "File too large (errno 27) (last complete step: none yet); stopped" in lines[0]
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) < 50


def test_a_tiny_text_file_warns_once_how_often_it_repeats(tmp_path, caplog):
    from allam_jax.data.text_files import TextFileData

    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello world, again!\n")  # 20 bytes: one row of 64 tokens, a quarter of a step
    with caplog.at_level("WARNING"):
        it = TextFileData(paths=[str(tiny)]).make_iterator(64, 4)
        for _ in range(3):
            next(it)
    warnings = [r.getMessage() for r in caplog.records if "repeats" in r.getMessage()]
    assert len(warnings) == 1 and "pack into 1 row(s) of 64 tokens, 0.25 steps' worth" in warnings[0]
    assert "repeats 40.0 times every 10 steps" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING"):  # enough data: quiet
        TextFileData(paths=[str(tiny)] * 200).make_iterator(16, 4)
    assert not [r for r in caplog.records if "repeats" in r.getMessage()]


@pytest.mark.slow
def test_a_tiny_task_in_a_mixture_warns_how_often_it_repeats(tmp_path, caplog):
    """One 22-character English line at half the mixture, against a real Arabic corpus: the seqio path counts
    the small task whole and warns once; the large one stays quiet."""
    from allam_jax.data.pipeline import SeqioData
    from allam_jax.data.tasks import CorpusPaths
    from helpers import corpus_files

    tiny = tmp_path / "en.txt"
    tiny.write_text("A short English line.\n")
    ar = [f for f in corpus_files(tmp_path / "corpus", en_docs=0, ar_docs=1500) if f.endswith("ar.txt")]
    data = SeqioData(rates={"en_pretrain": 1.0, "ar_pretrain": 1.0}, paths=CorpusPaths(en=[str(tiny)], ar=ar, parallel=()),
                     shuffle_buffer=64)
    with caplog.at_level("WARNING"):
        data.make_iterator(128, 8)
    repeats = [r.getMessage() for r in caplog.records if "repeats every" in r.getMessage()]
    assert len(repeats) == 1 and repeats[0].startswith("task en_pretrain holds"), repeats
    assert "50.0% of the batch" in repeats[0]


def test_a_streamed_file_is_written_whole_or_not_at_all(tmp_path):
    from allam_jax.core.paths import open_atomically

    target = tmp_path / "sub" / "out.jsonl"
    with open_atomically(str(target)) as f:
        f.write("one\n")
        assert not target.exists()  # nothing at the target until the writer closes
    assert target.read_text() == "one\n"
    with pytest.raises(RuntimeError):
        with open_atomically(str(target)) as f:
            f.write("two\n")
            raise RuntimeError("the writer fails half way")
    assert target.read_text() == "one\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"]  # no temporary left behind
