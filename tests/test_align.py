"""Alignment: chat masks, SFT data, the DPO loss against float64 NumPy, preference data, tiny SFT/DPO runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from allam_jax.align.chat import ChatError, ChatTemplate, encode_conversation, encode_prompt
from allam_jax.align.dpo_reference import preference_metrics
from allam_jax.align.preference_data import DpoData, pair_rows
from allam_jax.objectives.dpo import DpoConfig, dpo_loss
from allam_jax.align.sft_data import SftData
from allam_jax.data.sources import DataError
from allam_jax.data.vocabularies import ByteVocabulary
from allam_jax.core.errors import ConfigError
from helpers import allam, bundled_dir, losses

CONVERSATION = [
    {"role": "system", "content": "أجب بإيجاز."},
    {"role": "user", "content": "ما عاصمة مصر؟"},
    {"role": "assistant", "content": "القاهرة."},
    {"role": "user", "content": "وما عاصمة المغرب؟"},
    {"role": "assistant", "content": "الرباط."},
]


def _bytes(text):
    return [b + 3 for b in text.encode("utf-8")]


def _write_jsonl(path: Path, objs) -> str:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objs),
                    encoding="utf-8")
    return str(path)


def test_sft_mask_token_by_token_on_two_turn_arabic():
    vocab = ByteVocabulary()
    ids, weights = encode_conversation(CONVERSATION, vocab, ChatTemplate(), bos=1)
    first_prompt = [1] + _bytes("[INST] <<SYS>>\nأجب بإيجاز.\n<</SYS>>\n\nما عاصمة مصر؟ [/INST] ")
    first_answer = _bytes("القاهرة.") + [2]
    second_prompt = [1] + _bytes("[INST] وما عاصمة المغرب؟ [/INST] ")
    second_answer = _bytes("الرباط.") + [2]
    assert ids == first_prompt + first_answer + second_prompt + second_answer
    assert weights == [0] * len(first_prompt) + [1] * len(first_answer) + [0] * len(second_prompt) + [1] * len(
        second_answer)
    _, last_only = encode_conversation(CONVERSATION, vocab, ChatTemplate(), 1, train_on_all_assistant_turns=False)
    assert sum(last_only) == len(second_answer)
    assert encode_prompt(CONVERSATION[:4], vocab, ChatTemplate(), 1) == first_prompt + first_answer + second_prompt


@pytest.mark.slow
def test_sft_batches_carry_the_mask_through_packing(tmp_path):
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}] * 3)
    it = SftData(paths=[path], shuffle_buffer=1).make_iterator(seq_len=512, batch_size=1)
    batch = next(it)
    ids, weights = encode_conversation(CONVERSATION, ByteVocabulary(), ChatTemplate(), 1)
    n = len(ids) - 1
    seg = batch["segment_ids"][0]
    first = np.nonzero(seg == 1)[0]
    assert len(first) == n
    assert batch["targets"][0, first].tolist() == ids[1:]
    assert batch["inputs"][0, first].tolist() == ids[:-1]
    assert batch["loss_weights"][0, first].tolist() == [float(w) for w in weights[1:]]
    assert np.all(batch["loss_weights"][0][seg == 0] == 0)
    assert set(batch["lang_id"][0, first].tolist()) == {1}  # ar
    it.close()


def test_bad_conversations_are_counted_or_fatal(tmp_path, caplog):
    good = {"messages": CONVERSATION[1:3]}
    path = _write_jsonl(tmp_path / "bad.jsonl", [
        good,
        {"messages": [{"role": "user", "content": "hello there"}]},             # no assistant turn
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},  # empty
        "{not json",
        {"messages": [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "ok"}]},  # long
        good,
    ])
    from allam_jax.align.sft_data import SkipReport

    report = SkipReport()
    kept = list(SftData(paths=[path]).examples(ByteVocabulary(), 128, report=report))
    assert len(kept) == 2
    assert (report.malformed, report.no_assistant_or_bad_roles, report.too_long) == (1, 2, 1)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: the conversation has no assistant turn"):
        list(SftData(paths=[path], on_error="fatal").examples(ByteVocabulary(), 128))
    with pytest.raises(ChatError, match="two user turns"):
        encode_conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                             {"role": "assistant", "content": "c"}], ByteVocabulary(), ChatTemplate(), 1)


def _numpy_dpo(pc, pr, rc, rr, beta, eps, loss_type):
    """Float64 loss and its gradient w.r.t. the policy log-probs, in closed form."""
    h = (pc - rc) - (pr - rr)
    n = len(h)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    if loss_type == "sigmoid":
        loss = np.mean(-(1 - eps) * np.log(sig(beta * h)) - eps * np.log(sig(-beta * h)))
        dh = (-(1 - eps) * beta * sig(-beta * h) + eps * beta * sig(beta * h)) / n
    else:
        loss = np.mean((h - 1 / (2 * beta)) ** 2)
        dh = 2 * (h - 1 / (2 * beta)) / n
    return loss, dh, -dh


@pytest.mark.parametrize("loss_type,eps,beta", [("sigmoid", 0.0, 0.1), ("sigmoid", 0.2, 0.5), ("ipo", 0.0, 0.1)])
def test_dpo_loss_and_gradient_match_float64_numpy(loss_type, eps, beta):
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(-40, 8, 16) for _ in range(4))
    cfg = DpoConfig(beta=beta, label_smoothing=eps, loss_type=loss_type)
    f = lambda a, b: dpo_loss(a, b, jnp.asarray(rc, jnp.float32), jnp.asarray(rr, jnp.float32), cfg)[0]  # noqa: E731
    loss, (gc, gr) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(pc, jnp.float32), jnp.asarray(pr, jnp.float32))
    want_loss, want_gc, want_gr = _numpy_dpo(pc, pr, rc, rr, beta, eps, loss_type)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gc), want_gc, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(gr), want_gr, rtol=1e-4, atol=1e-7)
    _, metrics = dpo_loss(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(rc), jnp.asarray(rr), cfg)
    h = (pc - rc) - (pr - rr)
    assert float(metrics["rewards/margins"]) == pytest.approx(beta * h.mean(), rel=1e-4)
    assert float(metrics["rewards/accuracy"]) == pytest.approx(np.mean(h > 0))
    with pytest.raises(ConfigError, match="loss_type"):
        DpoConfig(loss_type="kto")


def test_preference_rows_mask_only_the_response(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Translate into Arabic: good morning", "chosen": "صباح الخير", "rejected": "مساء الخير"},
        {"messages": [{"role": "user", "content": "ترجم: شكرا"}], "chosen": "Thank you", "rejected": "you Thank"},
        {"prompt": "p", "chosen": "", "rejected": "x"},                          # empty chosen
        {"prompt": "p" * 200, "chosen": "a", "rejected": "b"},                   # too long
        {"chosen": "a", "rejected": "b"},                                       # no prompt
    ])
    data = DpoData(paths=[path])
    pairs = data.load(seq_len=128)
    assert len(pairs) == 2
    vocab = ByteVocabulary()
    prompt = encode_prompt([{"role": "user", "content": "Translate into Arabic: good morning"}], vocab, ChatTemplate(), 1)
    rows = pair_rows(pairs[0], 128)
    for r, response in enumerate(("صباح الخير", "مساء الخير")):
        ids = prompt + _bytes(response) + [2]
        w = rows["loss_weights"][r]
        assert rows["targets"][r, : len(ids) - 1].tolist() == ids[1:]
        assert np.nonzero(w)[0].tolist() == list(range(len(prompt) - 1, len(ids) - 1))
        assert rows["targets"][r][w > 0].tolist() == _bytes(response) + [2]
    with pytest.raises(DataError, match=r"p\.jsonl:3: 'chosen' is missing or empty"):
        DpoData(paths=[path], on_error="fatal").load(128)
    it = data.make_iterator(seq_len=128, batch_size=2)
    batch = next(it)
    assert batch["inputs"].shape == (4, 128) and batch["ref_logp"].shape == (4,)
    state = it.get_state()
    after = next(it)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["targets"], after["targets"])


def _run_gin(tmp_path, name, gin_file, **bindings):
    data = bundled_dir()
    lines = [f"include '{gin_file}'", "TrainerConfig.progress_bar = False", "TrainerConfig.tensorboard = False",
             "TrainerConfig.log_every = 1", "TrainerConfig.seq_len = 128", "TrainerConfig.batch_size = 4",
             "ModelConfig.max_seq_len = 128"]
    lines += [f"{k} = {v}" for k, v in bindings.items()]
    gin = tmp_path / f"{name}.gin"
    gin.write_text("\n".join(lines) + "\n")
    r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / name}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp_path / name, data


def _experiment_params(gin_file, workdir, **bindings):
    from allam_jax import gin_setup
    from allam_jax.convert.checkpoints import restore_for_export

    gin_setup.parse([gin_file], [f"{k} = {v}" for k, v in bindings.items()])
    exp = gin_setup.build_experiment()
    return exp, restore_for_export(str(Path(workdir) / "checkpoints"), exp.model)


def _answer_loss(exp, params, path, batches=6):
    from allam_jax.model import Decoder
    from allam_jax.objectives.lm import StepConfig, loss_sums

    it = SftData(paths=[str(path)], shuffle_buffer=1, epochs=1).make_iterator(128, 8)
    model = Decoder(exp.model)
    fn = jax.jit(lambda p, b: loss_sums(model, p, b, StepConfig(num_languages=3))[1])
    ce = weight = 0.0
    for _ in range(batches):
        parts = fn(params, next(it))
        ce, weight = ce + float(parts["ce_sum"]), weight + float(parts["weight_sum"])
    it.close()
    return ce / weight


@pytest.mark.slow
def test_tiny_sft_then_dpo_from_gin(tmp_path):
    """SFT (runs/sft_tiny_cpu.gin) lowers held-out answer loss; DPO (runs/dpo_tiny_cpu.gin, frozen reference)
    then raises the held-out reward margin and preference accuracy; a precomputed reference gives the
    same first-step loss (log 2) as the frozen one."""
    data = bundled_dir()
    common = {"SftData.paths": f"['{data / 'sft_train.jsonl'}']"}
    sft_dir, _ = _run_gin(tmp_path, "sft", "runs/sft_tiny_cpu.gin", **common, **{
        "TrainerConfig.init_from": "None", "TrainerConfig.num_steps": 40, "OptimizerConfig.learning_rate": 3e-3,
        "OptimizerConfig.decay_steps": 40})
    exp, sft_params = _experiment_params("runs/sft_tiny_cpu.gin", sft_dir, **{"ModelConfig.max_seq_len": 128})
    from allam_jax.model import Decoder

    random_params = Decoder(exp.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    before, after = (_answer_loss(exp, p, data / "sft_eval.jsonl") for p in (random_params, sft_params))
    assert after < before - 1.0, (before, after)

    dpo_bindings = {"DpoData.paths": f"['{data / 'dpo_train.jsonl'}']", "TrainerConfig.init_from":
                    f"'{sft_dir / 'checkpoints'}'", "TrainerConfig.num_steps": 80, "OptimizerConfig.decay_steps": 80,
                    "TrainerConfig.batch_size": 8, "OptimizerConfig.learning_rate": 1e-3}
    dpo_dir, _ = _run_gin(tmp_path, "dpo", "runs/dpo_tiny_cpu.gin", **dpo_bindings)
    first = json.loads((dpo_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(np.log(2), abs=1e-4) and first["rewards/margins"] == pytest.approx(0, abs=1e-4)

    exp, dpo_params = _experiment_params("runs/dpo_tiny_cpu.gin", dpo_dir, **{"ModelConfig.max_seq_len": 128})
    held_out = DpoData(paths=[str(data / "dpo_eval.jsonl")]).load(128)[:96]
    m = preference_metrics(Decoder(exp.model), dpo_params, sft_params, held_out, 128, beta=0.1)
    assert m["rewards/margins"] > 0.05 and m["rewards/accuracy"] > 0.6, m

    ref_file = tmp_path / "dpo_with_ref.jsonl"
    gin = tmp_path / "ref.gin"
    gin.write_text("\n".join(["include 'runs/dpo_tiny_cpu.gin'", "ModelConfig.max_seq_len = 128",
                              "TrainerConfig.seq_len = 128"] + [f"{k} = {v}" for k, v in dpo_bindings.items()]) + "\n")
    r = allam("dpo-reference", f"--gin_file={gin}", f"--out={ref_file}")
    assert r.returncode == 0, r.stderr[-2000:]
    # the same reference pass sharded on a (data 2, fsdp 2) mesh of 4 devices gives the same log-probs
    sharded = tmp_path / "dpo_with_ref_sharded.jsonl"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-m", "allam_jax", "dpo-reference", f"--gin_file={gin}", f"--out={sharded}",
                        "--gin_bindings=PartitioningConfig.mesh_shape = (2, 2, 1)"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    one, four = ([json.loads(ln) for ln in f.read_text(encoding="utf-8").splitlines()] for f in (ref_file, sharded))
    assert len(one) == len(four) > 100
    for a, b in zip(one, four):
        for key in ("ref_chosen_logp", "ref_rejected_logp"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-3), (key, a, b)
    pre_dir, _ = _run_gin(tmp_path, "dpo_pre", "runs/dpo_tiny_cpu.gin", **{
        **dpo_bindings, "DpoData.paths": f"['{ref_file}']", "DpoConfig.reference": "'precomputed'",
        "DpoData.require_reference": True, "TrainerConfig.num_steps": 3})
    assert losses(pre_dir)[1] == pytest.approx(first["loss"], abs=1e-4)
    assert losses(pre_dir)[3] == pytest.approx(losses(dpo_dir)[3], rel=1e-3), "same trajectory as the frozen copy"


@pytest.mark.slow
def test_sft_epochs_end_the_run_with_a_final_checkpoint(tmp_path):
    """``SftData.epochs = 1`` on 40 conversations (a few packed batches of 4): the data runs out before ``num_steps``, and the run
    stops after saving the last full step (its loss checked finite first)."""
    import json

    src = bundled_dir() / "sft_train.jsonl"
    small = tmp_path / "sft40.jsonl"
    small.write_text("\n".join(src.read_text(encoding="utf-8").splitlines()[:40]) + "\n", encoding="utf-8")
    workdir, _ = _run_gin(tmp_path, "epoch", "runs/sft_tiny_cpu.gin", **{
        "SftData.paths": json.dumps([str(small)]), "SftData.epochs": 1, "SftData.shuffle_buffer": 40,
        "TrainerConfig.num_steps": 1000, "TrainerConfig.checkpoint_every": 1000, "TrainerConfig.init_from": None})
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps and steps[-1] == logged[-1] < 1000 and steps[-1] >= 2
