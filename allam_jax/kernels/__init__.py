"""Attention implementations behind one interface.

Every implementation takes q ``[batch, q_len, heads, head_dim]``, k/v ``[batch, kv_len, kv_heads, head_dim]``
(heads a multiple of kv_heads; KV heads are never repeated), optional ``segment_ids [batch, len]`` and
returns ``[batch, q_len, heads, head_dim]``. The model picks one by name (``ModelConfig.attention_impl``):

- ``reference``: plain XLA (any backend, any shapes, decoding included);
- ``pallas``: the fused flash kernel (Triton on GPU, JAX's splash kernel on TPU, interpret mode on CPU);
- ``blockwise``: plain XLA over groups of (batch row, KV head) problems, causal query blocks that skip the
  masked triangle, recomputation in the backward pass: the fast choice on CPUs
  (see :mod:`allam_jax.kernels.blockwise_attention`).

``pallas`` and ``blockwise`` run per shard under ``shard_map`` when a mesh is active (batch over
data×fsdp, heads over tensor): XLA cannot partition a custom kernel, nor a loop over rows, by itself.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
from jax.sharding import PartitionSpec as P

from allam_jax.core.partitioning import BATCH_AXES, MESH_AXES, TENSOR_AXIS
from allam_jax.core.platform import target_platform
from allam_jax.kernels.blockwise_attention import blockwise_attention
from allam_jax.kernels.flash_attention import BlockSizes, flash_attention
from allam_jax.kernels.reference_attention import reference_attention



def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: Optional[jax.Array] = None,
                     causal: bool = True, sm_scale: Optional[float] = None,
                     block_sizes: Optional[BlockSizes] = None, fused_backward: bool = True) -> jax.Array:
    """``flash_attention`` for the target platform (the ambient mesh's devices: an ahead-of-time compile for a
    TPU topology gets the TPU kernel), interpret mode off the accelerators, sharded over the ambient mesh.
    ``fused_backward`` (TPU): splash's one backward kernel, or its separate dK/dV and dQ kernels."""
    if q.shape[1] != k.shape[1]:  # decoding against a cache: the kernel is for self-attention in training
        return reference_attention(q, k, v, segment_ids=segment_ids, causal=causal, sm_scale=sm_scale)
    backend = target_platform()
    interpret = backend not in ("gpu", "tpu")

    def local(q, k, v, segment_ids):
        return flash_attention(q, k, v, segment_ids=segment_ids, causal=causal, sm_scale=sm_scale,
                               block_sizes=block_sizes, interpret=interpret, backend=backend,
                               fused_backward=fused_backward)

    return _per_shard(local, "pallas", q, k, v, segment_ids, causal, sm_scale)


def _per_shard(local: Callable, name: str, q: jax.Array, k: jax.Array, v: jax.Array,
               segment_ids: Optional[jax.Array], causal: bool, sm_scale: Optional[float]) -> jax.Array:
    """``local(q, k, v, segment_ids)`` on each shard of the ambient mesh (or directly without one). A batch
    that does not split over the mesh (the batch of 1 that initialises a model) takes the reference path."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not set(MESH_AXES) <= set(mesh.axis_names):
        return local(q, k, v, segment_ids)
    if q.shape[0] % math.prod(mesh.shape[a] for a in BATCH_AXES):
        return reference_attention(q, k, v, segment_ids=segment_ids, causal=causal, sm_scale=sm_scale)
    tensor = mesh.shape[TENSOR_AXIS]
    if q.shape[2] % tensor or k.shape[2] % tensor:
        raise ValueError(f"{name} attention: heads ({q.shape[2]}) and kv heads ({k.shape[2]}) must be divisible by "
                         f"the tensor mesh axis ({tensor})")
    qkv = P(BATCH_AXES, None, TENSOR_AXIS, None)
    seg = P(BATCH_AXES, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, None if segment_ids is None else seg),
                         out_specs=qkv, check_vma=False)(q, k, v, segment_ids)


def sharded_blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: Optional[jax.Array] = None,
                                causal: bool = True, sm_scale: Optional[float] = None) -> jax.Array:
    """``blockwise_attention`` per shard of the ambient mesh."""
    if q.shape[1] != k.shape[1]:
        return reference_attention(q, k, v, segment_ids=segment_ids, causal=causal, sm_scale=sm_scale)

    def local(q, k, v, segment_ids):
        return blockwise_attention(q, k, v, segment_ids=segment_ids, causal=causal, sm_scale=sm_scale)

    return _per_shard(local, "blockwise", q, k, v, segment_ids, causal, sm_scale)


ATTENTION_IMPLS: dict[str, Callable] = {"reference": reference_attention, "pallas": pallas_attention,
                                         "blockwise": sharded_blockwise_attention}


def get_attention_fn(name: str) -> Callable:
    try:
        return ATTENTION_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown attention implementation {name!r}; known: {sorted(ATTENTION_IMPLS)}") from None
