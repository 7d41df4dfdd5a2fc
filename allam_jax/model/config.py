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
from allam_jax.kernels import ATTENTION_IMPLS
from allam_jax.model.matmul import MATMUL_IMPLS
from allam_jax.model.rope import ROPE_SCALINGS, inverse_frequencies

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_BACKWARDS = ("fused", "separate")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


_INT32_MAX = 2**31 - 1  # token ids and positions are int32 on the device


def _positive_int(owner: str, name: str, value, maximum: int = _INT32_MAX) -> None:
    """A positive integer up to ``maximum`` (token ids, positions and array sizes are int32 on the device)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}")
    if value > maximum:
        raise ConfigError(f"{owner}.{name} = {value} is too large (at most {maximum:,}: the device counts in int32)")


def resolve_dtype(name: str, owner: str = "ModelConfig", field: str = "dtype"):
    """Maps a dtype name to a jnp dtype; 'auto' means bf16 on accelerators and fp32 on CPU."""
    if name == "auto":
        return jnp.float32 if target_platform() == "cpu" else jnp.bfloat16
    if name not in _DTYPES:
        raise ConfigError(f"{owner}.{field} must be one of {sorted(_DTYPES) + ['auto']}, got {name!r}")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes of a Llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU) and the variants of today's bases:
    Llama-3's RoPE scaling (``rope_scaling='llama3'`` with the ``rope_*`` numbers of its ``config.json``),
    Qwen2's biased q/k/v (``qkv_bias``), Qwen3's per-head RMSNorm of q and k (``qk_norm``), a ``head_dim``
    apart from ``d_model / num_heads``, tied embeddings."""

    vocab_size: int = 384
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: Optional[int] = None
    mlp_dim: int = 128
    max_seq_len: int = 128
    rope_theta: float = 10000.0
    rope_scaling: str = "none"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    qkv_bias: bool = False
    qk_norm: bool = False
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    param_dtype: str = "float32"
    compute_dtype: str = "auto"
    remat_policy: str = "none"
    scan_layers: bool = True
    attention_impl: str = "reference"
    # 'pallas' on TPU: splash's backward as one kernel ('fused': dK, dV and per-block dQ partials) or two
    # ('separate': dK/dV, then dQ; MaxText's default)
    attention_backward: str = "fused"
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
        self._check_variants()
        if self.matmul_impl not in MATMUL_IMPLS:
            raise ConfigError(f"ModelConfig.matmul_impl must be one of {MATMUL_IMPLS}, got {self.matmul_impl!r}")
        resolve_dtype(self.param_dtype, field="param_dtype")
        resolve_dtype(self.compute_dtype, field="compute_dtype")

        if self.attention_backward not in ATTENTION_BACKWARDS:
            raise ConfigError(f"ModelConfig.attention_backward must be one of {ATTENTION_BACKWARDS}, got "
                              f"{self.attention_backward!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(
                f"ModelConfig.attention_impl must be one of {sorted(ATTENTION_IMPLS)}, got {self.attention_impl!r}"
            )

    def _check_variants(self) -> None:
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ConfigError(f"ModelConfig.rope_scaling must be one of {ROPE_SCALINGS}, got {self.rope_scaling!r}")
        for name in ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"ModelConfig.{name} must be a positive number, got {value!r}")
        _positive_int("ModelConfig", "rope_original_max_len", self.rope_original_max_len)
        if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise ConfigError(f"ModelConfig.rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                              f"rope_low_freq_factor={self.rope_low_freq_factor} (llama3 RoPE scaling)")
        for name in ("qkv_bias", "qk_norm", "tie_embeddings", "scan_layers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ModelConfig.{name} must be True or False, got {getattr(self, name)!r}")

    def rope_frequencies(self):
        """RoPE's ``[head_dim / 2]`` rotation speeds under this config's scaling rule."""
        return inverse_frequencies(self.kv_head_dim, self.rope_theta, self.rope_scaling, self.rope_factor,
                                   self.rope_low_freq_factor, self.rope_high_freq_factor, self.rope_original_max_len)

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
    def layer_matmul_params(self) -> int:
        hd = self.kv_head_dim
        attn = self.d_model * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        return attn + 3 * self.d_model * self.mlp_dim

    def layer_vector_params(self) -> int:
        """Norm scales and biases: parameters that are no matmul."""
        hd = self.kv_head_dim
        bias = hd * (self.num_heads + 2 * self.num_kv_heads) if self.qkv_bias else 0
        return 2 * self.d_model + bias + (2 * hd if self.qk_norm else 0)

    def layer_params(self) -> int:
        return self.layer_matmul_params() + self.layer_vector_params()

    def num_params(self) -> int:
        """Closed-form parameter count; tests check it against ``jax.eval_shape`` of the real model."""
        embed = self.vocab_size * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.num_layers * self.layer_params() + embed + head + self.d_model

    def flops_per_token(self, seq_len: Optional[int] = None, causal: bool = False) -> float:
        """Forward FLOPs per token: 2 per multiply-add of every matmul (embedding lookup excluded).

        Attention scores count the full T x T product (the PaLM convention), so numbers compare with
        published MFU figures; ``causal=True`` halves them (MaxText's convention since its PR #1988: a causal
        mask leaves half the products). Training costs 3x this (forward + backward).
        """
        seq_len = seq_len or self.max_seq_len
        hd = self.kv_head_dim
        matmul_params = self.num_layers * self.layer_matmul_params() + self.vocab_size * self.d_model
        attention = self.num_layers * 2 * 2 * seq_len * self.num_heads * hd
        return 2.0 * matmul_params + (attention / 2 if causal else attention)

    def training_flops_per_token(self, seq_len: Optional[int] = None, causal: bool = False) -> float:
        return 3.0 * self.flops_per_token(seq_len, causal)
