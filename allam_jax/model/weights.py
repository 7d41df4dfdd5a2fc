"""Weights gathered for compute, gradients scattered back: FSDP written out, not left to the partitioner.

A parameter sharded over the batch axes (``data``, ``fsdp``) must be whole on every device of those axes
when a layer multiplies by it. Left to itself, XLA's partitioner picks per matmul between gathering the weight,
moving activations around a ring (windowed einsum) or transposing them (all-to-all), and the gradient comes
back as an all-reduce of the whole weight followed by a slice. Here the weight is cast to the compute dtype *on
its shard* (half the bytes on the wire in bf16) and all-gathered over the batch axes only (a tensor-parallel
split stays). :func:`project_gathered` runs the matmul per batch shard under ``shard_map`` on data x FSDP meshes,
so the gradient is a local partial sum that JAX reduce-scatters onto the shard; :func:`gathered` (tensor-parallel
meshes, the embedding table, the LM head outside the chunked loss) constrains the gradient back to the
parameter's sharding and leaves the reduction to the partitioner. ``tests/test_collectives.py`` asserts what the
TPU compiler makes of both.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from allam_jax.core.partitioning import BATCH_AXES
from allam_jax.model.matmul import project

MeshAxes = Union[None, str, tuple[str, ...]]


def _batch_part(axes: MeshAxes, batch: bool) -> MeshAxes:
    """The mesh axes of one array dimension that are (``batch=True``) or are not batch axes."""
    if axes is None:
        return None
    kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if (a in BATCH_AXES) == batch)
    return kept if len(kept) > 1 else (kept[0] if kept else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _gather(w: jax.Array, dtype: Any, stored: P, compute: P) -> jax.Array:
    return jax.lax.with_sharding_constraint(w.astype(dtype), compute)


def _gather_fwd(w, dtype, stored, compute):
    return _gather(w, dtype, stored, compute), jax.ShapeDtypeStruct(w.shape, w.dtype)


def _gather_bwd(dtype, stored, compute, like, g):
    return (jax.lax.with_sharding_constraint(g, stored).astype(like.dtype),)


_gather.defvjp(_gather_fwd, _gather_bwd)


def batch_shard_spec(logical_axes: Sequence[Optional[str]]) -> P:
    """The part of a parameter's sharding that lies on the batch mesh axes (what a ``shard_map`` over those axes
    names in its ``in_specs``; other mesh axes stay with the compiler)."""
    stored = nn.logical_to_mesh_axes(tuple(logical_axes)) or (None,) * len(logical_axes)
    return P(*(_batch_part(a, batch=True) for a in stored))


def batch_only_mesh(rows: int):
    """The ambient mesh when a ``shard_map`` over all of it can take ``rows`` batch rows: the rows divide over the
    batch axes, there is more than one device, and every other mesh axis has size 1 (data and FSDP parallelism
    only, so the code inside needs no tensor-parallel collectives). Else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not set(BATCH_AXES) <= set(mesh.axis_names):
        return None
    if any(mesh.shape[a] != 1 for a in mesh.axis_names if a not in BATCH_AXES):
        return None
    return mesh if rows % math.prod(mesh.shape[a] for a in BATCH_AXES) == 0 else None


def gather_in_shard_map(w: jax.Array, spec: P, dtype: Any) -> jax.Array:
    """Inside a ``shard_map`` over the batch axes: the local shard of ``w`` (laid out as ``spec``) cast to
    ``dtype`` and all-gathered whole. Autodiff makes the transpose a reduce-scatter of the local partial
    gradient, run once where this gather ran once."""
    # the barrier (an identity, and its own transpose) keeps the shard a shard at both ends. Backward: the reduced
    # gradient is sliced to this shard as it arrives; without it XLA fused that slice into the optimizer's update
    # at the end of the step and held the whole reduced weight through the backward scan (Llama-2 70B's LM head:
    # 0.5 GB per chip; tests/test_collectives.py). Forward: measured, the 70B step packs 0.08 GB tighter with it
    w = jax.lax.optimization_barrier(w).astype(dtype)
    gathered_over = {a for axes in spec if axes is not None for a in ((axes,) if isinstance(axes, str) else axes)}
    # typed as varying over the batch axes it is not gathered over (data) *before* the gather: the transpose then
    # reduce-scatters the gradient over fsdp first and sums only the shard over data; typed after the gather, the
    # sum over data runs on the whole weight (across slices: the whole LM head over the data-centre network)
    replicated = tuple(a for a in BATCH_AXES if a not in gathered_over and a not in jax.typeof(w).mat.varying)
    if replicated:
        w = jax.lax.pcast(w, replicated, to="varying")
    for dim, axes in enumerate(spec):
        if axes is not None:  # gathered along the leading axis: its transpose, the gradient's reduce-scatter,
            # then splits the leading axis too, which the TPU compiler keeps a reduce-scatter (a minor-axis one it
            # lowers as an all-reduce of the whole weight followed by a slice)
            w = jnp.moveaxis(jax.lax.all_gather(jnp.moveaxis(w, dim, 0), axes, axis=0, tiled=True), 0, dim)
    # typed as varying over every batch axis, like the activations it meets: a custom-VJP matmul's weight
    # gradient then has the weight's own type, and autodiff sums it over the axes the weight was replicated on
    missing = tuple(a for a in BATCH_AXES if a not in jax.typeof(w).mat.varying)
    return jax.lax.pcast(w, missing, to="varying") if missing else w


def gathered(w: jax.Array, logical_axes: Sequence[Optional[str]], dtype: Any) -> jax.Array:
    """``w`` cast to ``dtype`` and whole over the batch mesh axes (still split where its logical axes map to
    other mesh axes); its gradient returns reduce-scattered to ``w``'s own sharding. Without an ambient mesh
    (one device, or model code called outside a :class:`~allam_jax.core.partitioning.Partitioner`), a cast."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return w.astype(dtype)
    stored = nn.logical_to_mesh_axes(tuple(logical_axes))
    compute = None if stored is None else P(*(_batch_part(a, batch=False) for a in stored))
    if compute is None or tuple(compute) == tuple(stored):
        return w.astype(dtype)
    return _gather(w, dtype, P(*stored), compute)


def project_gathered(x: jax.Array, kernel: jax.Array, logical_axes: Sequence[Optional[str]], num_contract: int,
                     dtype: Any, impl: str, out_dtype: Any = None) -> jax.Array:
    """:func:`~allam_jax.model.matmul.project` by a weight gathered for compute. On a data/FSDP mesh whose batch
    axes divide ``x``'s rows, per shard (``shard_map``): the local rows meet the gathered weight, and the weight's
    gradient is a local partial sum that JAX reduce-scatters onto the shard (summed over the axes the weight is
    replicated on). Elsewhere (tensor parallelism, a batch that does not divide), :func:`gathered`."""
    mesh = batch_only_mesh(x.shape[0]) if x.ndim > num_contract else None
    if mesh is None:
        return project(x, gathered(kernel, logical_axes, dtype), num_contract, dtype, impl, out_dtype)
    spec = batch_shard_spec(logical_axes)
    rows = P(BATCH_AXES)

    def local(x: jax.Array, w: jax.Array) -> jax.Array:
        return project(x, gather_in_shard_map(w, spec, dtype), num_contract, dtype, impl, out_dtype)

    return jax.shard_map(local, mesh=mesh, in_specs=(rows, spec), out_specs=rows)(x, kernel)
