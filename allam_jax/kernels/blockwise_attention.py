"""Memory-efficient attention in plain XLA, for CPUs (and any backend without a fused kernel).

The reference attention materialises ``[batch, heads, q_len, kv_len]`` logits and probabilities several
times over (logits, mask, softmax, and again in the backward pass); on a CPU those passes go through main
memory. Here the work is split into one problem per (batch row, KV head) — its query group's
``[groups, q_len, kv_len]`` logits — and a few such problems (``ROWS_BYTES`` of working set) run together
per step of a ``lax.map``; causal rows are cut into query blocks that skip the masked upper triangle; the
backward pass recomputes the probabilities from the saved log-sum-exp instead of storing them
(FlashAttention's recomputation, at query-block granularity). As in FlashAttention, the dots take their
operands in the input dtype (probabilities and their gradients rounded to bf16 for bf16 inputs) and
accumulate in f32; the softmax itself is f32. Same interface and results as :func:`reference_attention`.

The query and key segment ids enter the loop as two separate inputs even when they are the same array:
XLA's CPU backend fuses the mask into the exponential, and a fused loop that reads one loop input under two
broadcasts (``seg[:, None] == seg[None, :]``) is not vectorised: ~4 ns instead of ~0.5 ns an element,
which made the mask most of the attention time at the ~100M shapes.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from allam_jax.kernels.reference_attention import _MASK_VALUE, reference_attention

# Tuned on a 2-core AVX-512 CPU with benchmarks/vs_torch.py (tiny and ~100M models, 8 x 256 tokens).
QUERY_BLOCK = 64  # causal query block (tokens), raised so that a row has at most MAX_QUERY_BLOCKS blocks
MAX_QUERY_BLOCKS = 16  # each block is unrolled in the program: bounds the compile time at long lengths
ROWS_BYTES = 10 << 20  # (batch row, KV head) problems per loop step: as many as fit their working set in this


def _row_bytes(groups: int, q_len: int, kv_len: int, head_dim: int) -> int:
    """Working set of one (batch row, KV head) problem: f32 logits, plus its q/k/v rows and their gradients."""
    return 4 * groups * q_len * kv_len + 16 * (groups * q_len + 2 * kv_len) * head_dim


def _query_blocks(q_len: int, causal: bool, block: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each query block. Causal query block i only sees keys ``[:stop]``, so the
    masked upper triangle of the logits is never computed (~half the exp and dot work at long lengths)."""
    block = max(block, -(-q_len // MAX_QUERY_BLOCKS))
    if not causal or q_len % block or q_len <= block:
        return [(0, q_len)]
    return [(start, start + block) for start in range(0, q_len, block)]


def _bias(q_segments: jax.Array, kv_segments: jax.Array, q_start: int, causal: bool) -> jax.Array:
    """Additive mask ``[q, kv]`` of one block: 0 where a query may attend, a large negative elsewhere."""
    allowed = q_segments[:, None] == kv_segments[None, :]
    if causal:
        allowed &= (jnp.arange(q_segments.shape[0])[:, None] + q_start) >= jnp.arange(kv_segments.shape[0])[None, :]
    return jnp.where(allowed, 0.0, _MASK_VALUE)


def _logits(q, k, segments, kv_segments, start: int, stop: int, scale: float, causal: bool):
    """Logits ``[groups, stop - start, kv]`` of query block ``[start:stop]`` against the keys it may see."""
    kv = stop if causal else k.shape[0]
    bias = _bias(segments[start:stop], kv_segments[:kv], start, causal)
    return jnp.einsum("gtd,sd->gts", q[:, start:stop], k[:kv], preferred_element_type=jnp.float32) * scale + bias


def _forward_row(scale: float, causal: bool, block: int, row):
    q, k, v, segments, kv_segments = row  # [groups, T, D], [S, D], [S, D], [T], [S]
    outs, lses = [], []
    for start, stop in _query_blocks(q.shape[1], causal, block):
        logits = _logits(q, k, segments, kv_segments, start, stop, scale, causal)
        m = jnp.max(logits, axis=-1, keepdims=True)
        p = jnp.exp(logits - m)
        total = jnp.sum(p, axis=-1, keepdims=True)
        pv = jnp.einsum("gts,sd->gtd", p.astype(v.dtype), v[: logits.shape[-1]], preferred_element_type=jnp.float32)
        outs.append(pv / total)
        lses.append((m + jnp.log(total))[..., 0])
    return jnp.concatenate(outs, axis=1).astype(q.dtype), jnp.concatenate(lses, axis=1)


def _backward_row(scale: float, causal: bool, block: int, row):
    q, k, v, segments, kv_segments, out, lse, d_out = row
    dt = q.dtype  # dot operands in the input dtype, accumulation in f32 (as FlashAttention does in bf16)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    dk, dv, dqs = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32), []
    for start, stop in _query_blocks(q.shape[1], causal, block):
        p = jnp.exp(_logits(q, k, segments, kv_segments, start, stop, scale, causal) - lse[:, start:stop, None])
        kv = p.shape[-1]
        do = d_out[:, start:stop]
        dv = dv.at[:kv].add(jnp.einsum("gts,gtd->sd", p.astype(dt), do, preferred_element_type=jnp.float32))
        dp = jnp.einsum("gtd,sd->gts", do, v[:kv], preferred_element_type=jnp.float32)
        ds = (p * (dp - delta[:, start:stop]) * scale).astype(dt)
        dqs.append(jnp.einsum("gts,sd->gtd", ds, k[:kv], preferred_element_type=jnp.float32))
        dk = dk.at[:kv].add(jnp.einsum("gts,gtd->sd", ds, q[:, start:stop], preferred_element_type=jnp.float32))
    return jnp.concatenate(dqs, axis=1).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _rows_attention(q, k, v, segments, kv_segments, scale: float, causal: bool, block: int, rows: int):
    return _rows_fwd(q, k, v, segments, kv_segments, scale, causal, block, rows)[0]


def _rows_fwd(q, k, v, segments, kv_segments, scale, causal, block, rows):
    out, lse = jax.lax.map(functools.partial(_forward_row, scale, causal, block), (q, k, v, segments, kv_segments),
                           batch_size=rows)
    return out, (q, k, v, segments, kv_segments, out, lse)


def _rows_bwd(scale, causal, block, rows, residuals, d_out):
    dq, dk, dv = jax.lax.map(functools.partial(_backward_row, scale, causal, block), (*residuals, d_out),
                             batch_size=rows)
    return dq, dk, dv, None, None


_rows_attention.defvjp(_rows_fwd, _rows_bwd)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: Optional[jax.Array] = None,
                        kv_segment_ids: Optional[jax.Array] = None, causal: bool = True,
                        sm_scale: Optional[float] = None, query_block: Optional[int] = None,
                        rows_per_step: Optional[int] = None) -> jax.Array:
    """q ``[B, T, H, D]``, k/v ``[B, S, K, D]`` → ``[B, T, H, D]``; GQA without repeating KV heads.

    ``query_block`` (default ``QUERY_BLOCK``) and ``rows_per_step`` (default: as many as fit ``ROWS_BYTES``)
    change the speed, not the result.
    """
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if h % kvh:
        raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({kvh})")
    if t != s:
        return reference_attention(q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, causal=causal,
                                   sm_scale=sm_scale)
    groups = h // kvh
    scale = d**-0.5 if sm_scale is None else float(sm_scale)
    segments = segment_ids if segment_ids is not None else jnp.ones((b, t), jnp.int32)
    kv_segments = kv_segment_ids if segment_ids is not None and kv_segment_ids is not None else segments
    rows_q = q.reshape(b, t, kvh, groups, d).transpose(0, 2, 3, 1, 4).reshape(b * kvh, groups, t, d)
    rows_k = k.transpose(0, 2, 1, 3).reshape(b * kvh, s, d)
    rows_v = v.transpose(0, 2, 1, 3).reshape(b * kvh, s, d)
    rows_seg = jnp.repeat(segments, kvh, axis=0)
    rows_kv_seg = jnp.repeat(kv_segments, kvh, axis=0)  # a separate loop input even if equal (module docstring)
    if rows_per_step is None:
        fit = max(1, ROWS_BYTES // _row_bytes(groups, t, s, d))
        rows_per_step = max(n for n in range(1, fit + 1) if (b * kvh) % n == 0)  # no ragged last step
    out = _rows_attention(rows_q, rows_k, rows_v, rows_seg, rows_kv_seg, scale, causal, query_block or QUERY_BLOCK,
                          min(rows_per_step, b * kvh))
    return out.reshape(b, kvh, groups, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
