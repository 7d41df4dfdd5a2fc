"""The shape contract the fused self-attention kernels share, checked in one place."""

from __future__ import annotations

from typing import Optional

import jax


def check_self_attention(name: str, q: jax.Array, k: jax.Array, v: jax.Array,
                         segment_ids: Optional[jax.Array]) -> None:
    """q ``[B, T, H, D]``, k/v ``[B, T, K, D]`` with H a multiple of K, segment ids ``[B, T]``; else a ValueError
    naming the kernel and the shapes."""
    b, t, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[1] != t or k.shape[3] != d:
        raise ValueError(f"{name}: k {k.shape} and v {v.shape} must be [batch={b}, seq={t}, kv_heads, "
                         f"head_dim={d}] like q {q.shape}")
    if h % k.shape[2]:
        raise ValueError(f"{name}: query heads ({h}) must be a multiple of kv heads ({k.shape[2]})")
    if segment_ids is not None and segment_ids.shape != (b, t):
        raise ValueError(f"{name}: segment_ids {segment_ids.shape} must be [batch, seq] = {(b, t)}")
