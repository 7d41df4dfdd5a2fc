"""Evaluation: readers of the five benchmark formats, harness-style scoring, acc/acc_norm, perplexity, CLI."""

import csv
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from allam_jax.data.vocabularies import ByteVocabulary
from allam_jax.eval.readers import AR_LETTERS, BenchmarkFileError, read_task
from allam_jax.eval.scorer import LoglikelihoodScorer, encode_pair, evaluate_multiple_choice, perplexity
from allam_jax.model import Decoder, ModelConfig
from helpers import allam

CFG = ModelConfig(vocab_size=384, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=128,
                  compute_dtype="float32")
VOCAB = ByteVocabulary()


def write_fixtures(d: Path) -> dict[str, str]:
    """Tiny files in each public format (the real files have the same columns)."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "arabicmmlu.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Source", "Country", "Group", "Subject", "Level", "Question", "Context", "Answer Key",
                    "Option 1", "Option 2", "Option 3", "Option 4", "Option 5"])
        w.writerow([1, "x", "Egypt", "STEM", "Math", "Primary", "كم يساوي ٢ + ٢؟", "", "B", "٣", "٤", "٥", "", ""])
        w.writerow([2, "x", "Jordan", "Humanities", "History", "High", "ما عاصمة الأردن؟", "سؤال جغرافي", "A",
                    "عمّان", "إربد", "العقبة", "الزرقاء", ""])
        w.writerow([3, "x", "KSA", "STEM", "Math", "Primary", "كم يساوي ٣ × ٣؟", "", "C", "٦", "٨", "٩", "١٢", "١٠"])
    (d / "acva.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"id": "1", "question": "القاهرة عاصمة مصر", "answer": "صح"},
        {"id": "2", "question": "الرياض تقع في المغرب", "answer": "خطأ"},
        {"id": "3", "question": "اللغة العربية تكتب من اليمين إلى اليسار", "answer": "نعم"}]), encoding="utf-8")
    (d / "exams_ar.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"question": "ما هو أكبر كوكب في المجموعة الشمسية؟", "A": "الأرض", "B": "المشتري", "C": "المريخ",
         "D": "الزهرة", "answer": "B"},
        {"question": "ما ناتج ١٠ ÷ ٢؟", "A": "٥", "B": "٢", "C": "٨", "D": "١٢", "answer": "أ"}]), encoding="utf-8")
    for name, rows in (("mmlu_ar/astronomy_test.csv", [["ما أقرب نجم إلى الأرض؟", "الشمس", "سيريوس", "فيغا",
                                                          "رجل الجبار", "A"]]),
                       ("mmlu/astronomy_test.csv", [["Which planet is closest to the Sun?", "Venus", "Mercury", "Mars",
                                                     "Earth", "B"],
                                                    ["What is the Sun mostly made of?", "Iron", "Oxygen", "Hydrogen",
                                                     "Carbon", "C"]]),
                       ("mmlu/astronomy_dev.csv", [["How many moons does Earth have?", "0", "1", "2", "3", "B"]])):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        with open(d / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    return {"arabicmmlu": f"arabicmmlu:{d / 'arabicmmlu.csv'}", "acva": f"acva:{d / 'acva.jsonl'}",
            "exams_ar": f"exams_ar:{d / 'exams_ar.jsonl'}", "mmlu_ar": f"mmlu_ar:{d / 'mmlu_ar/astronomy_test.csv'}",
            "mmlu": f"mmlu:{d / 'mmlu/astronomy_test.csv'}:{d / 'mmlu/astronomy_dev.csv'}"}


def test_readers_build_the_documented_prompts(tmp_path):
    specs = write_fixtures(tmp_path)
    _, q, _ = read_task(specs["arabicmmlu"])
    assert q[0].prompt == "السؤال: كم يساوي ٢ + ٢؟\nأ. ٣\nب. ٤\nج. ٥\nالإجابة:"
    assert q[0].choices == (" أ", " ب", " ج") and q[0].gold == 1 and q[0].subject == "Math"
    assert q[1].prompt.startswith("سؤال جغرافي\nالسؤال: ما عاصمة الأردن؟") and len(q[2].choices) == 5
    _, q, _ = read_task(specs["acva"])
    assert [x.gold for x in q] == [0, 1, 0] and q[0].prompt == "السؤال: القاهرة عاصمة مصر\nالإجابة:"
    assert q[0].choices == (" صح", " خطأ")
    _, q, _ = read_task(specs["exams_ar"])
    assert [x.gold for x in q] == [1, 0] and q[0].choices == tuple(" " + a for a in AR_LETTERS[:4])
    _, q, _ = read_task(specs["mmlu_ar"])
    assert q[0].prompt.startswith("فيما يلي أسئلة اختيار من متعدد (مع الإجابات) حول astronomy.\n\nالسؤال: ")
    _, q, dev = read_task(specs["mmlu"])
    assert q[0].prompt == ("The following are multiple choice questions (with answers) about astronomy.\n\n"
                           "Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Mars\nD. Earth\nAnswer:")
    assert q[0].choices == (" A", " B", " C", " D") and q[0].gold == 1 and len(dev) == 1


def test_bad_files_name_file_row_and_field(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Option 1,Option 2,Answer\nq,a,b,A\n", encoding="utf-8")
    with pytest.raises(BenchmarkFileError, match=r"bad\.csv: missing column\(s\) \['Answer Key'\]"):
        read_task(f"arabicmmlu:{bad}")
    bad.write_text("Question,Option 1,Option 2,Answer Key\nq,a,b,A\nq2,a,b,D\n", encoding="utf-8")
    with pytest.raises(BenchmarkFileError, match=r"bad\.csv:3: field 'Answer Key' = 'D' is not one of the 2 choices"):
        read_task(f"arabicmmlu:{bad}")
    mmlu = tmp_path / "x_test.csv"
    mmlu.write_text("q,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(BenchmarkFileError, match=r"x_test\.csv:1: field 'answer' = 'E'"):
        read_task(f"mmlu:{mmlu}")
    with pytest.raises(Exception, match="bad task"):
        read_task(f"hellaswag:{mmlu}")


def test_encode_pair_follows_the_harness_with_sentencepiece(tmp_path):
    import sentencepiece as spm

    from allam_jax.tokenizer.train import train_tokenizer
    from helpers import bundled_dir

    model = str(tmp_path / "sp.model")
    train_tokenizer([str(bundled_dir() / "en.txt")], 600, model, max_sentences=2000)
    sp = spm.SentencePieceProcessor(model_file=model)
    ctx, cont = encode_pair(sp.encode, "Question: what is it?\nAnswer: ", "the Lord")
    whole = sp.encode("Question: what is it?\nAnswer: the Lord")
    assert ctx + cont == whole and ctx == sp.encode("Question: what is it?\nAnswer:")
    assert sp.decode(cont).strip() == "the Lord"


@pytest.fixture(scope="module")
def scorer():
    params = Decoder(CFG).init(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda x: x * 3.0, params)
    return LoglikelihoodScorer(CFG, params, VOCAB.encode, bos=1, batch_size=4)


def _direct(scorer, context, continuation):
    """One request alone, no batching or padding, float64 log-softmax."""
    ctx, cont = encode_pair(VOCAB.encode, context, continuation)
    seq = np.array([[1] + ctx + cont], np.int32)
    logits = np.asarray(Decoder(CFG).apply({"params": scorer.params}, seq[:, :-1]), np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1,
                                                                                                         keepdims=True)
    targets = seq[0, 1:]
    return float(sum(logp[i, targets[i]] for i in range(len(targets) - len(cont), len(targets))))


@pytest.mark.slow
def test_batched_scores_equal_one_request_at_a_time(scorer):
    requests = [("السؤال: ما عاصمة مصر؟\nالإجابة:", " القاهرة"), ("Answer: ", "yes"), ("x" * 50, " y" * 20),
                ("Q?", " A"), ("نص", " آخر طويل قليلا"), ("one", " two")]
    got = scorer.loglikelihood(requests)
    for (ll, _), (c, x) in zip(got, requests):
        assert ll == pytest.approx(_direct(scorer, c, x), abs=2e-3, rel=1e-4)


class _FixedScorer:
    def __init__(self, lls):
        self.lls = list(lls)

    def loglikelihood(self, requests):
        return [(self.lls[i], False) for i in range(len(requests))]


def test_acc_and_acc_norm(tmp_path):
    specs = write_fixtures(tmp_path)
    _, questions, _ = read_task(specs["acva"])
    lls = [-3.2, -4.1, -3.0, -3.9, -4.0, -3.0]  # " صح" has 3 characters, " خطأ" 4: question 2 flips under acc_norm
    result = evaluate_multiple_choice(_FixedScorer(lls), questions)
    golds = [q.gold for q in questions]
    raw = [int(np.argmax(lls[2 * i: 2 * i + 2]) == g) for i, g in enumerate(golds)]
    lengths = np.array([len(c) for c in questions[0].choices])
    norm = [int(np.argmax(np.array(lls[2 * i: 2 * i + 2]) / lengths) == g) for i, g in enumerate(golds)]
    assert raw != norm
    assert result["acc"] == pytest.approx(np.mean(raw)) and result["acc_norm"] == pytest.approx(np.mean(norm))
    assert result["n"] == 3


@pytest.mark.slow
def test_perplexity_and_bits_per_byte(scorer):
    docs = ["The quick brown fox jumps over the lazy dog.", "مرحبا بالعالم العربي"]
    r = perplexity(scorer, docs)
    nll = 0.0
    for d in docs:
        ids = VOCAB.encode(d)
        seq = np.array([[1] + ids], np.int32)
        logits = np.asarray(Decoder(CFG).apply({"params": scorer.params}, seq[:, :-1]), np.float64)[0]
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        nll -= sum(logp[i, ids[i]] for i in range(len(ids)))
    n_tok = sum(len(VOCAB.encode(d)) for d in docs)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert r["tokens"] == n_tok and r["bytes"] == n_bytes
    assert r["perplexity"] == pytest.approx(math.exp(nll / n_tok), rel=1e-3)
    assert r["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-3)


@pytest.mark.slow
def test_eval_command_on_all_five_formats(tmp_path):
    from allam_jax import gin_setup
    from allam_jax.checkpoint.params_io import write_params_checkpoint
    from allam_jax.core.trees import strip_boxes

    gin_setup.parse(["models/tiny.gin"])
    cfg = gin_setup.model_config()
    params = strip_boxes(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    write_params_checkpoint(str(tmp_path / "ckpt"), params)
    specs = write_fixtures(tmp_path / "fx")
    held_out = tmp_path / "ar_held_out.txt"
    held_out.write_text("مرحبا بالعالم\nنص عربي قصير للاختبار\n", encoding="utf-8")
    args = ["eval", "--gin_file=models/tiny.gin", f"--ckpt={tmp_path / 'ckpt'}", f"--out={tmp_path / 'r.json'}",
            "--num_fewshot=1", f"--perplexity=ar:{held_out}"] + [f"--task={s}" for s in specs.values()]
    r = allam(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert {t["format"] for t in report["tasks"].values()} == set(specs)
    assert all(0.0 <= t["acc"] <= 1.0 for t in report["tasks"].values())
    assert "| task | language | n | acc | acc_norm |" in r.stdout and "| **all ar** |" in r.stdout
    assert "bits/byte" in (tmp_path / "r.md").read_text()
    bad = tmp_path / "wrong.csv"
    bad.write_text("question,answer\nq,A\n", encoding="utf-8")
    r = allam("eval", "--gin_file=models/tiny.gin", f"--ckpt={tmp_path / 'ckpt'}", f"--task=exams_ar:{bad}")
    assert r.returncode == 2 and "wrong.csv: missing column(s) ['A', 'B', 'C', 'D']" in r.stderr


SHARDED_SCRIPT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp
jax.config.update("jax_default_matmul_precision", "highest")
from allam_jax import gin_setup
from allam_jax.data.vocabularies import ByteVocabulary
from allam_jax.eval.scorer import LoglikelihoodScorer
from allam_jax.runner import load_generator
from allam_jax.model import Decoder
from allam_jax.checkpoint.params_io import write_params_checkpoint
from allam_jax.core.trees import strip_boxes
ckpt = sys.argv[1]
gin_setup.parse(["models/tiny.gin"], ["ModelConfig.compute_dtype = 'float32'"])
cfg = gin_setup.model_config()
params = strip_boxes(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
write_params_checkpoint(ckpt, jax.tree_util.tree_map(lambda x: x * 3.0, params))
requests = [("السؤال: ما عاصمة مصر؟\nالإجابة:", " القاهرة"), ("Answer:", " yes"), ("Q?", " A"), ("one", " two")] * 2
out = {}
from allam_jax.convert.checkpoints import restore_for_export
from allam_jax.inference.generate import Generator
for mesh in ["(1, 1, 1)", "(2, 2, 2)", "(1, 8, 1)"]:
    if mesh == "(1, 1, 1)":  # the reference: one device, no mesh
        gen = Generator(cfg, restore_for_export(ckpt, cfg), ByteVocabulary(), 1)
    else:
        gen = load_generator(["models/tiny.gin"], ["ModelConfig.compute_dtype = 'float32'",
                                                   f"PartitioningConfig.mesh_shape = {mesh}"], ckpt)
    leaf = gen.params["layers"]["mlp"]["up"]["kernel"]
    scorer = LoglikelihoodScorer(gen.cfg, gen.params, ByteVocabulary().encode, 1, batch_size=8, partitioner=gen.partitioner)
    out[mesh] = {"ll": [ll for ll, _ in scorer.loglikelihood(requests)], "devices": len(leaf.sharding.device_set),
                 "greedy": [t for t in gen.generate([gen.encode("abc"), gen.encode("مرحبا")],
                            __import__("allam_jax.inference.generate", fromlist=["x"]).SamplingConfig(max_new_tokens=5))[0].tokens]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_scoring_and_generation_sharded_on_8_devices_match_one(tmp_path):
    """Parameters restored into shards over meshes of 8 fake CPU devices give the single-device scores."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path / "ckpt")], capture_output=True, text=True,
                       env=env, timeout=600, cwd=str(Path(__file__).parents[1]))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    ref = out["(1, 1, 1)"]
    for mesh in ("(2, 2, 2)", "(1, 8, 1)"):
        assert out[mesh]["devices"] > 1, "parameters really are sharded"
        np.testing.assert_allclose(out[mesh]["ll"], ref["ll"], rtol=1e-5, atol=1e-4)
        assert out[mesh]["greedy"] == ref["greedy"]


@pytest.mark.slow
def test_empty_perplexity_file_is_an_error_naming_it(scorer, tmp_path):
    from allam_jax.eval.runner import run_eval
    from allam_jax.core.errors import ConfigError

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        run_eval(scorer, [], perplexity_files=[f"ar:{empty}"])
    assert str(empty) in str(e.value) and "no text" in str(e.value)
