"""Grouped-query self-attention with RoPE; the score computation is delegated to ``allam_jax.kernels``."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from allam_jax.kernels import get_attention_fn
from allam_jax.kernels.reference_attention import masked_attention
from allam_jax.model.config import ModelConfig
from allam_jax.model.layers import DenseGeneral, RMSNorm
from allam_jax.model.rope import rope


class LayerCache(NamedTuple):
    """One layer's keys and values for decoding: ``[batch, max_len, kv_heads, head_dim]`` each."""

    k: jax.Array
    v: jax.Array


class CacheState(NamedTuple):
    """Where the next tokens go (``index``: their first slot) and which slots hold real tokens
    (``valid [batch, max_len]``: False for left padding and not-yet-written slots)."""

    index: jax.Array
    valid: jax.Array


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: Optional[jax.Array],
                 cache: Optional[LayerCache] = None, state: Optional[CacheState] = None):
        cfg = self.config
        hd = cfg.kv_head_dim
        kw: dict[str, Any] = dict(std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.params_dtype,
                                  matmul_impl=cfg.matmul_impl)
        qkv = dict(kw, use_bias=cfg.qkv_bias)
        q = DenseGeneral((cfg.num_heads, hd), ("embed", "heads", "head_dim"), name="query", **qkv)(x)
        k = DenseGeneral((cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), name="key", **qkv)(x)
        v = DenseGeneral((cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), name="value", **qkv)(x)
        if cfg.qk_norm:  # Qwen3: each head's q and k RMS-normed over head_dim, before RoPE
            q = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.params_dtype, name="query_norm")(q)
            k = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.params_dtype, name="key_norm")(k)
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))
        k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", None))
        v = nn.with_logical_constraint(v, ("activation_batch", "activation_length", "activation_kv_heads", None))
        inv_freq = cfg.rope_theta if cfg.rope_scaling == "none" else cfg.rope_frequencies()
        q = rope(q, positions, inv_freq)
        k = rope(k, positions, inv_freq)
        new_cache = None
        if cache is None:
            kernel = {"fused_backward": cfg.attention_backward == "fused"} if cfg.attention_impl == "pallas" else {}
            out = get_attention_fn(cfg.attention_impl)(q, k, v, segment_ids=segment_ids, causal=True, **kernel)
        else:  # decoding: write this chunk at its slots, attend to every valid slot up to each query's own
            k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), state.index, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), state.index, axis=1)
            q_slot = state.index + jnp.arange(x.shape[1])
            mask = (jnp.arange(k_all.shape[1])[None, :] <= q_slot[:, None])[None] & state.valid[:, None, :]
            out = masked_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype), mask[:, None, None])
            new_cache = LayerCache(k_all, v_all)
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", None))
        out = DenseGeneral((cfg.d_model,), ("heads", "head_dim", "embed"), num_contract=2, name="out", **kw)(out)
        return out if cache is None else (out, new_cache)
