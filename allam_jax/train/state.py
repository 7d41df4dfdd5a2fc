"""The train state pytree and its sharded initialisation."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from allam_jax.core.partitioning import Partitioner


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to resume exactly (the data position is saved beside it)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    # the objective's extra state, shaped like params (DPO's frozen reference; the name is the checkpoint's)
    ref_params: Any = None


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, seq_len: int) -> Callable[[jax.Array], TrainState]:
    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        params = model.init(init_rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng)

    return init


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, partitioner: Partitioner,
                    seq_len: int = 8) -> tuple[TrainState, TrainState]:
    """Returns (abstract unboxed state carrying its shardings, NamedSharding tree) without allocating."""
    return partitioner.abstract_init(_init_fn(model, tx, seq_len))


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, partitioner: Partitioner, seed: int,
                     seq_len: int = 8) -> TrainState:
    """Initialises parameters directly into their shards (no host copy of the full model)."""
    _, shardings = state_shardings(model, tx, partitioner, seq_len)
    init = _init_fn(model, tx, seq_len)
    return partitioner.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(jax.random.PRNGKey(seed))
