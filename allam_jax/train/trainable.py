"""Which parameters a run trains: gin patterns over parameter paths, optionally only the new vocabulary rows,
optionally for the first N steps only (the embeddings-first stage of vocabulary expansion).

The optimizer is wrapped, not the model: the gradient is masked before clipping (so the global norm and Adam's
moments see only what trains) and the update after AdamW (so weight decay cannot move a frozen weight). A frozen
parameter therefore gets an update of exactly zero and stays bit-identical.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from allam_jax.core.errors import ConfigError

# the vocabulary axis of each vocabulary table: rows of the embedding, columns of the untied LM head
VOCAB_AXIS = {"embed/embedding": 0, "lm_head/kernel": 1}


def param_name(path: Sequence[Any]) -> str:
    """``('layers', 'attn', 'q', 'kernel')`` -> ``'layers/attn/q/kernel'``: what the patterns are matched with."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


@dataclasses.dataclass(frozen=True)
class TrainableSpec:
    """``patterns``: regular expressions searched in each parameter's path (``embed``, ``lm_head``,
    ``layers/mlp``); empty: everything trains. ``rows_from``: in the vocabulary tables, only ids from this one on
    train (the rows a vocabulary expansion added). ``steps``: the restriction holds for the first N steps, then
    everything trains (0: the whole run)."""

    patterns: tuple[str, ...] = ()
    rows_from: int = 0
    steps: int = 0

    def __post_init__(self):
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ConfigError(f"TrainerConfig.trainable: {p!r} is not a regular expression ({e})") from None
        if not self.patterns and (self.rows_from or self.steps):
            raise ConfigError("TrainerConfig.trainable_rows_from / trainable_steps need TrainerConfig.trainable "
                              "(the parameters they restrict), e.g. ['embed', 'lm_head']")

    @property
    def active(self) -> bool:
        return bool(self.patterns)

    def selects(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.patterns)

    def mask(self, tree) -> Any:
        """Per leaf, a boolean array broadcastable to it: True where the value trains."""
        def leaf(path, x):
            name = param_name(path)
            if not self.selects(name):
                return jnp.zeros((1,) * x.ndim, bool)
            axis = VOCAB_AXIS.get(name)
            if axis is None or not self.rows_from:
                return jnp.ones((1,) * x.ndim, bool)
            shape = [1] * x.ndim
            shape[axis] = x.shape[axis]
            return (jnp.arange(x.shape[axis]) >= self.rows_from).reshape(shape)

        return jax.tree_util.tree_map_with_path(leaf, tree)

    def check(self, params) -> None:
        """Every pattern names a parameter, and ``rows_from`` leaves rows to train: one line naming what is wrong."""
        names = [param_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        for p in self.patterns:
            if not any(re.search(p, n) for n in names):
                raise ConfigError(f"TrainerConfig.trainable: {p!r} matches no parameter; parameters: "
                                  f"{', '.join(sorted(set(names)))}")
        if self.rows_from:
            tables = {n: leaf.shape[VOCAB_AXIS[n]] for n, leaf in
                      zip(names, jax.tree_util.tree_leaves(params)) if n in VOCAB_AXIS and self.selects(n)}
            if not tables:
                raise ConfigError(f"TrainerConfig.trainable_rows_from = {self.rows_from}, but no vocabulary table "
                                  f"({', '.join(VOCAB_AXIS)}) is trainable")
            for n, rows in tables.items():
                if self.rows_from >= rows:
                    raise ConfigError(f"TrainerConfig.trainable_rows_from = {self.rows_from} leaves no row of {n} "
                                      f"({rows} rows) to train")


class _MaskState(NamedTuple):
    count: jax.Array


def _masked(spec: TrainableSpec) -> optax.GradientTransformation:
    def init(params):
        del params
        return _MaskState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        on = jnp.asarray(spec.steps == 0) | (state.count < spec.steps)
        masked = jax.tree.map(lambda u, m: jnp.where(m | ~on, u, jnp.zeros_like(u)), updates, spec.mask(updates))
        return masked, _MaskState(state.count + 1)

    return optax.GradientTransformation(init, update)


def restrict(tx: optax.GradientTransformation, spec: TrainableSpec) -> optax.GradientTransformation:
    """``tx`` training only what ``spec`` selects (``tx`` itself when everything trains, so the optimizer state,
    and with it every checkpoint written before this option, keeps its structure)."""
    if not spec.active:
        return tx
    return optax.chain(_masked(spec), tx, _masked(spec))


__all__ = ["TrainableSpec", "VOCAB_AXIS", "param_name", "restrict"]
