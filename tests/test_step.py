import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_llama
from allam_jax.model import Decoder, ModelConfig
from allam_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer, weight_decay_mask
from allam_jax.objectives.lm import LmObjective, StepConfig, loss_sums
from allam_jax.train.step import accumulate_gradients


def loss_and_grads(model, params, batch, cfg, micro_batches=1):
    """The trainer's gradients of the LM objective (what a train step applies)."""
    return accumulate_gradients(LmObjective(cfg), model, params, batch, None, micro_batches)

CFG = ModelConfig(vocab_size=61, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=24, max_seq_len=16,
                  compute_dtype="float32")


def _params():
    p = Decoder(CFG).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return jax.tree_util.tree_map(lambda x: getattr(x, "value", x), p, is_leaf=lambda x: hasattr(x, "value"))


def _batch(b=4, t=10, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.random((b, t)) > 0.2).astype(np.float32)
    return {
        "inputs": rng.integers(0, 61, (b, t)).astype(np.int32),
        "targets": rng.integers(0, 61, (b, t)).astype(np.int32),
        "positions": np.tile(np.arange(t), (b, 1)).astype(np.int32),
        "segment_ids": np.ones((b, t), np.int32),
        "loss_weights": w,
        "lang_id": rng.integers(0, 3, (b, t)).astype(np.int32),
    }


@pytest.mark.slow
def test_loss_and_per_language_loss_match_numpy():
    params, batch = _params(), _batch()
    model = Decoder(CFG)
    loss, _, parts = loss_and_grads(model, params, batch, StepConfig(num_languages=3))
    logits = numpy_llama.forward(jax.device_get(params), batch["inputs"], CFG)
    assert float(loss) == pytest.approx(numpy_llama.cross_entropy(logits, batch["targets"], batch["loss_weights"]),
                                        rel=1e-5)
    for lang in range(3):
        w = batch["loss_weights"] * (batch["lang_id"] == lang)
        want = numpy_llama.cross_entropy(logits, batch["targets"], w)
        got = float(parts["lang_ce_sum"][lang] / parts["lang_weight_sum"][lang])
        assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_equals_full_batch():
    params, batch = _params(), _batch(b=8)
    model = Decoder(CFG)
    loss1, g1, _ = loss_and_grads(model, params, batch, StepConfig(num_languages=3))
    loss4, g4, _ = loss_and_grads(model, params, batch, StepConfig(num_languages=3), 4)
    assert float(loss4) == pytest.approx(float(loss1), rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g4)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_z_loss_adds_weighted_log_z_squared():
    params, batch = _params(), _batch()
    model = Decoder(CFG)
    obj0, parts = loss_sums(model, params, batch, StepConfig(num_languages=3))
    obj1, _ = loss_sums(model, params, batch, StepConfig(num_languages=3, z_loss_weight=0.01))
    logits = numpy_llama.forward(jax.device_get(params), batch["inputs"], CFG)
    m = logits.max(-1, keepdims=True)
    logz = (np.log(np.exp(logits - m).sum(-1)) + m[..., 0])
    z = float((logz**2 * batch["loss_weights"]).sum())
    assert float(obj1 - obj0) == pytest.approx(0.01 * z, rel=1e-4)


@pytest.mark.slow
def test_loss_weights_zero_out_tokens():
    params, batch = _params(), _batch()
    model = Decoder(CFG)
    batch2 = dict(batch, targets=np.where(batch["loss_weights"] > 0, batch["targets"], 0))
    l1, _, _ = loss_and_grads(model, params, batch, StepConfig(num_languages=3))
    l2, _, _ = loss_and_grads(model, params, batch2, StepConfig(num_languages=3))
    assert float(l1) == float(l2)


def test_schedule_warmup_cosine_floor():
    cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=10, decay_steps=110, final_lr_fraction=0.1)
    s = learning_rate_schedule(cfg)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)), rel=1e-5)
    assert float(s(110)) == pytest.approx(0.1, rel=1e-5)
    assert float(s(500)) == pytest.approx(0.1, rel=1e-5)
    lin = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=0, decay_steps=100,
                                                 schedule="linear", final_lr_fraction=0.0))
    assert float(lin(50)) == pytest.approx(0.5)


@pytest.mark.slow
def test_weight_decay_skips_norm_scales_and_matches_adamw_formula():
    params = _params()
    mask = weight_decay_mask(params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert all(not v for k, v in flat.items() if "scale" in k)
    assert all(v for k, v in flat.items() if "kernel" in k or "embedding" in k)
    # One AdamW step with zero gradients: only weight decay moves the weights (p -= lr * wd * p).
    cfg = OptimizerConfig(learning_rate=0.5, warmup_steps=0, decay_steps=10, schedule="constant",
                          weight_decay=0.1, clip_norm=0.0)
    tx = make_optimizer(cfg)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    np.testing.assert_allclose(new["lm_head"]["kernel"], params["lm_head"]["kernel"] * (1 - 0.05), rtol=1e-6)
    np.testing.assert_array_equal(new["final_norm"]["scale"], params["final_norm"]["scale"])


@pytest.mark.slow
def test_clipping_applies_before_adam():
    """With a large eps Adam's step depends on the gradient's scale, unless clipping fixed the scale first."""
    params = _params()
    kw = dict(learning_rate=1.0, warmup_steps=0, decay_steps=10, schedule="constant", weight_decay=0.0, eps=1.0)
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.01), params)
    big = jax.tree_util.tree_map(lambda g: g * 1000.0, grads)

    def first_update(cfg, g):
        tx = make_optimizer(cfg)
        return tx.update(g, tx.init(params), params)[0]["lm_head"]["kernel"]

    clipped = OptimizerConfig(clip_norm=1e-3, **kw)
    np.testing.assert_allclose(first_update(clipped, grads), first_update(clipped, big), rtol=1e-5)
    unclipped = OptimizerConfig(clip_norm=0.0, **kw)
    assert not np.allclose(first_update(unclipped, grads), first_update(unclipped, big), rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk", [2, 5])
def test_chunked_logits_give_the_same_loss_and_gradients(tied, chunk):
    """StepConfig.logits_chunk_size changes memory, not math: loss (with z-loss), per-language sums and every
    gradient equal the unchunked step's; and the unchunked loss is the float64 NumPy Llama's."""
    cfg = CFG.replace(tie_embeddings=tied)
    model = Decoder(cfg)
    p = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), p, is_leaf=lambda x: hasattr(x, "value"))
    batch = _batch(b=4, t=10, seed=1)
    plain = StepConfig(num_languages=3, z_loss_weight=1e-3)
    chunked = StepConfig(num_languages=3, z_loss_weight=1e-3, logits_chunk_size=chunk)
    loss1, g1, parts1 = jax.jit(lambda p, b: loss_and_grads(model, p, b, plain))(params, batch)
    loss2, g2, parts2 = jax.jit(lambda p, b: loss_and_grads(model, p, b, chunked))(params, batch)
    assert float(loss2) == pytest.approx(float(loss1), rel=1e-6)
    for k in ("log_z_sq", "lang_ce_sum", "lang_weight_sum"):
        np.testing.assert_allclose(np.asarray(parts2[k]), np.asarray(parts1[k]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    if not tied:
        logits = numpy_llama.forward(jax.device_get(params), batch["inputs"], cfg)
        want = numpy_llama.cross_entropy(logits, batch["targets"], batch["loss_weights"])
        assert float(loss2) == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_chunk_size_must_divide_the_sequence():
    from allam_jax.core.errors import ConfigError

    with pytest.raises(ConfigError, match="logits_chunk_size=3 must be a positive divisor of the sequence length 10"):
        loss_sums(Decoder(CFG), _params(), _batch(t=10), StepConfig(logits_chunk_size=3))
    with pytest.raises(ConfigError, match="logits_chunk_size"):
        StepConfig(logits_chunk_size=-1)
