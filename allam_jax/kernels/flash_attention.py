"""Flash attention in Pallas: forward and backward kernels tied by ``jax.custom_vjp``.

Never materialises the T×S score matrix in HBM: each program holds a ``[block_q, D]`` query tile and
streams ``[block_k, D]`` key/value tiles through an online softmax (FlashAttention-2), saving the
log-sum-exp for the backward pass, which recomputes probabilities tile by tile:

- ``dq`` kernel: grid (batch, heads, q blocks), loops over key blocks;
- ``dk/dv`` kernel: grid (batch, kv heads, k blocks), loops over the query heads of its group and the
  query blocks, so GQA gradients are summed in registers and K/V are never repeated in HBM.

Packed sequences: tokens attend only within their ``segment_ids``. Causal masking skips key blocks
past the diagonal entirely. Lengths that are not a multiple of the block are padded (padding gets its
own segment id, so no real token sees it) and the padding is sliced off.

Backends: on GPU the kernels lower through Triton (layout ``[B, T, H, D]`` read in place). On TPU,
``flash_attention`` hands the call to JAX's splash attention kernel (:mod:`allam_jax.kernels.splash_attention`
says why). ``interpret=True`` runs these kernel bodies anywhere with a heads-major layout ``[B, H, T, D]``
(the CPU tests do).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from allam_jax.core.platform import target_platform
from allam_jax.kernels.shapes import check_self_attention
from allam_jax.kernels.splash_attention import splash_attention

_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)
_LOG2E = math.log2(math.e)
_PAD_SEGMENT = -1


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (powers of two). ``num_warps``/``num_stages`` apply to the Triton (GPU) backend; the
    defaults were the fastest of a sweep on an H100 at T=4096, D=128, bf16 (see docs/models.md, Attention kernels)."""

    block_q: int = 64
    block_k: int = 64
    block_q_bwd: int = 64
    block_k_bwd: int = 64
    num_warps: Optional[int] = 4
    num_stages: int = 3
    num_warps_bwd: Optional[int] = 4
    num_stages_bwd: int = 2

    def __post_init__(self):
        for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise ValueError(f"BlockSizes.{name} must be a positive power of two, got {v}")


def _masked_scores(q, k, q_seg, k_seg, q_start, k_start, causal, scale_log2):
    """Scores in base 2 (``q·k * scale * log2 e``), masked by segment and causality."""
    s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale_log2
    mask = None
    if q_seg is not None:
        mask = q_seg[:, None] == k_seg[None, :]
    if causal:
        rows = q_start + lax.broadcasted_iota(jnp.int32, s.shape, 0)
        cols = k_start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
        c = rows >= cols
        mask = c if mask is None else jnp.logical_and(mask, c)
    return s if mask is None else jnp.where(mask, s, _MASK)


def _num_k_blocks(q_block_index, block_q, block_k, kv_len, causal):
    if causal:
        return lax.div((q_block_index + 1) * block_q + block_k - 1, block_k)
    return kv_len // block_k


# ---------------------------------------------------------------- forward


def _fwd_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, *, causal, scale, block_q, block_k):
    i = pl.program_id(2)
    kv_len = k_ref.shape[0]
    q = q_ref[...]
    q_seg = None if qseg_ref is None else qseg_ref[...]
    d = q.shape[-1]

    def body(j, carry):
        acc, m_prev, l_prev = carry
        ks = pl.ds(j * block_k, block_k)
        k = k_ref[ks, :]
        k_seg = None if kseg_ref is None else kseg_ref[ks]
        s = _masked_scores(q, k, q_seg, k_seg, i * block_q, j * block_k, causal, scale * _LOG2E)
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
        alpha = jnp.exp2(m_prev - m_new)
        p = jnp.exp2(s - m_new[:, None])
        v = v_ref[ks, :]
        acc = acc * alpha[:, None] + lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                                                     preferred_element_type=jnp.float32)
        return acc, m_new, l_prev * alpha + jnp.sum(p, axis=1)

    init = (jnp.zeros((block_q, d), jnp.float32), jnp.full((block_q,), -jnp.inf, jnp.float32),
            jnp.zeros((block_q,), jnp.float32))
    acc, m, l = lax.fori_loop(0, _num_k_blocks(i, block_q, block_k, kv_len, causal), body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log2(l)  # base-2 log-sum-exp of the scaled scores


# ---------------------------------------------------------------- backward


def _dq_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, do_ref, lse_ref, delta_ref, dq_ref, *, causal, scale,
               block_q, block_k):
    i = pl.program_id(2)
    kv_len = k_ref.shape[0]
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_seg = None if qseg_ref is None else qseg_ref[...]

    def body(j, dq):
        ks = pl.ds(j * block_k, block_k)
        k, v = k_ref[ks, :], v_ref[ks, :]
        k_seg = None if kseg_ref is None else kseg_ref[ks]
        p = jnp.exp2(_masked_scores(q, k, q_seg, k_seg, i * block_q, j * block_k, causal, scale * _LOG2E)
                     - lse[:, None])
        dp = lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        ds = p * (dp - delta[:, None])
        return dq + lax.dot_general(ds.astype(k.dtype), k, (((1,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)

    dq = lax.fori_loop(0, _num_k_blocks(i, block_q, block_k, kv_len, causal), body,
                       jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, causal,
                scale, block_q, block_k, groups, heads_major):
    """q/do/lse/delta refs hold the whole sequence for the ``groups`` query heads of this KV head."""
    j = pl.program_id(2)
    q_len = q_ref.shape[1] if heads_major else q_ref.shape[0]
    k, v = k_ref[...], v_ref[...]
    k_seg = None if kseg_ref is None else kseg_ref[...]
    first = lax.div(j * block_k, block_q) if causal else 0

    def one_head(g, carry):
        def body(i, carry):
            dk, dv = carry
            qs = pl.ds(i * block_q, block_q)
            if heads_major:
                q, do, lse, delta = q_ref[g, qs, :], do_ref[g, qs, :], lse_ref[g, qs], delta_ref[g, qs]
            else:
                q, do, lse, delta = q_ref[qs, g, :], do_ref[qs, g, :], lse_ref[g, qs], delta_ref[g, qs]
            q_seg = None if qseg_ref is None else qseg_ref[qs]
            p = jnp.exp2(_masked_scores(q, k, q_seg, k_seg, i * block_q, j * block_k, causal, scale * _LOG2E)
                         - lse[:, None])
            dv = dv + lax.dot_general(p.astype(do.dtype), do, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)
            dp = lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            ds = p * (dp - delta[:, None])
            dk = dk + lax.dot_general(ds.astype(q.dtype), q, (((0,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)
            return dk, dv

        return lax.fori_loop(first, q_len // block_q, body, carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, groups, one_head, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ---------------------------------------------------------------- pallas_call plumbing


@dataclasses.dataclass(frozen=True)
class _Plan:
    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    head_dim: int
    heads_major: bool  # True: arrays are [B, H, T, D]; False: [B, T, H, D]
    backend: str
    interpret: bool
    blocks: BlockSizes

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads

    def seq_spec(self, block, index):
        """Spec of a [block, D] tile of q/k/v/o laid out per ``heads_major``; ``index(b, h, i) -> (b, head, blk)``."""
        if self.heads_major:
            return pl.BlockSpec((None, None, block, self.head_dim), lambda b, h, i: (*index(b, h, i), 0))
        return pl.BlockSpec((None, block, None, self.head_dim),
                            lambda b, h, i: (index(b, h, i)[0], index(b, h, i)[2], index(b, h, i)[1], 0))

    def group_spec(self, length):
        """All ``groups`` query heads of KV head ``h``, whole sequence."""
        if self.heads_major:
            return pl.BlockSpec((None, self.groups, length, self.head_dim), lambda b, h, j: (b, h, 0, 0))
        return pl.BlockSpec((None, length, self.groups, self.head_dim), lambda b, h, j: (b, 0, h, 0))

    def call(self, kernel, grid, in_specs, out_specs, out_shape, name, backward=False):
        kwargs = {}
        if self.backend == "gpu" and not self.interpret:
            from jax.experimental.pallas import triton as plgpu

            warps = self.blocks.num_warps_bwd if backward else self.blocks.num_warps
            stages = self.blocks.num_stages_bwd if backward else self.blocks.num_stages
            kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=warps or (4 if self.head_dim <= 64 else 8),
                                                             num_stages=stages)
        return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
                              interpret=self.interpret, name=name, **kwargs)


def _seg_specs(plan: _Plan, block_q, q_whole=False):
    q_spec = (pl.BlockSpec((None, plan.q_len), lambda b, h, i: (b, 0)) if q_whole
              else pl.BlockSpec((None, block_q), lambda b, h, i: (b, i)))
    return q_spec, pl.BlockSpec((None, plan.kv_len), lambda b, h, i: (b, 0))


def _forward(plan: _Plan, q, k, v, q_seg, k_seg, causal, scale):
    bq, bk = min(plan.blocks.block_q, plan.q_len), min(plan.blocks.block_k, plan.kv_len)
    g = plan.groups
    has_seg = q_seg is not None
    kernel = functools.partial(_fwd_kernel if has_seg else _no_seg(_fwd_kernel, 3), causal=causal, scale=scale,
                               block_q=bq, block_k=bk)
    q_spec = plan.seq_spec(bq, lambda b, h, i: (b, h, i))
    kv_spec = plan.seq_spec(plan.kv_len, lambda b, h, i: (b, h // g, 0))
    in_specs = [q_spec, kv_spec, kv_spec] + (list(_seg_specs(plan, bq)) if has_seg else [])
    lse_shape = jax.ShapeDtypeStruct((plan.batch, plan.heads, plan.q_len), jnp.float32)
    o, lse = plan.call(
        kernel, (plan.batch, plan.heads, plan.q_len // bq), in_specs,
        [q_spec, pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))],
        [jax.ShapeDtypeStruct(q.shape, q.dtype), lse_shape], "allam_flash_fwd",
    )(q, k, v, *((q_seg, k_seg) if has_seg else ()))
    return o, lse


def _no_seg(kernel, seg_arg_index):
    """Adapts a kernel to calls without segment refs (None is passed in their place)."""

    def wrapped(*refs, **kw):
        refs = list(refs)
        refs[seg_arg_index:seg_arg_index] = [None, None]
        return kernel(*refs, **kw)

    return wrapped


def _backward(plan: _Plan, q, k, v, q_seg, k_seg, o, lse, do, causal, scale):
    has_seg = q_seg is not None
    hm = plan.heads_major
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    delta = delta if hm else jnp.swapaxes(delta, 1, 2)  # [B, H, T] like lse
    g = plan.groups

    bq, bk = min(plan.blocks.block_q_bwd, plan.q_len), min(plan.blocks.block_k_bwd, plan.kv_len)
    q_spec = plan.seq_spec(bq, lambda b, h, i: (b, h, i))
    kv_spec = plan.seq_spec(plan.kv_len, lambda b, h, i: (b, h // g, 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
    dq_kernel = functools.partial(_dq_kernel if has_seg else _no_seg(_dq_kernel, 3), causal=causal, scale=scale,
                                  block_q=bq, block_k=bk)
    dq = plan.call(
        dq_kernel, (plan.batch, plan.heads, plan.q_len // bq),
        [q_spec, kv_spec, kv_spec] + (list(_seg_specs(plan, bq)) if has_seg else []) + [q_spec, row_spec, row_spec],
        q_spec, jax.ShapeDtypeStruct(q.shape, q.dtype), "allam_flash_dq", backward=True,
    )(q, k, v, *((q_seg, k_seg) if has_seg else ()), do, lse, delta)

    k_tile = plan.seq_spec(bk, lambda b, h, j: (b, h, j))
    group = plan.group_spec(plan.q_len)
    group_rows = pl.BlockSpec((None, g, plan.q_len), lambda b, h, j: (b, h, 0))
    seg_specs = [pl.BlockSpec((None, plan.q_len), lambda b, h, j: (b, 0)),
                 pl.BlockSpec((None, bk), lambda b, h, j: (b, j))] if has_seg else []
    dkv_kernel = functools.partial(_dkv_kernel if has_seg else _no_seg(_dkv_kernel, 3), causal=causal, scale=scale,
                                   block_q=bq, block_k=bk, groups=g, heads_major=hm)
    dk, dv = plan.call(
        dkv_kernel, (plan.batch, plan.kv_heads, plan.kv_len // bk),
        [group, k_tile, k_tile] + seg_specs + [group, group_rows, group_rows],
        [k_tile, k_tile], [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        "allam_flash_dkv", backward=True,
    )(q, k, v, *((q_seg, k_seg) if has_seg else ()), do, lse, delta)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6))
def _flash(plan, q, k, v, segs, causal, scale):
    o, _ = _forward(plan, q, k, v, *segs, causal, scale)
    return o


def _flash_fwd(plan, q, k, v, segs, causal, scale):
    o, lse = _forward(plan, q, k, v, *segs, causal, scale)
    return o, (q, k, v, segs, o, lse)


def _flash_bwd(plan, causal, scale, res, do):
    q, k, v, segs, o, lse = res
    dq, dk, dv = _backward(plan, q, k, v, *segs, o, lse, do, causal, scale)
    seg_grads = tuple(None if s is None else jnp.zeros(s.shape, jax.dtypes.float0) for s in segs)
    return dq, dk, dv, seg_grads


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_to(x: jax.Array, length: int, axis: int, value=0) -> jax.Array:
    if x.shape[axis] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: Optional[jax.Array] = None,
    causal: bool = True,
    sm_scale: Optional[float] = None,
    block_sizes: Optional[BlockSizes] = None,
    interpret: bool = False,
    backend: Optional[str] = None,
    fused_backward: bool = True,
) -> jax.Array:
    """Fused attention. q ``[B, T, H, D]``, k/v ``[B, T, K, D]`` (H a multiple of K), optional
    ``segment_ids [B, T]`` int32; returns ``[B, T, H, D]`` in q's dtype. Self-attention only (q and k
    share positions, as in training); decoding with a cache uses the reference implementation.

    ``backend`` (default: the target platform) ``'tpu'`` runs JAX's splash kernel (``block_sizes`` are the
    Triton tiles and do not apply there; ``fused_backward`` picks splash's one dK/dV/dQ backward kernel or its two
    separate ones); any other value runs this module's kernels."""
    check_self_attention("flash_attention", q, k, v, segment_ids)
    b, t, h, d = q.shape
    backend = backend or target_platform()
    if backend == "tpu":
        return splash_attention(q, k, v, segment_ids=segment_ids, causal=causal, sm_scale=sm_scale,
                                interpret=interpret, fused_backward=fused_backward)
    blocks = block_sizes or BlockSizes()
    scale = float(d**-0.5 if sm_scale is None else sm_scale)

    block = max(blocks.block_q, blocks.block_k, blocks.block_q_bwd, blocks.block_k_bwd)
    step = min(block, pl.next_power_of_2(t))
    padded = -(-t // step) * step
    if padded != t and segment_ids is None:
        segment_ids = jnp.zeros((b, t), jnp.int32)
    if segment_ids is not None:
        segment_ids = _pad_to(segment_ids.astype(jnp.int32), padded, 1, _PAD_SEGMENT)
    q, k, v = (_pad_to(x, padded, 1) for x in (q, k, v))

    heads_major = backend != "gpu"
    if heads_major:
        q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    plan = _Plan(b, padded, padded, h, k.shape[1] if heads_major else k.shape[2], d, heads_major, backend,
                 interpret, blocks)
    segs = (segment_ids, segment_ids) if segment_ids is not None else (None, None)
    out = _flash(plan, q, k, v, segs, causal, scale)
    if heads_major:
        out = jnp.swapaxes(out, 1, 2)
    return out[:, :t]
