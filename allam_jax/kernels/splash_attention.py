"""Attention on TPU: JAX's splash attention kernel behind this project's interface.

Why splash and not this project's own Pallas kernel on TPU: splash is the TPU flash-attention kernel that
JAX ships and Google tunes for each TPU generation (MaxText runs it on TPUs); it obeys Mosaic's tiling
(lane-dense log-sum-exp and segment-id layouts, blocks that divide 8 x 128), skips fully masked blocks
from a precomputed block mask, handles GQA without repeating K/V, and has a fused backward kernel. Our
kernel's TPU layout did not lower through Mosaic (its segment-id and log-sum-exp blocks are not
8 x 128-aligned), and keeping a second TPU kernel in step with splash is work without a gain.

Layout: q ``[B, T, H, D]``, k/v ``[B, T, K, D]`` in, ``[B, T, H, D]`` out (splash itself wants heads first
and runs per batch row, so rows are vmapped). Sequences are padded to a multiple of 128 (padding gets its
own segment id, as in the GPU kernel) and split into query/key blocks of up to 512.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import jax
import jax.numpy as jnp

from allam_jax.kernels.shapes import check_self_attention

LANE = 128  # TPU vector lanes: the sequence blocks must be multiples of this
MAX_BLOCK = 512  # MaxText's default splash block (q, kv, kv compute, dkv) on v4/v5
_PAD_SEGMENT = -1


def _block(length: int) -> int:
    for block in (MAX_BLOCK, 256, LANE):
        if length % block == 0:
            return block
    raise AssertionError(f"padded length {length} is not a multiple of {LANE}")


def _kernel(seq_len: int, heads: int, causal: bool, interpret: bool, fused_backward: bool = True):
    """The splash kernel for one shape. Built afresh for each trace: it holds its block mask as arrays, which
    inside a trace are that trace's values (a cached kernel would leak them into the next one).

    ``fused_backward``: one backward kernel computing dK, dV and dQ (writing a dQ partial per KV block, summed
    after it) or two (dK/dV, then dQ: one more recompute of the scores, no partials); MaxText's default is two
    (``sa_use_fused_bwd_kernel: false``)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b = _block(seq_len)
    dq = {} if fused_backward else {"block_q_dq": b, "block_kv_dq": b}
    blocks = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                           block_kv_dkv_compute=b, use_fused_bwd_kernel=fused_backward, **dq)
    mask = sm.CausalMask((seq_len, seq_len)) if causal else sm.FullMask((seq_len, seq_len))
    return sk.make_splash_mha(sm.MultiHeadMask([mask] * heads), block_sizes=blocks, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: Optional[jax.Array] = None,
                     causal: bool = True, sm_scale: Optional[float] = None, interpret: bool = False,
                     fused_backward: bool = True) -> jax.Array:
    """Self-attention with JAX's TPU splash kernel; same contract as ``flash_attention``.

    ``interpret=True`` uses Pallas' generic interpreter; for TPU semantics on a CPU run the call under
    ``jax.experimental.pallas.tpu.force_tpu_interpret_mode()`` instead (the tests do).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    check_self_attention("splash_attention", q, k, v, segment_ids)
    b, t, h, d = q.shape
    scale = d**-0.5 if sm_scale is None else sm_scale
    padded = -(-t // LANE) * LANE
    if segment_ids is None and padded != t:
        segment_ids = jnp.zeros((b, t), jnp.int32)
    if segment_ids is not None:
        segment_ids = segment_ids.astype(jnp.int32)
        if padded != t:
            segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - t)), constant_values=_PAD_SEGMENT)
    if padded != t:
        q, k, v = (jnp.pad(x, ((0, 0), (0, padded - t), (0, 0), (0, 0))) for x in (q, k, v))

    kernel = _kernel(padded, h, bool(causal), bool(interpret), bool(fused_backward))
    # splash applies no softmax scale: scale q (in f32, then back to q's dtype, as MaxText does)
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, heads, T, D]
    if segment_ids is None:
        row = lambda q, k, v, s: kernel(q, k, v)  # noqa: E731
    else:
        row = lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(q=s, kv=s))  # noqa: E731
    if _tpu_interpret_mode():  # its simulator cannot batch a kernel's grid: one row at a time
        run = lambda q, k, v, s: jax.lax.map(lambda a: row(*a), (q, k, v, s))  # noqa: E731
    else:
        run = lambda q, k, v, s: jax.vmap(row)(q, k, v, s)  # noqa: E731
    out = _with_kernel_precision(run, qh, kh, vh, segment_ids)
    return jnp.swapaxes(out, 1, 2)[:, :t]


def _tpu_interpret_mode() -> bool:
    """True under ``pltpu.force_tpu_interpret_mode()`` (TPU kernels simulated on CPU)."""
    try:
        from jax._src import config

        return config.pallas_tpu_interpret_mode_context_manager.value is not None
    except AttributeError:  # a JAX without the switch has no TPU interpret mode either
        return False


def _kernel_precision(dtype):
    """Mosaic rejects an fp32-precision dot on 16-bit operands, so a global ``jax_default_matmul_precision =
    'highest'`` must not reach a bf16 kernel; float32 kernels keep whatever precision is asked for."""
    return contextlib.nullcontext() if dtype == jnp.float32 else jax.default_matmul_precision("default")


def _with_kernel_precision(run, q, k, v, segment_ids):
    """``run(q, k, v, segment_ids)`` traced, forward and backward, under :func:`_kernel_precision` (the backward
    is traced when the gradient is taken, outside any context the caller could set around the forward)."""

    @jax.custom_vjp
    def call(q, k, v):
        with _kernel_precision(q.dtype):
            return run(q, k, v, segment_ids)

    def fwd(q, k, v):
        with _kernel_precision(q.dtype):
            out, pullback = jax.vjp(lambda q, k, v: run(q, k, v, segment_ids), q, k, v)
        return out, pullback

    def bwd(pullback, g):
        with _kernel_precision(g.dtype):
            return pullback(g)

    call.defvjp(fwd, bwd)
    return call(q, k, v)
