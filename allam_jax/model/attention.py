"""Grouped-query self-attention with RoPE; the score computation is delegated to ``allam_jax.kernels``."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax

from allam_jax.kernels import get_attention_fn
from allam_jax.model.config import ModelConfig
from allam_jax.model.layers import DenseGeneral, rope


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: Optional[jax.Array]) -> jax.Array:
        cfg = self.config
        hd = cfg.kv_head_dim
        kw: dict[str, Any] = dict(std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.params_dtype)
        q = DenseGeneral((cfg.num_heads, hd), ("embed", "heads", "head_dim"), name="query", **kw)(x)
        k = DenseGeneral((cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), name="key", **kw)(x)
        v = DenseGeneral((cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), name="value", **kw)(x)
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))
        k = nn.with_logical_constraint(k, ("activation_batch", "activation_length", "activation_kv_heads", None))
        v = nn.with_logical_constraint(v, ("activation_batch", "activation_length", "activation_kv_heads", None))
        q = rope(q, positions, cfg.rope_theta)
        k = rope(k, positions, cfg.rope_theta)
        out = get_attention_fn(cfg.attention_impl)(q, k, v, segment_ids=segment_ids, causal=True)
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", None))
        return DenseGeneral((cfg.d_model,), ("heads", "head_dim", "embed"), num_contract=2, name="out", **kw)(out)
