"""The blockwise (row-by-row, recomputing) CPU attention against the reference and a float64 NumPy attention."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from allam_jax.kernels import get_attention_fn
from allam_jax.kernels.blockwise_attention import blockwise_attention
from allam_jax.kernels.reference_attention import reference_attention
from test_flash_attention import HEAD_DIM, _compare, _inputs, _numpy_attention_and_grads, _ref, _segments


def _blockwise(segs, causal, query_block=None, rows_per_step=None):
    return lambda q, k, v: blockwise_attention(q, k, v, segment_ids=segs, causal=causal, query_block=query_block,
                                               rows_per_step=rows_per_step)


# (query_block, rows_per_step): the defaults (one query block at these lengths, all rows in one step), causal
# query blocks one row at a time, and blocks with several rows a step where the rows do not divide evenly.
TILINGS = [(None, None), (16, 1), (8, 3)]


@pytest.mark.slow
@pytest.mark.parametrize("tiling", TILINGS)
@pytest.mark.parametrize("causal,layout", [(True, "none"), (True, "packed"), (False, "packed"), (False, "interleaved")])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (8, 1)])
def test_matches_reference(causal, layout, heads, kv_heads, tiling):
    q, k, v, do = _inputs(3, 2, 48, heads, kv_heads)
    segs = _segments(layout, 2, 48, 3)
    _compare(_blockwise(segs, causal, *tiling), _ref(segs, causal), q, k, v, do, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("tiling", TILINGS)
@pytest.mark.parametrize("causal", [True, False])
def test_separate_kv_segment_ids_match_reference(causal, tiling):
    """Keys with their own segment ids (some keys of each document masked out; each document keeps its first key,
    so that no query is left with nothing to attend to)."""
    q, k, v, do = _inputs(4, 2, 48, 8, 2)
    segs = jax.numpy.asarray(_segments("packed", 2, 48, 4))
    first = np.concatenate([np.ones((2, 1), bool), np.asarray(segs[:, 1:] != segs[:, :-1])], axis=1)
    dropped = (np.random.RandomState(4).rand(2, 48) < 0.3) & ~first
    kv_segs = jax.numpy.where(dropped, -1, segs)

    def blockwise(q, k, v):
        return blockwise_attention(q, k, v, segment_ids=segs, kv_segment_ids=kv_segs, causal=causal,
                                   query_block=tiling[0], rows_per_step=tiling[1])

    def reference(q, k, v):
        return reference_attention(q, k, v, segment_ids=segs, kv_segment_ids=kv_segs, causal=causal)

    _compare(blockwise, reference, q, k, v, do, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("tiling", TILINGS)
def test_matches_float64_numpy(tiling):
    q, k, v, do = _inputs(11, 2, 40, 8, 2)
    segs = _segments("packed", 2, 40, 11)
    want = _numpy_attention_and_grads(q, k, v, do, segs, True, HEAD_DIM**-0.5)
    out, vjp = jax.vjp(_blockwise(segs, True, *tiling), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *vjp(do)), want):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, atol=3e-5, rtol=3e-5, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("tiling", TILINGS)
def test_bf16_inputs_are_as_accurate_as_the_reference_in_bf16(tiling):
    """bf16 operands in the dots (f32 accumulation, f32 softmax): errors against float64 NumPy no larger than
    XLA's reference attention run on the same bf16 inputs, and within bf16 rounding."""
    q, k, v, do = _inputs(12, 2, 40, 8, 2, dtype=jax.numpy.bfloat16)
    segs = _segments("packed", 2, 40, 12)
    want = _numpy_attention_and_grads(q, k, v, do, segs, True, HEAD_DIM**-0.5)
    got = jax.vjp(_blockwise(segs, True, *tiling), q, k, v)
    ref = jax.vjp(_ref(segs, True), q, k, v)
    for name, a, r, w in zip(("out", "dq", "dk", "dv"), (got[0], *got[1](do)), (ref[0], *ref[1](do)), want):
        assert a.dtype == jax.numpy.bfloat16, name
        err = np.abs(np.asarray(a, np.float64) - w).max()
        ref_err = np.abs(np.asarray(r, np.float64) - w).max()
        scale = np.abs(w).max()
        assert err <= max(1.5 * ref_err, 0.01 * scale), (name, err, ref_err, scale)
        assert err <= 0.02 * scale, (name, err, scale)


@pytest.mark.slow
def test_decoding_shapes_fall_back_to_the_reference():
    q, _, _, _ = _inputs(5, 2, 3, 4, 2)
    _, k, v, _ = _inputs(6, 2, 10, 4, 2)
    got = get_attention_fn("blockwise")(q, k, v, causal=True)
    want = _ref(None, True)(q, k, v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


@pytest.mark.slow
def test_sharded_on_eight_fake_devices_matches_one_device():
    """Under a (2, 2, 2) mesh the registry runs it per shard (shard_map): same values and gradients; a batch
    of 1 (as when a model is initialised under the mesh) takes the reference path."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from allam_jax.core import partitioning
        from allam_jax.kernels import get_attention_fn
        from test_flash_attention import _inputs, _segments
        q, k, v, do = _inputs(7, 4, 32, 8, 4)
        segs = _segments("packed", 4, 32, 7)
        f = get_attention_fn("blockwise")
        def loss(q, k, v):
            return jnp.sum(f(q, k, v, segment_ids=segs, causal=True) * do)
        want = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
        mesh = partitioning.create_mesh(partitioning.PartitioningConfig(mesh_shape=(2, 2, 2)))
        with jax.set_mesh(mesh):
            spec = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
            args = [jax.device_put(x, spec) for x in (q, k, v)]
            got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
        with jax.set_mesh(mesh):  # a batch that does not split over the mesh (model init) still works
            one = jax.jit(lambda q, k, v: f(q, k, v, causal=True))(q[:1], k[:1], v[:1])
        np.testing.assert_allclose(np.asarray(one), np.asarray(f(q[:1], k[:1], v[:1], causal=True)), atol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
