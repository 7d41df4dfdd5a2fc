"""The train state pytree and its sharded initialisation."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from allam_jax import partitioning


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to resume exactly (the data position is saved beside it)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ref_params: Any = None  # DPO with a frozen reference: a copy of the starting parameters, never updated


# a raw PRNG key's shape: eval_shape needs no concrete key (none can be made on compile-only devices)
_ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def strip_boxes(tree: Any) -> Any:
    """Drops the logical-axis boxes without applying sharding constraints (safe outside jit)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    return jax.tree_util.tree_map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, seq_len: int) -> Callable[[jax.Array], TrainState]:
    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        params = model.init(init_rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng)

    return init


def state_shardings(
    model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, rules, seq_len: int = 8
) -> tuple[TrainState, TrainState]:
    """Returns (abstract unboxed state, NamedSharding tree) without allocating any parameter."""
    boxed = jax.eval_shape(_init_fn(model, tx, seq_len), _ABSTRACT_KEY)
    logical = nn.get_partition_spec(boxed)
    shardings = partitioning.logical_to_sharding(logical, mesh, rules)
    abstract = strip_boxes(boxed)
    partitioning.check_divisibility(abstract, shardings)
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return abstract, shardings


def init_train_state(
    model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, rules, seed: int, seq_len: int = 8
) -> TrainState:
    """Initialises parameters directly into their shards (no host copy of the full model)."""
    _, shardings = state_shardings(model, tx, mesh, rules, seq_len)
    init = _init_fn(model, tx, seq_len)
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        return jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(jax.random.PRNGKey(seed))


def abstract_params(model: nn.Module, seq_len: int = 8) -> Any:
    """Parameter shapes from ``jax.eval_shape``: no memory is allocated (used by ``allam info``)."""
    boxed = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, seq_len), jnp.int32)), _ABSTRACT_KEY)
    return strip_boxes(boxed)["params"]


def count_params(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
