"""Token cross-entropy over a large vocabulary, with a gradient written out as one pass over the logits.

Autodiff of ``logsumexp(logits) - take_along_axis(logits, targets)`` keeps the [tokens, vocab] softmax as a
residual and builds the gradient from three full-size arrays (the softmax term, a scatter of the targets'
one-hot into zeros, their sum). Here the backward pass recomputes the softmax from the logits and the saved
``log_z`` and subtracts the one-hot in the same elementwise loop: one read of the logits, one write.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import BATCH_AXES
from allam_jax.model.matmul import project
from allam_jax.model.transformer import lm_head, lm_head_kernel, lm_head_weight
from allam_jax.model.weights import batch_only_mesh, batch_shard_spec, gather_in_shard_map


@jax.custom_vjp
def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token ``-log softmax(logits)[target]`` and ``log_z = logsumexp(logits)``, both ``[...]``.

    logits: [..., vocab] (float32 recommended); targets: [...] integer ids in [0, vocab).
    """
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit, log_z


def _forward(logits: jax.Array, targets: jax.Array):
    token_ce, log_z = token_cross_entropy(logits, targets)
    return (token_ce, log_z), (logits, targets, log_z)


def _backward(residuals, cotangents):
    logits, targets, log_z = residuals
    g_ce, g_log_z = cotangents
    probs = jnp.exp(logits - log_z[..., None])
    is_target = jax.lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1) == targets[..., None]
    d_logits = probs * (g_ce + g_log_z)[..., None] - jnp.where(is_target, g_ce[..., None], 0.0)
    return d_logits.astype(logits.dtype), None


token_cross_entropy.defvjp(_forward, _backward)


def chunked_lm_cross_entropy(cfg, params, hidden: jax.Array, targets: jax.Array,
                             chunk: int) -> tuple[jax.Array, jax.Array]:
    """``token_cross_entropy(lm_head(hidden), targets)`` computed ``chunk`` positions at a time.

    The float32 logits of a whole batch (``[rows, seq, vocab]``: 16 GiB for 16 rows x 4096 x 64K) are never held
    at once: each chunk's logits are made, reduced to its cross-entropy and log-partition, and dropped; the
    backward pass makes them again chunk by chunk (``jax.checkpoint``), so the head costs one more matmul in
    exchange. Same values and gradients as the unchunked form (tested).

    On a data/FSDP mesh the chunks run per batch shard (``shard_map``): the head's weight is all-gathered once
    before the first chunk, each chunk's weight gradient is added into a local partial sum, and the sum is
    reduced once after the last. Left to the partitioner, the loop's gradient carry takes the weight's sharding
    and every chunk reduces a whole weight-sized gradient across the slice. With tensor parallelism (a split
    vocabulary) the partitioner keeps the loop.

    hidden: ``[rows, seq, d_model]`` (the decoder's ``return_hidden=True`` output); targets: ``[rows, seq]``.
    """
    rows, seq, width = hidden.shape
    if chunk <= 0 or seq % chunk:
        raise ConfigError(f"StepConfig.logits_chunk_size={chunk} must be a positive divisor of the sequence "
                          f"length {seq}")
    mesh = batch_only_mesh(rows)
    if mesh is None:
        kernel = lm_head_kernel(cfg, params)
        return _chunked(lambda h: lm_head(cfg, params, h, kernel), hidden, targets, chunk)

    weight, axes, transposed = lm_head_weight(cfg, params)
    spec = batch_shard_spec(axes)
    batch = P(BATCH_AXES)

    def local(hidden, targets, weight):
        kernel = gather_in_shard_map(weight, spec, cfg.dtype)
        kernel = kernel.T if transposed else kernel

        head = functools.partial(project, kernel=kernel, num_contract=1, dtype=cfg.dtype, impl=cfg.matmul_impl,
                                 out_dtype=jnp.float32)
        return _chunked(head, hidden, targets, chunk)

    return jax.shard_map(local, mesh=mesh, in_specs=(batch, batch, spec), out_specs=(batch, batch))(
        hidden, targets, weight)


def _chunked(head, hidden: jax.Array, targets: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    rows, seq, width = hidden.shape
    n = seq // chunk
    hs = hidden.reshape(rows, n, chunk, width).swapaxes(0, 1)
    ts = targets.reshape(rows, n, chunk).swapaxes(0, 1)

    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
    def one(args):
        h, t = args
        return token_cross_entropy(head(h), t)

    ce, log_z = jax.lax.map(one, (hs, ts))
    return ce.swapaxes(0, 1).reshape(rows, seq), log_z.swapaxes(0, 1).reshape(rows, seq)
