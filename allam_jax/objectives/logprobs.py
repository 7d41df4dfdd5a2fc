"""Token and sequence log-probabilities: one computation for the objectives that need them (DPO, its reference
pass) and for scoring (multiple-choice benchmarks, perplexity), as T5X's ``BaseModel.score_batch``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from allam_jax.objectives.cross_entropy import token_cross_entropy


def forward_logits(model: nn.Module, params: Any, batch: dict) -> jax.Array:
    """``[rows, T, vocab]`` logits of a batch in the trainer's layout (inputs, positions, segment_ids)."""
    return model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``log softmax(logits)[target]`` per position, in float32."""
    token_ce, _ = token_cross_entropy(logits.astype(jnp.float32), targets)
    return -token_ce


def sequence_logprobs(model: nn.Module, params: Any, batch: dict) -> jax.Array:
    """Sum of the log-probabilities of each row's weighted target tokens: ``[rows]``."""
    logp = token_logprobs(forward_logits(model, params, batch), batch["targets"])
    return jnp.sum(logp * batch["loss_weights"].astype(jnp.float32), axis=-1)
