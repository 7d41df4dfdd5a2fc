"""Attention implementations behind one interface.

Every implementation takes q ``[batch, q_len, heads, head_dim]``, k/v ``[batch, kv_len, kv_heads, head_dim]``
(heads a multiple of kv_heads; KV heads are never repeated), optional ``segment_ids [batch, len]`` and
returns ``[batch, q_len, heads, head_dim]``. The model picks one by name (``ModelConfig.attention_impl``).
"""

from __future__ import annotations

from typing import Callable

from allam_jax.kernels.reference_attention import reference_attention

ATTENTION_IMPLS: dict[str, Callable] = {"reference": reference_attention}


def get_attention_fn(name: str) -> Callable:
    try:
        return ATTENTION_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown attention implementation {name!r}; known: {sorted(ATTENTION_IMPLS)}") from None
