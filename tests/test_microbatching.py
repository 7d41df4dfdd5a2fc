"""Micro-batching in the trainer for any objective: 1, 2 or 4 micro-batches give the full batch's loss and
gradient, checked against float64 NumPy (finite differences of the NumPy Llama's loss along random
directions); and a registered objective trains from gin without touching another file."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_llama
from allam_jax.model import Decoder, ModelConfig
from allam_jax.objectives import OBJECTIVES, DpoConfig, DpoObjective, LmObjective, ObjectiveDefaults, StepConfig
from allam_jax.train.step import accumulate_gradients, split_micro_batches

CFG = ModelConfig(vocab_size=61, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=24, max_seq_len=16,
                  compute_dtype="float32")


def _params(seed=0):
    p = Decoder(CFG).init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))["params"]
    return jax.tree_util.tree_map(lambda x: getattr(x, "value", x), p, is_leaf=lambda x: hasattr(x, "value"))


def _batch(rows=8, t=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "inputs": rng.integers(0, 61, (rows, t)).astype(np.int32),
        "targets": rng.integers(0, 61, (rows, t)).astype(np.int32),
        "positions": np.tile(np.arange(t), (rows, 1)).astype(np.int32),
        "segment_ids": np.ones((rows, t), np.int32),
        "loss_weights": (rng.random((rows, t)) > 0.3).astype(np.float32),
        "lang_id": rng.integers(0, 3, (rows, t)).astype(np.int32),
        "ref_logp": rng.normal(-30.0, 3.0, rows).astype(np.float32),
    }


def _numpy_token_stats(params, batch):
    """float64: per token -log p(target) and log Z."""
    logits = numpy_llama.forward(jax.device_get(params), batch["inputs"], CFG)
    m = logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    tgt = np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
    return logz - tgt, logz


def _numpy_lm_objective(params, batch, z_loss):
    ce, logz = _numpy_token_stats(params, batch)
    w = batch["loss_weights"].astype(np.float64)
    return float(((ce + z_loss * logz**2) * w).sum() / w.sum())


def _numpy_dpo_loss(params, batch, ref_params, beta):
    ce, _ = _numpy_token_stats(params, batch)
    seq = (-ce * batch["loss_weights"]).sum(-1).reshape(-1, 2)
    if ref_params is None:
        ref = batch["ref_logp"].astype(np.float64).reshape(-1, 2)
    else:
        rce, _ = _numpy_token_stats(ref_params, batch)
        ref = (-rce * batch["loss_weights"]).sum(-1).reshape(-1, 2)
    h = (seq[:, 0] - ref[:, 0]) - (seq[:, 1] - ref[:, 1])
    return float(np.mean(np.log1p(np.exp(-beta * h))))


def _check_against_float64(params, grads, numpy_loss, seed=0, eps=1e-3):
    """<grad, v> equals the float64 central difference of the NumPy loss along random directions v."""
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree_util.tree_flatten(jax.device_get(params))
    for _ in range(2):
        v = [rng.normal(size=x.shape) for x in leaves]
        plus = jax.tree_util.tree_unflatten(tree, [x + eps * d for x, d in zip(leaves, v)])
        minus = jax.tree_util.tree_unflatten(tree, [x - eps * d for x, d in zip(leaves, v)])
        want = (numpy_loss(plus) - numpy_loss(minus)) / (2 * eps)
        got = sum(float(np.sum(np.asarray(g, np.float64) * d)) for g, d in zip(jax.tree_util.tree_leaves(grads), v))
        assert got == pytest.approx(want, rel=2e-3, abs=1e-6)


def test_micro_batches_keep_each_examples_rows_together():
    rows = {"i": np.arange(8)}
    np.testing.assert_array_equal(split_micro_batches(rows, 2, 2)["i"], [[0, 1, 4, 5], [2, 3, 6, 7]])
    np.testing.assert_array_equal(split_micro_batches(rows, 4, 1)["i"], [[0, 4], [1, 5], [2, 6], [3, 7]])
    with pytest.raises(Exception, match="4 examples does not split into 3 micro-batches"):
        split_micro_batches(rows, 3, 2)


@pytest.mark.slow
def test_lm_gradients_with_1_and_4_micro_batches_match_float64():
    """z-loss and per-language sums included: one micro-batch or four, the same loss, metrics and gradient."""
    params, batch = _params(), _batch()
    objective = LmObjective(StepConfig(z_loss_weight=0.01, num_languages=3))
    model = Decoder(CFG)
    fn = jax.jit(lambda p, b, n: accumulate_gradients(objective, model, p, b, None, n), static_argnums=2)
    loss1, g1, m1 = fn(params, batch, 1)
    loss4, g4, m4 = fn(params, batch, 4)
    ce, _ = _numpy_token_stats(params, batch)
    w = batch["loss_weights"]
    assert float(loss1) == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-5)
    assert float(loss4) == pytest.approx(float(loss1), rel=1e-6)
    for k in ("log_z_sq", "num_tokens", "lang_ce_sum", "lang_weight_sum"):
        np.testing.assert_allclose(np.asarray(m4[k]), np.asarray(m1[k]), rtol=1e-5)
    for lang in range(3):
        lw = w * (batch["lang_id"] == lang)
        assert float(m4["lang_ce_sum"][lang]) == pytest.approx(float((ce * lw).sum()), rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g4)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    _check_against_float64(params, g4, lambda p: _numpy_lm_objective(p, batch, 0.01))


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["frozen", "precomputed"])
def test_dpo_gradients_with_1_2_and_4_micro_batches_match_float64(reference):
    """DPO accumulates like any objective: the pairs' mean loss, the reward metrics and the gradient are the
    whole batch's whatever the micro-batch count (a frozen reference runs inside each micro-batch)."""
    params, batch = _params(), _batch()
    ref_params = _params(seed=1) if reference == "frozen" else None
    objective = DpoObjective(DpoConfig(beta=0.5, reference=reference))
    model = Decoder(CFG)
    fn = jax.jit(lambda p, b, r, n: accumulate_gradients(objective, model, p, b, r, n), static_argnums=3)
    results = {n: fn(params, batch, ref_params, n) for n in (1, 2, 4)}
    loss1, g1, m1 = results[1]
    assert float(loss1) == pytest.approx(_numpy_dpo_loss(params, batch, ref_params, 0.5), rel=1e-5)
    for n in (2, 4):
        loss, g, m = results[n]
        assert float(loss) == pytest.approx(float(loss1), rel=1e-6)
        for k in ("rewards/chosen", "rewards/margins", "rewards/accuracy", "num_tokens"):
            assert float(m[k]) == pytest.approx(float(m1[k]), rel=1e-5, abs=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    _check_against_float64(params, results[4][1], lambda p: _numpy_dpo_loss(p, batch, ref_params, 0.5))


def _pairs(path, n=8):
    rows = [{"prompt": f"Translate into Arabic: sentence {i}", "chosen": "جملة رقم " + str(i),
             "rejected": f"sentence {i} reversed"} for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
def test_dpo_trains_in_micro_batches_from_gin(tmp_path):
    """``TrainerConfig.grad_accum_steps = 2`` with DPO (refused before): the first step's loss equals the one
    micro-batch run's, and the later steps stay with it."""
    from allam_jax import runner
    from helpers import losses

    pairs = _pairs(tmp_path / "pairs.jsonl")
    common = [f"DpoData.paths = ['{pairs}']", "DpoData.shuffle = False", "TrainerConfig.init_from = None",
              "TrainerConfig.num_steps = 3", "TrainerConfig.batch_size = 4", "TrainerConfig.seq_len = 96",
              "TrainerConfig.log_every = 1", "TrainerConfig.progress_bar = False", "TrainerConfig.tensorboard = False",
              "TrainerConfig.async_checkpointing = False"]
    for accum in (1, 2):
        runner.train_from_gin(["runs/dpo_tiny_cpu.gin"], common + [f"TrainerConfig.grad_accum_steps = {accum}"],
                                 str(tmp_path / f"accum{accum}"))
    one, two = losses(tmp_path / "accum1"), losses(tmp_path / "accum2")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    assert two[1] == pytest.approx(one[1], rel=1e-5)
    assert two[3] == pytest.approx(one[3], rel=1e-3)


@dataclasses.dataclass(frozen=True)
class HalfLmConfig:
    scale: float = 0.5


@dataclasses.dataclass(frozen=True)
class HalfLm(ObjectiveDefaults):
    """A toy objective: the LM loss times a constant."""

    config: HalfLmConfig = HalfLmConfig()
    rows_per_example: int = 1
    name: str = "half_lm"
    config_class = HalfLmConfig

    def loss_sums(self, model, params, batch, extra=None):
        total, sums = LmObjective(StepConfig()).loss_sums(model, params, batch)
        return self.config.scale * sums["ce_sum"], {"ce_sum": sums["ce_sum"], "weight_sum": sums["weight_sum"]}

    def normalise(self, sums):
        denom = jnp.maximum(sums["weight_sum"], 1.0)
        return denom, self.config.scale * sums["ce_sum"] / denom, {"num_tokens": sums["weight_sum"]}


@pytest.mark.slow
def test_a_registered_objective_trains_from_gin(tmp_path, monkeypatch):
    """One OBJECTIVES line and gin picks it (``experiment.objective``), with its own config class's bindings."""
    from allam_jax import runner
    from helpers import losses

    monkeypatch.setitem(OBJECTIVES, "half_lm", HalfLm)
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    base = ["include 'models/tiny.gin'", f"TextFileData.paths = ['{corpus}']", "TrainerConfig.num_steps = 1",
            "TrainerConfig.batch_size = 2", "TrainerConfig.seq_len = 32", "TrainerConfig.log_every = 1",
            "TrainerConfig.progress_bar = False", "TrainerConfig.tensorboard = False",
            "TrainerConfig.async_checkpointing = False"]
    gin_file = tmp_path / "run.gin"
    gin_file.write_text("\n".join(base) + "\n")
    runner.train_from_gin([str(gin_file)], [], str(tmp_path / "lm"))
    runner.train_from_gin([str(gin_file)], ["experiment.objective = 'half_lm'", "HalfLmConfig.scale = 0.25"],
                             str(tmp_path / "toy"))
    assert losses(tmp_path / "toy")[1] == pytest.approx(0.25 * losses(tmp_path / "lm")[1], rel=1e-5)
    assert "experiment.objective = 'half_lm'" in (tmp_path / "toy" / "config.gin").read_text()


def test_former_gin_spellings_still_configure_the_same_run():
    """Configs written before: ``StepConfig.grad_accum_steps`` and ``experiment.dpo = @DpoConfig()``."""
    from allam_jax import gin_setup
    from allam_jax.core.errors import ConfigError

    gin_setup.parse(["runs/dpo_tiny_cpu.gin"], ["experiment.objective = 'lm'", "experiment.dpo = @DpoConfig()",
                                                "DpoConfig.beta = 0.25", "StepConfig.grad_accum_steps = 4"])
    exp = gin_setup.build_experiment()
    assert isinstance(exp.objective, DpoObjective) and exp.objective.config.beta == 0.25
    assert exp.trainer.grad_accum_steps == 4
    gin_setup.parse(["runs/dpo_tiny_cpu.gin"], ["StepConfig.grad_accum_steps = 4", "TrainerConfig.grad_accum_steps = 2"])
    with pytest.raises(ConfigError, match="StepConfig.grad_accum_steps = 4 and TrainerConfig.grad_accum_steps = 2"):
        gin_setup.build_experiment()
    gin_setup.parse(["runs/dpo_tiny_cpu.gin"], ["experiment.objective = 'dpx'"])
    with pytest.raises(ConfigError, match=r"'dpx' is not a registered objective; known: \['dpo', 'lm'\]"):
        gin_setup.build_experiment()
