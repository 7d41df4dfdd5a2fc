import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_llama
from allam_jax.kernels import reference_attention
from allam_jax.core.errors import ConfigError
from allam_jax.model import Decoder, ModelConfig
from allam_jax.model.layers import rope
from allam_jax.core.params import abstract_params
from allam_jax.core.trees import count_params

TINY = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48, max_seq_len=32,
            compute_dtype="float32")


def _init(cfg, seed=0, seq=8):
    model = Decoder(cfg)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, seq), jnp.int32))["params"]
    return model, jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params,
                                         is_leaf=lambda x: hasattr(x, "value"))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {}, {"num_kv_heads": 4}, {"num_kv_heads": 1}, {"tie_embeddings": True}, {"scan_layers": False},
    {"remat_policy": "full"}, {"head_dim": 16},
])
def test_logits_match_float64_numpy_llama(overrides):
    cfg = ModelConfig(**{**TINY, **overrides})
    model, params = _init(cfg)
    # Perturb the norm scales so a bug in their use cannot hide behind ones.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(path))), x.shape)
        if "scale" in jax.tree_util.keystr(path) else x, params)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
    got = model.apply({"params": params}, jnp.asarray(tokens))
    want = numpy_llama.forward(jax.device_get(params), tokens, cfg)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_packed_segments_match_separate_documents():
    cfg = ModelConfig(**TINY)
    model, params = _init(cfg)
    rng = np.random.default_rng(2)
    a, b = rng.integers(3, 97, 5), rng.integers(3, 97, 7)
    packed = np.concatenate([a, b])[None]
    positions = np.concatenate([np.arange(5), np.arange(7)])[None]
    segments = np.array([[1] * 5 + [2] * 7])
    out = model.apply({"params": params}, jnp.asarray(packed), jnp.asarray(positions), jnp.asarray(segments))
    out_a = model.apply({"params": params}, jnp.asarray(a[None]))
    out_b = model.apply({"params": params}, jnp.asarray(b[None]))
    np.testing.assert_allclose(out[0, :5], out_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 5:], out_b[0], atol=1e-5)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_reference_attention_matches_numpy(heads, kv_heads, causal):
    rng = np.random.default_rng(3)
    q = rng.normal(size=(2, 9, heads, 8))
    k = rng.normal(size=(2, 9, kv_heads, 8))
    v = rng.normal(size=(2, 9, kv_heads, 8))
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1] * 9])
    got = reference_attention(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32),
                              segment_ids=jnp.asarray(seg), causal=causal)
    np.testing.assert_allclose(np.asarray(got), numpy_llama.attention(q, k, v, seg, causal), atol=1e-5)


def test_rope_matches_hf_formula():
    x = np.random.default_rng(4).normal(size=(2, 6, 3, 16))
    pos = np.array([[0, 1, 2, 3, 4, 5], [7, 8, 9, 0, 1, 2]])
    got = rope(jnp.asarray(x, jnp.float32), jnp.asarray(pos), 500000.0)
    np.testing.assert_allclose(np.asarray(got), numpy_llama.apply_rope(x, pos, 500000.0), atol=1e-5)


@pytest.mark.slow
def test_bfloat16_rope_is_transformers_bfloat16_rope():
    """In bfloat16 the rotation runs in bfloat16 with sin/cos rounded to it, as transformers' Llama does it (its own
    ``apply_rotary_pos_emb`` on torch bfloat16 tensors is the reference), and stays within bfloat16 rounding of the
    exact rotation."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    x = np.random.default_rng(6).normal(size=(2, 64, 4, 128)).astype(np.float32)
    pos = np.arange(64)[None].repeat(2, 0) * 37  # positions up to 2331: large angles
    x16 = jnp.asarray(x, jnp.bfloat16)
    got = np.asarray(rope(x16, jnp.asarray(pos), 10000.0).astype(jnp.float32))
    inv = 1.0 / 10000.0 ** (np.arange(0, 128, 2, dtype=np.float32) / 128)
    angles = torch.tensor(pos, dtype=torch.float32)[..., None] * torch.tensor(inv)
    emb = torch.cat([angles, angles], -1)
    t = torch.tensor(np.asarray(x16.astype(jnp.float32))).to(torch.bfloat16).transpose(1, 2)  # [b, heads, t, d]
    want, _ = apply_rotary_pos_emb(t, t, emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16))
    want = want.transpose(1, 2).float().numpy()
    exact = numpy_llama.apply_rope(np.asarray(x16.astype(jnp.float32), np.float64), pos, 10000.0)
    np.testing.assert_allclose(got, want, atol=2 ** -6, rtol=2 ** -7)  # one bfloat16 rounding apart at most
    assert np.abs(got - exact).max() <= 4 * np.abs(want - exact).max() + 1e-6
    # and no float32 copy of q/k (or of its halves) exists in the computation, forward or backward
    def forward(x):
        return rope(x, jnp.asarray(pos), 10000.0)

    def backward(x):  # the pullback of a bfloat16 cotangent
        return jax.vjp(forward, x)[1](jnp.ones_like(x))

    for fn in (forward, backward):
        big = [v.aval for e in jax.make_jaxpr(fn)(x16).eqns for v in e.outvars
               if v.aval.dtype == jnp.float32 and v.aval.size >= x.size // 2]
        assert big == [], big


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True}, {"num_kv_heads": 1}, {"head_dim": 16}])
def test_param_count_formula_matches_eval_shape(overrides):
    cfg = ModelConfig(**{**TINY, **overrides})
    assert count_params(abstract_params(Decoder(cfg))) == cfg.num_params()


def test_allam_7b_has_about_7b_params_without_allocating():
    cfg = ModelConfig(vocab_size=64000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32, mlp_dim=11008,
                      max_seq_len=4096)
    n = count_params(abstract_params(Decoder(cfg)))
    assert 6.9e9 <= n <= 7.1e9
    # FLOPs per token: 2N (matmuls, embedding lookup excluded) plus attention 4*L*T*d.
    expected = 2 * (n - 64000 * 4096 - 65 * 4096) + 4 * 32 * 4096 * 4096
    assert cfg.flops_per_token() == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
    cfg = ModelConfig(**TINY)
    model, params = _init(cfg)
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 97, (2, 10)))
    full = model.apply({"params": params}, tokens)
    half = Decoder(cfg.replace(compute_dtype="bfloat16")).apply({"params": params}, tokens)
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(half), np.asarray(full), atol=0.05)


@pytest.mark.parametrize("field,value,fragment", [
    ("num_layers", 0, "num_layers"), ("num_heads", 3, "num_heads"), ("num_kv_heads", 3, "num_kv_heads"),
    ("remat_policy", "sometimes", "remat_policy"), ("attention_impl", "magic", "attention_impl"),
    ("compute_dtype", "float8", "compute_dtype"), ("d_model", "64", "d_model"),
])
def test_bad_model_values_name_the_field(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ModelConfig(**{**TINY, field: value})
