"""Decoding with a KV cache: one prefill over the left-padded prompts, then one token per jitted step.

Left padding keeps every row's next token in the same cache slot; padded slots are never attended
(``CacheState.valid``) and each row's positions start at 0 at its first real token, so a row decodes
exactly as it would alone.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from allam_jax.model import Decoder, ModelConfig
from allam_jax.model.attention import CacheState, LayerCache
from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import Partitioner, jit_on


log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``temperature = 0`` is greedy; ``top_k = 0`` and ``top_p = 1`` switch those filters off."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop strings must be non-empty (an empty one matches before the first token), got "
                              f"{list(self.stop)!r}")
        if not self.temperature >= 0 or self.temperature == float("inf") or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"bad sampling settings: temperature={self.temperature} (>= 0), top_k={self.top_k} "
                              f"(>= 0), top_p={self.top_p} (in (0, 1])")


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Sets logits outside the top-k and outside the smallest nucleus of mass ``top_p`` to -inf."""
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
        keep_sorted = before < top_p  # the best token is always kept
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def sample(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits / temperature, top_k, top_p), axis=-1).astype(jnp.int32)


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> LayerCache:
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.kv_head_dim)
    return LayerCache(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))


@dataclasses.dataclass
class Generation:
    tokens: list[int]
    text: str
    finish_reason: str  # "eos", "stop", "length"


def _in_compute_dtype(params, dtype):
    """Floating parameters cast once to the compute dtype. The model casts every parameter to it before use,
    so the logits are the same; decoding, which reads all weights per token, then reads half as many bytes
    (bf16 compute with float32 parameters) instead of casting them again at every step."""
    def cast(p):
        return p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) and p.dtype != dtype else p

    return jax.tree_util.tree_map(cast, params)


def decode_fn(model: Decoder) -> Callable:
    """One decoding chunk: ``(params, tokens, positions, cache, index, valid) -> (logits, new cache)``; the
    prefill runs it with the prompts, each later step with one token per row."""
    def run(params, tokens, positions, cache, index, valid):
        return model.apply({"params": params}, tokens, positions, None, cache, CacheState(index, valid))

    return run


def decoding_function(model: Decoder, partitioner: Optional[Partitioner] = None) -> Callable:
    """The jitted decoding chunk the Generator runs and ``allam compile --step=decode`` lowers (the cache,
    argument 3, is donated: each step updates it in place)."""
    return jit_on(partitioner, decode_fn(model), donate_argnums=(3,))


class Generator:
    """Batched generation for one model and vocabulary (``encode``/``decode``/``eos_id``)."""

    def __init__(self, cfg: ModelConfig, params, vocab, bos_id: int, partitioner: Optional[Partitioner] = None):
        self.cfg, self.params, self.vocab, self.bos_id = cfg, _in_compute_dtype(params, cfg.dtype), vocab, bos_id
        self.partitioner = partitioner  # the mesh and rules the parameters were sharded with, if any
        self.model = Decoder(cfg)
        self._run = decoding_function(self.model, partitioner)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return ([self.bos_id] if add_bos else []) + [int(t) for t in self.vocab.encode(text)]

    def stream(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
               on_logits: Optional[Callable[[int, np.ndarray], None]] = None) -> Iterator[list[Optional[int]]]:
        """Yields, per step, each row's new token (None once the row has finished)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("every prompt needs at least one token")
        if sampling.top_k > self.cfg.vocab_size:
            raise ConfigError(f"top_k={sampling.top_k} is above the vocabulary's {self.cfg.vocab_size} tokens; "
                              f"use at most {self.cfg.vocab_size} (0 = off)")
        if sampling.max_new_tokens > self.cfg.max_seq_len:  # its KV cache is allocated up front
            raise ConfigError(f"max_new_tokens={sampling.max_new_tokens} is more than the model's "
                              f"ModelConfig.max_seq_len={self.cfg.max_seq_len} positions; ask for at most "
                              f"{self.cfg.max_seq_len}")
        b, p_len = len(prompts), max(len(p) for p in prompts)
        total = p_len + sampling.max_new_tokens
        if total > self.cfg.max_seq_len:
            log.warning("the longest prompt (%d tokens) plus max_new_tokens=%d reaches position %d, past "
                        "ModelConfig.max_seq_len=%d that the model was trained for: output there may degrade",
                        p_len, sampling.max_new_tokens, total, self.cfg.max_seq_len)
        lengths = np.array([len(p) for p in prompts])
        tokens = np.zeros((b, p_len), np.int32)
        valid = np.zeros((b, total), bool)
        for i, p in enumerate(prompts):
            tokens[i, p_len - len(p):] = p
            valid[i, p_len - len(p): p_len] = True
        positions = np.maximum(np.arange(p_len)[None, :] - (p_len - lengths)[:, None], 0).astype(np.int32)
        cache = init_cache(self.cfg, b, total)
        logits, cache = self._run(self.params, tokens, positions, cache, 0, valid)
        last = logits[:, -1]
        rng = jax.random.PRNGKey(sampling.seed)
        eos = int(self.vocab.eos_id)
        done = np.zeros(b, bool)
        for step in range(sampling.max_new_tokens):
            if on_logits is not None:
                on_logits(step, np.asarray(last))
            rng, key = jax.random.split(rng)
            new = np.asarray(sample(last, key, sampling.temperature, sampling.top_k, sampling.top_p))
            yield [None if done[i] else int(new[i]) for i in range(b)]
            done |= new == eos
            if done.all() or step == sampling.max_new_tokens - 1:
                return
            valid[:, p_len + step] = True
            pos = (lengths + step)[:, None].astype(np.int32)
            logits, cache = self._run(self.params, new[:, None].astype(np.int32), pos, cache, p_len + step, valid)
            last = logits[:, -1]

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 on_logits: Optional[Callable[[int, np.ndarray], None]] = None) -> list[Generation]:
        """Generates for every prompt; stops a row at EOS, at a stop string (cut off), or at the length."""
        b = len(prompts)
        out: list[list[int]] = [[] for _ in range(b)]
        reason = ["length"] * b
        finished = [False] * b
        for step_tokens in self.stream(prompts, sampling, on_logits):
            for i, tok in enumerate(step_tokens):
                if tok is None or finished[i]:
                    continue
                if tok == int(self.vocab.eos_id):
                    finished[i], reason[i] = True, "eos"
                    continue
                out[i].append(tok)
                if sampling.stop and any(s in self.vocab.decode(out[i]) for s in sampling.stop):
                    finished[i], reason[i] = True, "stop"
            if all(finished):
                break
        results = []
        for i in range(b):
            text = self.vocab.decode(out[i])
            if reason[i] == "stop":
                cut = min(text.index(s) for s in sampling.stop if s in text)
                text = text[:cut]
            results.append(Generation(out[i], text, reason[i]))
        return results


__all__ = ["Generation", "Generator", "SamplingConfig", "filter_logits", "init_cache",
           "sample"]
