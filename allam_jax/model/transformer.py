"""The decoder: embeddings -> N x (attention + SwiGLU, pre-norm) -> RMSNorm -> LM head."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from allam_jax.model.attention import Attention
from allam_jax.model.config import ModelConfig
from allam_jax.model.layers import DenseGeneral, Embed, RMSNorm, SwiGLU

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
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: Optional[jax.Array]):
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.norm_eps, cfg.dtype, cfg.params_dtype, name=name)  # noqa: E731
        h = Attention(cfg, name="attention")(norm("attention_norm")(x), positions, segment_ids)
        x = nn.with_logical_constraint(x + h, _ACT)
        h = SwiGLU(cfg.mlp_dim, cfg.init_std, cfg.dtype, cfg.params_dtype, name="mlp")(norm("mlp_norm")(x))
        x = nn.with_logical_constraint(x + h, _ACT)
        return x, None


class Decoder(nn.Module):
    """Returns float32 logits ``[batch, len, vocab]``."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, tokens: jax.Array, positions: Optional[jax.Array] = None, segment_ids: Optional[jax.Array] = None
    ) -> jax.Array:
        cfg = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, cfg.dtype, cfg.params_dtype, name="embed")
        x = nn.with_logical_constraint(embed(tokens), _ACT)

        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(DecoderLayer, policy=remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(cfg, name="layers")(x, positions, segment_ids)
        else:
            for i in range(cfg.num_layers):
                x, _ = layer_cls(cfg, name=f"layer_{i}")(x, positions, segment_ids)

        x = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.params_dtype, name="final_norm")(x)
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = DenseGeneral(
                (cfg.vocab_size,), ("embed", "vocab"), std=cfg.init_std, dtype=cfg.dtype,
                param_dtype=cfg.params_dtype, name="lm_head",
            )(x)
        logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))
        return logits.astype(jnp.float32)
