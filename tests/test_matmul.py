"""The hand-written projection VJP (ModelConfig.matmul_impl = 'explicit_vjp'), bf16 and float32, against float64
NumPy and against XLA's own autodiff."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from allam_jax.core.errors import ConfigError
from allam_jax.model import Decoder, ModelConfig
from allam_jax.model.matmul import project
from allam_jax.objectives.lm import LmObjective, StepConfig
from allam_jax.train.step import accumulate_gradients


def _bf16_exact(rng, shape):
    """Values exactly representable in bf16, so the only error left is the accumulation's."""
    return jnp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(jnp.bfloat16)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("x_shape,k_shape,num_contract", [
    ((3, 17, 24), (24, 40), 1),        # [batch, len, embed] x [embed, mlp]
    ((2, 9, 4, 8), (4, 8, 24), 2),     # attention output: [.., heads, head_dim] x [heads, head_dim, embed]
    ((2, 9, 24), (24, 3, 8), 1),       # a query projection into [heads, head_dim]
])
def test_forward_and_gradients_match_float64(x_shape, k_shape, num_contract, dtype):
    rng = np.random.default_rng(0)
    x = _bf16_exact(rng, x_shape).astype(dtype)
    kernel = _bf16_exact(rng, k_shape).astype(jnp.float32)
    cot = _bf16_exact(rng, x_shape[: len(x_shape) - num_contract] + k_shape[num_contract:]).astype(dtype)

    y, vjp = jax.vjp(lambda a, b: project(a, b, num_contract, dtype, "explicit_vjp"), x, kernel)
    dx, dk = vjp(cot)
    assert y.dtype == dtype and dx.dtype == dtype and dk.dtype == jnp.float32

    xs = np.asarray(x, np.float64)
    ks = np.asarray(kernel, np.float64)
    cs = np.asarray(cot, np.float64)
    m = int(np.prod(x_shape[: len(x_shape) - num_contract]))
    kk = int(np.prod(k_shape[:num_contract]))
    x2, k2, c2 = xs.reshape(m, kk), ks.reshape(kk, -1), cs.reshape(m, -1)
    want_y, want_dx, want_dk = x2 @ k2, c2 @ k2.T, x2.T @ c2
    # bf16 outputs are rounded once (8 bits of mantissa); kernel gradients, and everything in float32, stay
    # float32-accurate.
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(y, np.float64).reshape(m, -1), want_y, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(dx, np.float64).reshape(m, kk), want_dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(dk, np.float64).reshape(k2.shape), want_dk, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype,operand", [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")])
def test_every_dot_of_the_gradient_takes_the_fast_form(dtype, operand):
    """The point of the custom gradient: three dots, each contracting its lhs's last axis with f32 out (XLA's CPU
    backend would otherwise upcast a bf16 weight-gradient dot, and transpose the output gradient for it)."""
    x = jnp.ones((64, 32), dtype)
    kernel = jnp.ones((32, 48), jnp.float32)
    grad = jax.jit(jax.value_and_grad(lambda a, b: project(a, b, 1, dtype, "explicit_vjp").astype(jnp.float32).sum(),
                                      argnums=(0, 1)))
    hlo = grad.lower(x, kernel).as_text()
    dots = re.findall(r"stablehlo\.dot_general[^\n]*", hlo)
    assert len(dots) == 3
    for dot in dots:
        assert "contracting_dims = [1] x" in dot, dot
        assert re.search(rf"\(tensor<[0-9x]+x{operand}>, tensor<[0-9x]+x{operand}>\) -> tensor<[0-9x]+xf32>", dot), dot
    # The weight gradient multiplies the transposed activation [32, 64] with the output gradient as it comes.
    assert any("tensor<32x64x" in dot and "tensor<64x48x" in dot for dot in dots), dots


@pytest.mark.slow
@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_model_with_explicit_vjp_trains_like_xla_float32(tie_embeddings):
    """Same init, same batch, a few AdamW steps: the hand-written gradients' losses follow XLA's float32 autodiff
    (exactly enough in float32, within bf16 rounding in bf16)."""
    base = ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                       max_seq_len=16, compute_dtype="float32", matmul_impl="xla", scan_layers=False,
                       tie_embeddings=tie_embeddings)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 97, (4, 17)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": np.tile(np.arange(16), (4, 1)),
             "segment_ids": np.ones((4, 16), np.int32), "loss_weights": np.ones((4, 16), np.float32),
             "lang_id": np.zeros((4, 16), np.int32)}
    losses = {}
    variants = {"f32": base, "f32_explicit": base.replace(matmul_impl="explicit_vjp"),
                "bf16": base.replace(compute_dtype="bfloat16", matmul_impl="explicit_vjp")}
    for name, cfg in variants.items():
        model = Decoder(cfg)
        params = jax.tree_util.tree_map(
            lambda p: getattr(p, "value", p), model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32))["params"],
            is_leaf=lambda p: hasattr(p, "value"))
        tx = optax.adamw(3e-3)
        opt_state = tx.init(params)

        @jax.jit
        def step(params, opt_state, model=model, tx=tx):
            loss, grads, _ = accumulate_gradients(LmObjective(StepConfig(num_languages=1)), model, params, batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        out = []
        for _ in range(6):
            params, opt_state, loss = step(params, opt_state)
            out.append(float(loss))
        losses[name] = out
    assert losses["f32"][-1] < losses["f32"][0] - 0.1  # it learns at all
    np.testing.assert_allclose(losses["f32_explicit"], losses["f32"], rtol=1e-5)
    np.testing.assert_allclose(losses["bf16"], losses["f32"], atol=0.03)


def test_bad_matmul_impl_names_the_field():
    with pytest.raises(ConfigError, match="matmul_impl"):
        ModelConfig(matmul_impl="fast")


def test_float32_output_keeps_the_accumulator():
    """The LM head asks for float32 logits: no bf16 rounding of the product, and float32 gradients in."""
    rng = np.random.default_rng(4)
    x = _bf16_exact(rng, (6, 64))
    kernel = _bf16_exact(rng, (64, 10)).astype(jnp.float32)
    y, vjp = jax.vjp(lambda a, b: project(a, b, 1, jnp.bfloat16, "explicit_vjp", out_dtype=jnp.float32), x, kernel)
    assert y.dtype == jnp.float32
    want = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-5, atol=1e-5)
    dx, dk = vjp(jnp.ones_like(y))
    assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.float32


def test_cpu_bf16_gin_file_sets_the_fast_path():
    from allam_jax import gin_setup

    gin_setup.parse(["models/small_100m.gin", "perf/cpu_bf16.gin"])
    cfg = gin_setup.model_config()
    assert (cfg.compute_dtype, cfg.matmul_impl, cfg.attention_impl) == ("bfloat16", "explicit_vjp", "blockwise")
    assert cfg.d_model == 768  # the model file still applies


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {}, {"tie_embeddings": True}, {"remat_policy": "full"}, {"num_kv_heads": 1, "head_dim": 16},
    {"attention_impl": "blockwise", "scan_layers": False, "tie_embeddings": True},
])
def test_bf16_matmuls_compile_and_run_for_every_model_variant(overrides):
    """XLA may rewrite a dot after deciding to keep it in bf16 (a tied LM head's gradient did), and the CPU
    runtime then refuses it; every variant, including one-token and odd shapes, must compile and give finite
    gradients."""
    cfg = ModelConfig(**{**dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                                max_seq_len=16, compute_dtype="bfloat16", matmul_impl="explicit_vjp"), **overrides})
    model = Decoder(cfg)
    for shape in [(4, 16), (1, 1), (3, 5)]:
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, shape), jnp.int32)
        params = model.init(jax.random.PRNGKey(0), tokens)["params"]
        loss, grads = jax.jit(jax.value_and_grad(lambda p: model.apply({"params": p}, tokens).mean()))(params)
        assert np.isfinite(float(loss))
        assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
