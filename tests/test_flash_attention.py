"""Pallas flash attention against the XLA reference and a float64 NumPy reference, outputs and gradients.

On CPU the kernels run in interpret mode; on a GPU the same tests run the Triton kernels.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from allam_jax.kernels import pallas_attention
from allam_jax.kernels.flash_attention import BlockSizes, flash_attention
from allam_jax.kernels.reference_attention import reference_attention

INTERPRET = jax.default_backend() not in ("gpu", "tpu")
BLOCKS = BlockSizes(16, 16, 16, 16)
HEAD_DIM = 16


def _inputs(seed, batch, t, heads, kv_heads, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(keys[0], (batch, t, heads, HEAD_DIM), dtype)
    k = jax.random.normal(keys[1], (batch, t, kv_heads, HEAD_DIM), dtype)
    v = jax.random.normal(keys[2], (batch, t, kv_heads, HEAD_DIM), dtype)
    do = jax.random.normal(keys[3], (batch, t, heads, HEAD_DIM), dtype)
    return q, k, v, do


def _segments(layout, batch, t, seed):
    rng = np.random.RandomState(seed)
    if layout == "none":
        return None
    if layout == "packed":  # sorted runs of 1..4 documents per row, ids from 1, padding 0 at the end
        out = np.zeros((batch, t), np.int32)
        for b in range(batch):
            cuts = np.sort(rng.choice(np.arange(1, t), size=rng.randint(1, 4), replace=False))
            ids = np.searchsorted(cuts, np.arange(t), side="right") + 1
            pad = rng.randint(0, t // 4)
            ids[t - pad:] = 0
            out[b] = ids
        return jnp.asarray(out)
    if layout == "interleaved":  # non-contiguous segments (only meaningful without causality)
        return jnp.asarray(rng.randint(0, 3, (batch, t)).astype(np.int32))
    raise ValueError(layout)


def _flash(segs, causal, **kw):
    return lambda q, k, v: flash_attention(q, k, v, segment_ids=segs, causal=causal, block_sizes=BLOCKS,
                                           interpret=INTERPRET, **kw)


def _ref(segs, causal):
    return lambda q, k, v: reference_attention(q, k, v, segment_ids=segs, causal=causal)


def _compare(f, g, q, k, v, do, atol):
    out_f, vjp_f = jax.vjp(f, q, k, v)
    out_g, vjp_g = jax.vjp(g, q, k, v)
    np.testing.assert_allclose(np.asarray(out_f, np.float32), np.asarray(out_g, np.float32), atol=atol, rtol=atol)
    for name, a, b in zip(("dq", "dk", "dv"), vjp_f(do), vjp_g(do)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol, rtol=atol,
                                   err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("layout", ["none", "packed"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2), (8, 1)])
def test_matches_reference_fp32(causal, layout, heads, kv_heads):
    t = 48
    q, k, v, do = _inputs(hash((causal, layout, heads, kv_heads)) % 1000, 2, t, heads, kv_heads)
    segs = _segments(layout, 2, t, heads)
    _compare(_flash(segs, causal), _ref(segs, causal), q, k, v, do, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("t", [1, 5, 37, 50, 67])
def test_odd_lengths_are_padded_and_masked(t):
    q, k, v, do = _inputs(t, 1, t, 4, 2)
    segs = _segments("packed", 1, t, t) if t > 4 else None
    _compare(_flash(segs, True), _ref(segs, True), q, k, v, do, atol=2e-5)


@pytest.mark.slow
def test_non_contiguous_segments_without_causality():
    q, k, v, do = _inputs(3, 2, 32, 4, 2)
    segs = _segments("interleaved", 2, 32, 3)
    _compare(_flash(segs, False), _ref(segs, False), q, k, v, do, atol=2e-5)


@pytest.mark.slow
def test_heads_major_and_gpu_layouts_agree():
    """The two BlockSpec layouts (TPU-style heads-major, GPU in place) compute the same function."""
    q, k, v, do = _inputs(5, 2, 32, 8, 2)
    segs = _segments("packed", 2, 32, 5)
    a = _flash(segs, True, backend="tpu")
    b = _flash(segs, True, backend="gpu")
    if not INTERPRET and jax.default_backend() != "tpu":
        a = _ref(segs, True)
    _compare(a, b, q, k, v, do, atol=2e-5)


def _numpy_attention_and_grads(q, k, v, do, segs, causal, scale):
    """Float64 attention and its gradients in closed form, heads grouped as in GQA."""
    q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
    b, t, h, d = q.shape
    g = h // k.shape[2]
    kk, vv = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, kk) * scale
    mask = np.ones((b, 1, t, t), bool)
    if causal:
        mask &= np.tril(np.ones((t, t), bool))[None, None]
    if segs is not None:
        segs = np.asarray(segs)
        mask &= (segs[:, :, None] == segs[:, None, :])[:, None]
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshd->bthd", p, vv)
    dp = np.einsum("bthd,bshd->bhts", do, vv)
    ds = p * (dp - np.einsum("bthd,bthd->bht", do, o)[..., None])
    dq = np.einsum("bhts,bshd->bthd", ds, kk) * scale
    dk = np.einsum("bhts,bthd->bshd", ds, q) * scale
    dv = np.einsum("bhts,bthd->bshd", p, do)
    fold = lambda x: x.reshape(b, t, k.shape[2], g, d).sum(3)  # noqa: E731
    return o, dq, fold(dk), fold(dv)


@pytest.mark.slow
def test_matches_float64_numpy():
    q, k, v, do = _inputs(11, 2, 40, 8, 2)
    segs = _segments("packed", 2, 40, 11)
    want = _numpy_attention_and_grads(q, k, v, do, segs, True, HEAD_DIM**-0.5)
    out, vjp = jax.vjp(_flash(segs, True), q, k, v)
    got = (out, *vjp(do))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, atol=3e-5, rtol=3e-5, err_msg=name)


@pytest.mark.slow
def test_bfloat16_within_band():
    """bf16 inputs: relative error to the float32 result on the same (rounded) inputs stays in bf16's band."""
    q, k, v, do = _inputs(13, 2, 64, 8, 4, jnp.bfloat16)
    segs = _segments("packed", 2, 64, 13)
    out, vjp = jax.vjp(_flash(segs, True), q, k, v)
    up = [x.astype(jnp.float32) for x in (q, k, v)]
    ref, ref_vjp = jax.vjp(_ref(segs, True), *up)
    assert out.dtype == jnp.bfloat16
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *vjp(do)), (ref, *ref_vjp(do.astype(jnp.float32)))):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert rel < 1.5e-2, (name, rel)


@pytest.mark.slow
def test_bad_shapes_are_rejected():
    q, k, v, _ = _inputs(0, 1, 16, 6, 4)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        flash_attention(q, k, v, interpret=True)
    q, k, v, _ = _inputs(0, 1, 16, 4, 2)
    with pytest.raises(ValueError, match="segment_ids"):
        flash_attention(q, k, v, segment_ids=jnp.zeros((1, 8), jnp.int32), interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        BlockSizes(block_q=48)


@pytest.mark.slow
def test_registry_entry_matches_reference():
    q, k, v, do = _inputs(17, 2, 32, 4, 2)
    segs = _segments("packed", 2, 32, 17)
    f = lambda q, k, v: pallas_attention(q, k, v, segment_ids=segs, causal=True, block_sizes=BLOCKS)  # noqa: E731
    _compare(f, _ref(segs, True), q, k, v, do, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["pallas", "blockwise"])
def test_tiny_training_run_matches_reference_attention(tmp_path, impl):
    """A tiny train run with a fused/blockwise attention follows the reference run's loss curve."""
    from allam_jax.train.loop import train
    from helpers import corpus_files, experiment, losses

    files = corpus_files(tmp_path / "corpus", en_docs=100, ar_docs=300)
    curves = {}
    for name in ("reference", impl):
        exp = experiment(files, num_steps=8, model={"attention_impl": name, "compute_dtype": "float32"},
                         async_checkpointing=False)
        train(exp, str(tmp_path / name))
        curves[name] = losses(tmp_path / name)
    assert sorted(curves[impl]) == list(range(1, 9))
    assert curves[impl][8] < curves[impl][1] - 0.1, "the loss goes down"
    for step, loss in curves["reference"].items():
        assert curves[impl][step] == pytest.approx(loss, rel=1e-4, abs=1e-4), step
