"""The decoder: embeddings -> N x (attention + SwiGLU, pre-norm) -> RMSNorm -> LM head."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from allam_jax.model.attention import Attention, CacheState, LayerCache
from allam_jax.model.config import ModelConfig
from allam_jax.model.layers import EMBED_AXES, LM_HEAD_AXES, DenseGeneral, Embed, RMSNorm, SwiGLU
from allam_jax.model.matmul import project
from allam_jax.model.weights import gathered

_ACT = ("activation_batch", "activation_length", "activation_embed")


def remat_policy(name: str):
    return {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[name]


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: Optional[jax.Array],
                 cache: Optional[LayerCache] = None, state: Optional[CacheState] = None):
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.norm_eps, cfg.dtype, cfg.params_dtype, name=name)  # noqa: E731
        h = Attention(cfg, name="attention")(norm("attention_norm")(x), positions, segment_ids, cache, state)
        new_cache = None
        if cache is not None:
            h, new_cache = h
        x = nn.with_logical_constraint(x + h, _ACT)
        mlp = SwiGLU(cfg.mlp_dim, cfg.init_std, cfg.dtype, cfg.params_dtype, cfg.matmul_impl, name="mlp")
        h = mlp(norm("mlp_norm")(x))
        x = nn.with_logical_constraint(x + h, _ACT)
        return x, new_cache


class Decoder(nn.Module):
    """Returns float32 logits ``[batch, len, vocab]``."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, tokens: jax.Array, positions: Optional[jax.Array] = None, segment_ids: Optional[jax.Array] = None,
        cache: Optional[LayerCache] = None, state: Optional[CacheState] = None, return_hidden: bool = False,
    ):
        """With ``cache`` (every layer's ``LayerCache`` stacked on a leading layer axis) and ``state``, runs
        one decoding chunk and returns ``(logits, new_cache)``; see :mod:`allam_jax.inference`.

        ``return_hidden=True`` stops before the LM head and returns the final normed hidden states
        ``[batch, len, d_model]``, for a loss that applies the head itself in chunks (:func:`lm_head`)."""
        cfg = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, cfg.dtype, cfg.params_dtype, cfg.matmul_impl,
                      name="embed")
        x = nn.with_logical_constraint(embed(tokens), _ACT)

        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(DecoderLayer, policy=remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, new_cache = stack(cfg, name="layers")(x, positions, segment_ids, cache, state)
        else:
            layers = []
            for i in range(cfg.num_layers):
                layer = None if cache is None else LayerCache(cache.k[i], cache.v[i])
                x, c = layer_cls(cfg, name=f"layer_{i}")(x, positions, segment_ids, layer, state)
                layers.append(c)
            new_cache = None if cache is None else LayerCache(jnp.stack([c.k for c in layers]),
                                                              jnp.stack([c.v for c in layers]))

        x = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.params_dtype, name="final_norm")(x)
        if return_hidden:
            return x
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = DenseGeneral(
                (cfg.vocab_size,), LM_HEAD_AXES, std=cfg.init_std, dtype=cfg.dtype,
                param_dtype=cfg.params_dtype, matmul_impl=cfg.matmul_impl, out_dtype=jnp.float32, name="lm_head",
            )(x)
        logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
        logits = logits.astype(jnp.float32)
        return logits if cache is None else (logits, new_cache)


def lm_head_weight(cfg: ModelConfig, params) -> tuple[jax.Array, tuple[str, str], bool]:
    """(the stored LM-head parameter, its logical axes, whether the head is its transpose: tied embeddings)."""
    if cfg.tie_embeddings:
        return params["embed"]["embedding"], EMBED_AXES, True
    return params["lm_head"]["kernel"], LM_HEAD_AXES, False


def lm_head_kernel(cfg: ModelConfig, params) -> jax.Array:
    """The LM head's ``[d_model, vocab]`` weight in the compute dtype, gathered over the batch mesh axes: made once
    per step by a loss that applies the head in chunks, not once per chunk."""
    weight, axes, transposed = lm_head_weight(cfg, params)
    kernel = gathered(weight, axes, cfg.dtype)
    return kernel.T if transposed else kernel


def lm_head(cfg: ModelConfig, params, hidden: jax.Array, kernel: Optional[jax.Array] = None) -> jax.Array:
    """The LM head applied outside the module (to the output of ``return_hidden=True``): float32 logits, the
    same computation as :class:`Decoder`'s last step, from the same parameters (or from ``kernel``, what
    :func:`lm_head_kernel` made of them)."""
    kernel = lm_head_kernel(cfg, params) if kernel is None else kernel
    logits = project(hidden, kernel, 1, cfg.dtype, cfg.matmul_impl, out_dtype=jnp.float32)
    logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits.astype(jnp.float32)
