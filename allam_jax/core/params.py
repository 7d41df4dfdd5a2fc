"""Parameters built abstractly (nothing allocated), optionally carrying their shardings: the shapes every
checkpoint reader restores into (``allam_jax.checkpoint``) and the dry run compiles against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from allam_jax.core.trees import ABSTRACT_KEY, strip_boxes

if TYPE_CHECKING:
    from allam_jax.core.partitioning import Partitioner


def boxed_abstract_params(model: nn.Module, seq_len: int = 8) -> Any:
    """The model's parameters as boxed ``ShapeDtypeStruct``s (logical axis names kept): nothing allocated."""
    return jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, seq_len), jnp.int32)), ABSTRACT_KEY)["params"]


def abstract_params(model: nn.Module, partitioner: Optional["Partitioner"] = None, seq_len: int = 8) -> Any:
    """Parameter shapes and dtypes from ``jax.eval_shape`` (nothing allocated); with a ``partitioner``, each
    carries its sharding on the partitioner's mesh (a restore target that never lands whole on one host)."""
    boxed = boxed_abstract_params(model, seq_len)
    if partitioner is None:
        return strip_boxes(boxed)
    return partitioner.abstract(boxed)[0]
