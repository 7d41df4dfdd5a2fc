"""What one training run compiles: the model, optimizer, sharded state layout and the jitted step.

Built once from an :class:`~allam_jax.train.experiment.Experiment` and a mesh, and shared by ``allam train``
(which then runs it) and ``allam compile`` (which lowers it from abstract arrays for another topology), so
the dry run compiles exactly what the real run would.
"""

from __future__ import annotations

import dataclasses


import jax
import optax
from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import TENSOR_AXIS, PartitionedFunction, Partitioner
from allam_jax.data.batch import BATCH_FEATURES
from allam_jax.model import Decoder
from allam_jax.objectives import Objective
from allam_jax.train.experiment import Experiment
from allam_jax.train.optimizer import learning_rate_schedule, make_optimizer
from allam_jax.train.state import TrainState, state_shardings
from allam_jax.train.step import make_train_step
from allam_jax.train.trainable import restrict



@dataclasses.dataclass
class TrainProgram:
    model: Decoder
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
    shardings: TrainState
    batch_sharding: jax.sharding.NamedSharding
    step_fn: PartitionedFunction  # jitted (state, batch) -> (state, metrics), the state donated
    rows_per_step: int  # the objective's rows per example times the batch size
    objective: Objective

    def abstract_batch(self, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch as ShapeDtypeStructs with the batch sharding (what ``allam compile`` lowers with)."""
        rows = self.rows_per_step
        batch = {k: jax.ShapeDtypeStruct((rows, seq_len), dtype, sharding=self.batch_sharding)
                 for k, dtype in BATCH_FEATURES.items()}
        for name, dtype in self.objective.batch_features().items():  # one value per row
            batch[name] = jax.ShapeDtypeStruct((rows,), dtype, sharding=self.batch_sharding)
        return batch


def build_train_program(exp: Experiment, partitioner: Partitioner) -> TrainProgram:
    """Model, optimizer, state shardings and the jitted step for ``exp`` on the partitioner's mesh (nothing
    allocated)."""
    tcfg = exp.trainer
    if tcfg.seq_len > exp.model.max_seq_len:
        raise ConfigError(f"TrainerConfig.seq_len={tcfg.seq_len} exceeds ModelConfig.max_seq_len={exp.model.max_seq_len}")
    mesh = partitioner.mesh
    batch_parts = partitioner.axis_size(partitioner.batch_axes)
    if tcfg.batch_size % batch_parts:
        raise ConfigError(
            f"TrainerConfig.batch_size={tcfg.batch_size} is not divisible by data x fsdp = {batch_parts} devices"
        )
    tensor = mesh.shape[TENSOR_AXIS]
    for name in ("num_heads", "num_kv_heads"):
        if getattr(exp.model, name) % tensor:
            raise ConfigError(f"ModelConfig.{name}={getattr(exp.model, name)} is not divisible by the tensor mesh "
                              f"axis (size {tensor}); change PartitioningConfig.mesh_shape")
    model = Decoder(exp.model)
    trainable = tcfg.trainable_spec
    tx = restrict(make_optimizer(exp.optimizer), trainable)
    schedule = learning_rate_schedule(exp.optimizer)
    abstract, shardings = state_shardings(model, tx, partitioner)
    trainable.check(abstract.params)
    objective = exp.objective
    objective.check(exp)
    if objective.needs_extra_state():
        abstract, shardings = (abstract.replace(ref_params=abstract.params),
                               shardings.replace(ref_params=shardings.params))
    make_step = make_train_step(model, tx, schedule, objective, tcfg.grad_accum_steps, shardings.params)
    batch_sharding = partitioner.batch_sharding
    step_fn = partitioner.jit(make_step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
                              donate_argnums=(0,))
    rows = tcfg.batch_size * objective.rows_per_example
    return TrainProgram(model, tx, schedule, abstract, shardings, batch_sharding, step_fn, rows, objective)
