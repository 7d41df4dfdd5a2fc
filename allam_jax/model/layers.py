"""Small building blocks of the decoder, each parameter tagged with logical axis names.

Logical names (``embed``, ``vocab``, ``heads``, ``kv_heads``, ``head_dim``, ``mlp``, ``norm``, ``layers``) are
mapped onto the device mesh by ``allam_jax.core.partitioning``; nothing here knows about devices.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from allam_jax.model.matmul import project
from allam_jax.model.rope import rope  # noqa: F401 - its old home; tests and users import it from here
from allam_jax.model.weights import gathered, project_gathered

Dtype = Any
EMBED_AXES = ("vocab", "embed")
LM_HEAD_AXES = ("embed", "vocab")


def normal_init(std: float):
    return nn.initializers.normal(stddev=std)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): statistics in float32, scale applied in the compute dtype."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return y.astype(self.dtype) * scale.astype(self.dtype)


class DenseGeneral(nn.Module):
    """A matmul over the trailing ``len(in_axes_shape)`` input dims into ``features`` output dims."""

    features: Sequence[int]
    logical_axes: Sequence[str]
    num_contract: int = 1
    std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_impl: str = "auto"
    out_dtype: Optional[Dtype] = None
    use_bias: bool = False  # Qwen2's q/k/v projections; a zero-initialised ``bias`` over the output dims

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.num_contract :]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(normal_init(self.std), tuple(self.logical_axes)),
            tuple(in_shape) + tuple(self.features),
            self.param_dtype,
        )
        y = project_gathered(x, kernel, self.logical_axes, self.num_contract, self.dtype, self.matmul_impl,
                             self.out_dtype)
        if not self.use_bias:
            return y
        out_axes = tuple(self.logical_axes[self.num_contract :])
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, out_axes),
                          tuple(self.features), self.param_dtype)
        return y + gathered(bias, out_axes, y.dtype)


class Embed(nn.Module):
    """Token embedding table ``[vocab, embed]``; ``attend`` reuses it as a tied output head."""

    vocab_size: int
    features: int
    std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_impl: str = "auto"

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(normal_init(self.std), EMBED_AXES),
            (self.vocab_size, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        # a lookup, not a matmul: the partitioner weighs gathering the table against moving the looked-up rows
        # (all-to-all), which is cheaper when the table outweighs a shard's activations (70B: 524 MB vs 134 MB)
        return jnp.take(self.embedding.astype(self.dtype), tokens, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        table = gathered(self.embedding, EMBED_AXES, self.dtype)
        return project(x, table.T, 1, self.dtype, self.matmul_impl, out_dtype=jnp.float32)


class SwiGLU(nn.Module):
    """Llama MLP: ``down(silu(gate(x)) * up(x))``."""

    mlp_dim: int
    std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        dense = lambda feats, axes, name: DenseGeneral(  # noqa: E731
            feats, axes, std=self.std, dtype=self.dtype, param_dtype=self.param_dtype,
            matmul_impl=self.matmul_impl, name=name,
        )
        gate = dense((self.mlp_dim,), ("embed", "mlp"), "gate")(x)
        up = dense((self.mlp_dim,), ("embed", "mlp"), "up")(x)
        h = nn.silu(gate) * up
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return dense((d,), ("mlp", "embed"), "down")(h)
