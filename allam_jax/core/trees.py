"""Small pytree tools every floor uses: the abstract PRNG key, unboxing flax's logical-axis boxes, counting and
naming leaves, a one-device restore target."""

from __future__ import annotations

import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# a raw PRNG key's shape: eval_shape needs no concrete key (none can be made on compile-only devices)
ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def strip_boxes(tree: Any) -> Any:
    """Drops the logical-axis boxes without applying sharding constraints (safe outside jit)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    return jax.tree_util.tree_map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def count_params(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def on_one_device(abstract: Any, device: Optional[Any] = None) -> Any:
    """A restore target that puts every parameter on ``device`` (default: the first): export of small models."""
    sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def leaf_shapes(tree: Any) -> dict[str, tuple]:
    """``"['params']['embed']['embedding']" -> shape``: attribute and dict keys written alike, as on disk."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {re.sub(r"\.(\w+)", r"['\1']", jax.tree_util.keystr(p)): tuple(v.shape) for p, v in flat}
