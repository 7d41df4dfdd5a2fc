"""The single jit-compiled train step: the objective's gradients, one optimizer update."""

from __future__ import annotations

from typing import Any, Callable, Union

import flax.linen as nn
import jax
import optax

from allam_jax.objectives.lm import LmObjective, StepConfig
from allam_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    objective: Union[Any, StepConfig]) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """``(state, batch) -> (state, metrics)``; a bare ``StepConfig`` means the LM objective."""
    if isinstance(objective, StepConfig):
        objective = LmObjective(objective)

    def train_step(state: TrainState, batch: Batch):
        loss, grads, metrics = objective.loss_and_grads(model, state.params, batch, state.ref_params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step), **metrics}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step
