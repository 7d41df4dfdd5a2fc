"""Llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU) with logically named parameters."""

from allam_jax.model.config import ModelConfig
from allam_jax.model.transformer import Decoder

__all__ = ["Decoder", "ModelConfig"]
