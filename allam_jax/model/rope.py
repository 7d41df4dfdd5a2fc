"""Rotary position embedding and the frequency rules of the base families (plain, Llama-3's ``llama3``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ROPE_SCALINGS = ("none", "llama3")


def inverse_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 8.0,
                        low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                        original_max_len: int = 8192) -> jax.Array:
    """``[head_dim / 2]`` float32 rotation speeds.

    ``llama3`` (Llama-3.1/3.2/3.3): wavelengths longer than ``original_max_len / low_freq_factor`` are slowed by
    ``factor``, those shorter than ``original_max_len / high_freq_factor`` kept, the band between interpolated
    smoothly; the attention scale stays 1. The same arithmetic as transformers' ``_compute_llama3_parameters``.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling == "none":
        return inv_freq
    if scaling != "llama3":
        raise ValueError(f"unknown RoPE scaling {scaling!r}")
    low_wavelen = original_max_len / low_freq_factor
    high_wavelen = original_max_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope(x: jax.Array, positions: jax.Array, theta_or_inv_freq) -> jax.Array:
    """Rotary embedding in the half-split layout used by Hugging Face Llama (``rotate_half``).

    x: [batch, len, heads, head_dim]; positions: [batch, len]; the last argument is RoPE's base (plain rule) or
    the ``[head_dim / 2]`` rotation speeds of :func:`inverse_frequencies`. Angles in float32; the rotation in x's
    dtype with sin/cos rounded to it, as transformers' Llama and MaxText compute it: in bfloat16 a float32 rotation
    kept four float32 copies of q/k per layer alive in the backward pass (~3 GB per chip for a 13B layer at 32K
    tokens per chip) for no accuracy the bfloat16 result keeps.
    """
    d = x.shape[-1]
    if isinstance(theta_or_inv_freq, (int, float)):
        inv_freq = inverse_frequencies(d, theta_or_inv_freq)
    else:
        inv_freq = theta_or_inv_freq
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
