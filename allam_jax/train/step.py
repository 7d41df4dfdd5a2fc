"""The single jit-compiled train step: micro-batched gradients of any objective, one optimizer update.

Micro-batching lives here, not in an objective (as T5X's ``accumulate_grads_microbatched``, MaxText's
``gradient_accumulation`` and Levanter's ``_compute_gradients_microbatched``): the objective returns loss
*sums* and the statistics that normalise them; the step differentiates each micro-batch's sum, adds the
gradients in float32 and divides once by the whole batch's denominator, so any number of micro-batches gives
the full batch's gradient.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from allam_jax.core.errors import ConfigError
from allam_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def split_micro_batches(batch: Batch, num_micro: int, rows_per_example: int = 1) -> Batch:
    """``[rows, ...]`` -> ``[num_micro, rows // num_micro, ...]``; micro-batch i takes examples i, i+n, ...
    (each example's rows stay together and in order), so every micro-batch keeps the batch sharding without a
    reshuffle when each device holds a multiple of ``num_micro`` examples."""

    def split(x: jax.Array) -> jax.Array:
        rows = x.shape[0]
        if rows % (num_micro * rows_per_example):
            raise ConfigError(f"a batch of {rows // rows_per_example} examples does not split into "
                              f"{num_micro} micro-batches (TrainerConfig.grad_accum_steps)")
        per = rows // (num_micro * rows_per_example)
        x = x.reshape(per, num_micro, rows_per_example, *x.shape[1:]).swapaxes(0, 1)
        return x.reshape(num_micro, per * rows_per_example, *x.shape[3:])

    return jax.tree_util.tree_map(split, batch)


def accumulate_gradients(objective: Any, model: nn.Module, params: Any, batch: Batch, extra: Optional[Any] = None,
                         num_micro: int = 1, grad_shardings: Optional[Any] = None
                         ) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """``(loss, grads, metrics)`` of the whole batch, computed ``num_micro`` micro-batches at a time.

    Each micro-batch's gradient of the objective's sum is added into a float32 accumulator laid out like the
    parameters (``grad_shardings``, when given, pins it there); the sums of the objective's statistics add
    up alongside, and the objective's ``normalise`` turns the totals into the loss's denominator and metrics.
    """
    grad_fn = jax.grad(lambda p, b: objective.loss_sums(model, p, b, extra), has_aux=True)

    def pin(tree: Any) -> Any:
        if grad_shardings is None:
            return tree
        return jax.tree_util.tree_map(jax.lax.with_sharding_constraint, tree, grad_shardings)

    def as_f32(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tree)

    if num_micro == 1:
        grads, sums = grad_fn(params, batch)
        grads = as_f32(grads)
    else:
        micro = split_micro_batches(batch, num_micro, objective.rows_per_example)

        def body(carry, mb):
            g, s = grad_fn(params, mb)
            acc_g, acc_s = carry
            acc_g = pin(jax.tree_util.tree_map(lambda a, x: a + x.astype(jnp.float32), acc_g, g))
            return (acc_g, jax.tree_util.tree_map(lambda a, x: a + x.astype(jnp.float32), acc_s, s)), None

        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        sum_shapes = jax.eval_shape(lambda p, b: grad_fn(p, b)[1], params, first)
        zeros = (pin(jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)),
                 jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), sum_shapes))
        (grads, sums), _ = jax.lax.scan(body, zeros, micro)
    denom, loss, metrics = objective.normalise(sums)
    grads = jax.tree_util.tree_map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
    return loss, grads, metrics


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, objective: Any,
                    grad_accum_steps: int = 1, grad_shardings: Optional[Any] = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """``(state, batch) -> (state, metrics)`` for any objective (see :mod:`allam_jax.objectives`)."""

    def train_step(state: TrainState, batch: Batch):
        loss, grads, metrics = accumulate_gradients(objective, model, state.params, batch, state.ref_params,
                                                    grad_accum_steps, grad_shardings)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step), **metrics}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step
