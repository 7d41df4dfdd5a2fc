"""Plain XLA attention: the reference every fused kernel is tested against."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(
    q_len: int, kv_len: int, segment_ids: Optional[jax.Array], kv_segment_ids: Optional[jax.Array], causal: bool
) -> Optional[jax.Array]:
    """Boolean ``[batch or 1, 1, 1, q_len, kv_len]`` mask: True where a query may attend."""
    mask = None
    if causal:
        q_pos = jnp.arange(q_len)[:, None] + (kv_len - q_len)
        mask = (q_pos >= jnp.arange(kv_len)[None, :])[None, None, None]
    if segment_ids is not None:
        kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
        seg = segment_ids[:, :, None] == kv_segment_ids[:, None, :]
        seg = seg[:, None, None]
        mask = seg if mask is None else jnp.logical_and(mask, seg)
    return mask


def reference_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: Optional[jax.Array] = None,
    kv_segment_ids: Optional[jax.Array] = None,
    causal: bool = True,
    sm_scale: Optional[float] = None,
) -> jax.Array:
    """Softmax attention with GQA by grouping query heads (no KV repeat), in float32 softmax.

    Shapes: q [B, T, H, D], k/v [B, S, K, D] with H % K == 0. Causal alignment is bottom-right,
    so a query block shorter than the keys (decoding) sees every earlier key.
    """
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if h % kvh:
        raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({kvh})")
    return masked_attention(q, k, v, attention_mask(t, s, segment_ids, kv_segment_ids, causal), sm_scale)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array],
                     sm_scale: Optional[float] = None) -> jax.Array:
    """Attention under an explicit boolean mask broadcastable to ``[batch, kv_heads, groups, q_len, kv_len]``
    (the KV-cache decoder builds its own from cache slots)."""
    b, t, h, d = q.shape
    kvh = k.shape[2]
    groups = h // kvh
    scale = d**-0.5 if sm_scale is None else sm_scale
    qg = q.reshape(b, t, kvh, groups, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype)
