"""Memory-efficient attention in plain XLA, for CPUs (and any backend without a fused kernel).

The reference attention materialises ``[batch, heads, q_len, kv_len]`` logits and probabilities several
times over (logits, mask, softmax, and again in the backward pass); on a CPU those passes go through main
memory. Here the work is split into one small problem per (batch row, KV head) — its query group's
``[groups, q_len, kv_len]`` block fits in cache — run one after another with ``lax.map``, and the backward
pass recomputes the probabilities from the saved log-sum-exp instead of storing them (FlashAttention's
recomputation, at row rather than tile granularity). Same interface and results as
:func:`reference_attention`.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from allam_jax.kernels.reference_attention import _MASK_VALUE


def _bias(segments: jax.Array, q_len: int, kv_len: int, causal: bool) -> jax.Array:
    """Additive mask ``[q_len, kv_len]`` of one row: 0 where a query may attend, a large negative elsewhere."""
    allowed = segments[:, None] == segments[None, :]
    if causal:
        allowed &= (jnp.arange(q_len)[:, None] + (kv_len - q_len)) >= jnp.arange(kv_len)[None, :]
    return jnp.where(allowed, 0.0, _MASK_VALUE)


def _logits(q, k, segments, scale: float, causal: bool):
    bias = _bias(segments, q.shape[1], k.shape[0], causal)
    return jnp.einsum("gtd,sd->gts", q, k, preferred_element_type=jnp.float32) * scale + bias


def _forward_row(scale: float, causal: bool, row):
    q, k, v, segments = row  # [groups, T, D], [S, D], [S, D], [T]
    logits = _logits(q, k, segments, scale, causal)
    m = jnp.max(logits, axis=-1, keepdims=True)
    p = jnp.exp(logits - m)
    total = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("gts,sd->gtd", p, v.astype(jnp.float32)) / total
    return out.astype(q.dtype), (m + jnp.log(total))[..., 0]


def _backward_row(scale: float, causal: bool, row):
    q, k, v, segments, out, lse, d_out = row
    p = jnp.exp(_logits(q, k, segments, scale, causal) - lse[..., None])
    d_out = d_out.astype(jnp.float32)
    dv = jnp.einsum("gts,gtd->sd", p, d_out)
    dp = jnp.einsum("gtd,sd->gts", d_out, v.astype(jnp.float32))
    delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1, keepdims=True)
    ds = p * (dp - delta) * scale
    dq = jnp.einsum("gts,sd->gtd", ds, k.astype(jnp.float32))
    dk = jnp.einsum("gts,gtd->sd", ds, q.astype(jnp.float32))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _rows_attention(q, k, v, segments, scale: float, causal: bool):
    return jax.lax.map(functools.partial(_forward_row, scale, causal), (q, k, v, segments))[0]


def _rows_fwd(q, k, v, segments, scale, causal):
    out, lse = jax.lax.map(functools.partial(_forward_row, scale, causal), (q, k, v, segments))
    return out, (q, k, v, segments, out, lse)


def _rows_bwd(scale, causal, residuals, d_out):
    q, k, v, segments, out, lse = residuals
    dq, dk, dv = jax.lax.map(functools.partial(_backward_row, scale, causal), (q, k, v, segments, out, lse, d_out))
    return dq, dk, dv, None


_rows_attention.defvjp(_rows_fwd, _rows_bwd)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: Optional[jax.Array] = None,
                        kv_segment_ids: Optional[jax.Array] = None, causal: bool = True,
                        sm_scale: Optional[float] = None) -> jax.Array:
    """q ``[B, T, H, D]``, k/v ``[B, S, K, D]`` → ``[B, T, H, D]``; GQA without repeating KV heads."""
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if h % kvh:
        raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({kvh})")
    if t != s or (kv_segment_ids is not None and kv_segment_ids is not segment_ids):
        from allam_jax.kernels.reference_attention import reference_attention

        return reference_attention(q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, causal=causal,
                                   sm_scale=sm_scale)
    groups = h // kvh
    scale = d**-0.5 if sm_scale is None else float(sm_scale)
    segments = segment_ids if segment_ids is not None else jnp.ones((b, t), jnp.int32)
    rows_q = q.reshape(b, t, kvh, groups, d).transpose(0, 2, 3, 1, 4).reshape(b * kvh, groups, t, d)
    rows_k = k.transpose(0, 2, 1, 3).reshape(b * kvh, s, d)
    rows_v = v.transpose(0, 2, 1, 3).reshape(b * kvh, s, d)
    rows_seg = jnp.repeat(segments, kvh, axis=0)
    out = _rows_attention(rows_q, rows_k, rows_v, rows_seg, scale, causal)
    return out.reshape(b, kvh, groups, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
