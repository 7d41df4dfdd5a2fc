"""Pallas attention on TPU: lowering through Mosaic for a fake TPU topology (the real TPU compiler, from libtpu)
and TPU-interpret-mode numerics against the plain-jnp reference, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from allam_jax.aot.topology import resolve_topology
from allam_jax.kernels import pallas_attention
from allam_jax.kernels.flash_attention import flash_attention
from allam_jax.kernels.reference_attention import reference_attention

pytestmark = pytest.mark.tpu


@pytest.fixture(scope="module")
def tpu_mesh():
    devices = resolve_topology("v5e:2x2").devices
    return Mesh(np.asarray(devices).reshape(2, 1, 2), ("data", "fsdp", "tensor"))


def _segments(batch, length):
    """Three packed documents per row, at different offsets in each row."""
    ids = np.zeros((batch, length), np.int32)
    for b in range(batch):
        cuts = sorted({length // 3 + 7 * b, 2 * length // 3 - 5 * b})
        for c in cuts:
            ids[b, c:] += 1
    return ids


def _compile_for_tpu(mesh, batch, length, heads, kv_heads, head_dim, dtype, causal, with_segments):
    qkv = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    seg = NamedSharding(mesh, P(("data", "fsdp"), None))

    def loss(q, k, v, segment_ids):
        out = pallas_attention(q, k, v, segment_ids=segment_ids, causal=causal)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    args = [jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype, sharding=qkv),
            jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), dtype, sharding=qkv),
            jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), dtype, sharding=qkv),
            jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=seg) if with_segments else None]
    with jax.set_mesh(mesh):
        fwd = jax.jit(loss).lower(*args).compile()
        bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
    return fwd, bwd


# (T, heads, kv_heads, head_dim, dtype, causal, segments): every option of the issue appears at least once
CASES = [
    (2048, 8, 2, 128, jnp.bfloat16, True, True),     # the shape that failed to lower before (GQA 4)
    (2048, 8, 8, 128, jnp.bfloat16, False, True),    # GQA 1, not causal
    (1024, 16, 2, 64, jnp.float32, True, False),     # GQA 8, head_dim 64, fp32, no segments
    (128, 4, 2, 64, jnp.bfloat16, False, False),     # the shortest sequence
    (8192, 8, 2, 128, jnp.bfloat16, True, True),     # the longest
    (200, 4, 4, 128, jnp.float32, True, True),       # a length that needs padding to the 128-lane tile
]


@pytest.mark.slow
@pytest.mark.parametrize("length,heads,kv_heads,head_dim,dtype,causal,segments", CASES)
def test_pallas_attention_lowers_and_compiles_for_tpu(tpu_mesh, length, heads, kv_heads, head_dim, dtype, causal,
                                                      segments):
    fwd, bwd = _compile_for_tpu(tpu_mesh, 4, length, heads, kv_heads, head_dim, dtype, causal, segments)
    hlo = bwd.as_text()
    assert "tpu_custom_call" in hlo  # a Mosaic kernel, not an XLA fallback
    assert fwd.memory_analysis().argument_size_in_bytes > 0


def test_pallas_dispatch_follows_the_mesh_devices(tpu_mesh):
    """On a CPU host the TPU mesh's devices decide: the TPU kernel is lowered, not the interpret-mode one."""
    fwd, _ = _compile_for_tpu(tpu_mesh, 4, 256, 4, 2, 128, jnp.bfloat16, True, True)
    assert "tpu_custom_call" in fwd.as_text()
    from allam_jax.core.platform import target_platform

    assert target_platform() == "cpu"
    with jax.set_mesh(tpu_mesh):
        assert target_platform() == "tpu"


def _inputs(batch, length, heads, kv_heads, head_dim, dtype, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (batch, length, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (batch, length, kv_heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (batch, length, kv_heads, head_dim), jnp.float32).astype(dtype)
    do = jax.random.normal(ks[3], (batch, length, heads, head_dim), jnp.float32).astype(dtype)
    return q, k, v, do


@pytest.mark.slow
@pytest.mark.parametrize("length,heads,kv_heads,causal,segments,fused", [
    (256, 4, 2, True, True, True),
    (256, 8, 1, False, True, True),
    (200, 4, 4, True, False, True),   # padded to 256 inside
    (384, 4, 2, False, False, True),  # three 128 blocks
    (384, 4, 2, True, True, False),   # the separate dK/dV and dQ backward kernels
])
def test_tpu_kernel_matches_reference_in_tpu_interpret_mode(length, heads, kv_heads, causal, segments, fused):
    q, k, v, do = _inputs(2, length, heads, kv_heads, 64, jnp.float32)
    seg = jnp.asarray(_segments(2, length)) if segments else None

    def run(fn):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v), q, k, v)
        return (out, *vjp(do))

    with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
        got = jax.jit(lambda q, k, v: run(lambda *a: flash_attention(*a, segment_ids=seg, causal=causal,
                                                                     backend="tpu", fused_backward=fused)))(q, k, v)
    want = run(lambda *a: reference_attention(*a, segment_ids=seg, causal=causal))
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-4, rtol=2e-4, err_msg=name)


@pytest.mark.slow
def test_tpu_kernel_bf16_is_as_accurate_as_reference_in_bf16():
    q, k, v, _ = _inputs(1, 256, 4, 2, 128, jnp.bfloat16, seed=3)
    seg = jnp.asarray(_segments(1, 256))
    exact = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), segment_ids=seg, causal=True)
    with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
        got = jax.jit(lambda q, k, v: flash_attention(q, k, v, segment_ids=seg, causal=True, backend="tpu"))(q, k, v)
    ref = reference_attention(q, k, v, segment_ids=seg, causal=True)
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - exact)))
    ref_err = float(jnp.max(jnp.abs(ref.astype(jnp.float32) - exact)))
    assert err <= 2 * ref_err + 1e-3, (err, ref_err)
