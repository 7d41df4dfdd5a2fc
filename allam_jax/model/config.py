"""Model shapes, dtypes and the derived numbers (parameter count, FLOPs per token).

The config is a plain frozen dataclass; gin binds it at the edge (see ``allam_jax.gin_setup``).
Validation happens here so that a bad gin value fails with one line naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

from allam_jax.core.errors import ConfigError
from allam_jax.core.platform import target_platform
from allam_jax.model.matmul import MATMUL_IMPLS

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _positive_int(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")


def resolve_dtype(name: str, owner: str = "ModelConfig", field: str = "dtype"):
    """Maps a dtype name to a jnp dtype; 'auto' means bf16 on accelerators and fp32 on CPU."""
    if name == "auto":
        return jnp.float32 if target_platform() == "cpu" else jnp.bfloat16
    if name not in _DTYPES:
        raise ConfigError(f"{owner}.{field} must be one of {sorted(_DTYPES) + ['auto']}, got {name!r}")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes of a Llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU)."""

    vocab_size: int = 384
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: Optional[int] = None
    mlp_dim: int = 128
    max_seq_len: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    param_dtype: str = "float32"
    compute_dtype: str = "auto"
    remat_policy: str = "none"
    scan_layers: bool = True
    attention_impl: str = "reference"
    matmul_impl: str = "auto"
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "mlp_dim", "max_seq_len"):
            _positive_int("ModelConfig", name, getattr(self, name))
        if self.head_dim is not None:
            _positive_int("ModelConfig", "head_dim", self.head_dim)
        elif self.d_model % self.num_heads:
            raise ConfigError(
                f"ModelConfig.d_model={self.d_model} is not divisible by num_heads={self.num_heads}; set head_dim"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"ModelConfig.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"ModelConfig.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if not isinstance(self.rope_theta, (int, float)) or self.rope_theta <= 0:
            raise ConfigError(f"ModelConfig.rope_theta must be a positive number, got {self.rope_theta!r}")
        if self.matmul_impl not in MATMUL_IMPLS:
            raise ConfigError(f"ModelConfig.matmul_impl must be one of {MATMUL_IMPLS}, got {self.matmul_impl!r}")
        resolve_dtype(self.param_dtype, field="param_dtype")
        resolve_dtype(self.compute_dtype, field="compute_dtype")
        from allam_jax.kernels import ATTENTION_IMPLS  # local import: kernels do not depend on the model

        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(
                f"ModelConfig.attention_impl must be one of {sorted(ATTENTION_IMPLS)}, got {self.attention_impl!r}"
            )

    @property
    def kv_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

    @property
    def params_dtype(self):
        return resolve_dtype(self.param_dtype, field="param_dtype")

    @property
    def dtype(self):
        return resolve_dtype(self.compute_dtype, field="compute_dtype")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # --- derived numbers -------------------------------------------------------------------
    def layer_params(self) -> int:
        hd = self.kv_head_dim
        attn = self.d_model * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.d_model * self.mlp_dim
        return attn + mlp + 2 * self.d_model

    def num_params(self) -> int:
        """Closed-form parameter count; tests check it against ``jax.eval_shape`` of the real model."""
        embed = self.vocab_size * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.num_layers * self.layer_params() + embed + head + self.d_model

    def flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Forward FLOPs per token: 2 per multiply-add of every matmul (embedding lookup excluded).

        Attention scores count the full T x T product (the PaLM convention), so numbers compare with
        published MFU figures. Training costs 3x this (forward + backward).
        """
        seq_len = seq_len or self.max_seq_len
        hd = self.kv_head_dim
        matmul_params = self.num_layers * (self.layer_params() - 2 * self.d_model) + self.vocab_size * self.d_model
        attention = self.num_layers * 2 * 2 * seq_len * self.num_heads * hd
        return 2.0 * matmul_params + attention

    def training_flops_per_token(self, seq_len: Optional[int] = None) -> float:
        return 3.0 * self.flops_per_token(seq_len)
