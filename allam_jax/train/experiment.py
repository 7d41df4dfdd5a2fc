"""What one run is: the typed bundle of configs the trainer, the dry run and the sweep take whole.

Built at the edge (gin: :func:`allam_jax.gin_setup.build_experiment`); every check that needs two configs
at once is made here, when the config is built, not at the first step's trace a minute later.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import PartitioningConfig
from allam_jax.data.batch import DataSource
from allam_jax.model import ModelConfig
from allam_jax.objectives import LmObjective, Objective
from allam_jax.checkpoint.emergency import CheckpointConfig
from allam_jax.train.heldout_watch import HeldoutWatch
from allam_jax.train.optimizer import OptimizerConfig
from allam_jax.train.trainable import TrainableSpec


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    num_steps: int = 100
    batch_size: int = 8  # examples per step (DPO: pairs), over all processes
    seq_len: int = 128
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    init_from: Optional[str] = None
    peak_flops_per_device: Optional[float] = None
    progress_bar: bool = True
    tensorboard: bool = True
    # resume on another process count although the data (data_shards = 0) then continues on other batches
    accept_new_data_order: bool = False
    # the step's batch in this many micro-batches (gradients added in float32): memory, not math, for any objective
    grad_accum_steps: int = 1
    # only these parameters train (regular expressions searched in paths such as 'embed/embedding',
    # 'layers/mlp/wi/kernel'; empty: all), in the vocabulary tables only ids >= trainable_rows_from, for the first
    # trainable_steps steps (0: the whole run): the embeddings-first stage is ['embed', 'lm_head'] + the base
    # vocabulary size + N steps
    trainable: Sequence[str] = ()
    trainable_rows_from: int = 0
    trainable_steps: int = 0
    # a jax.profiler trace of steps start .. start+count-1 into WORKDIR/tensorboard/plugins/profile/ (TensorBoard's
    # profile tab, XProf); start 0: the third step this run takes (past the compile); only process 0 traces unless
    # profile_all_processes
    profile_steps: Optional[Sequence[int]] = None
    profile_all_processes: bool = False

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "seq_len", "log_every", "checkpoint_every", "keep_checkpoints",
                     "grad_accum_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"TrainerConfig.{name} must be a positive integer, got {value!r}")
        for name in ("trainable_rows_from", "trainable_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"TrainerConfig.{name} must be a non-negative integer, got {value!r}")
        patterns = (self.trainable,) if isinstance(self.trainable, str) else self.trainable
        if not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"TrainerConfig.trainable must be a list of patterns (strings), got {self.trainable!r}")
        object.__setattr__(self, "trainable", tuple(patterns))
        TrainableSpec(self.trainable, self.trainable_rows_from, self.trainable_steps)  # raises on a bad pattern
        if self.profile_steps is not None:
            if isinstance(self.profile_steps, (str, bytes)) or not isinstance(self.profile_steps, Sequence):
                raise ConfigError(f"TrainerConfig.profile_steps must be (start >= 0, count >= 1), got "
                                  f"{self.profile_steps!r}")
            steps = tuple(self.profile_steps)
            if (len(steps) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in steps) or steps[0] < 0
                    or steps[1] < 1):
                raise ConfigError(f"TrainerConfig.profile_steps must be (start >= 0, count >= 1), got {self.profile_steps!r}")
            if steps[0] > self.num_steps:
                raise ConfigError(f"TrainerConfig.profile_steps starts at step {steps[0]}, after the run's last step "
                                  f"(TrainerConfig.num_steps = {self.num_steps}): nothing would be traced")
            object.__setattr__(self, "profile_steps", steps)

    @property
    def trainable_spec(self) -> TrainableSpec:
        return TrainableSpec(self.trainable, self.trainable_rows_from, self.trainable_steps)


@dataclasses.dataclass
class Experiment:
    """Everything one run needs; built at the edge (gin) and passed in whole."""

    model: ModelConfig
    optimizer: OptimizerConfig
    partitioning: PartitioningConfig
    trainer: TrainerConfig
    data: DataSource  # gin: experiment.data
    objective: Objective = LmObjective()  # gin: experiment.objective = 'name' (+ that objective's config)
    watch: HeldoutWatch = HeldoutWatch()  # held-out bits/byte per language while training, and the guard
    checkpoint: CheckpointConfig = CheckpointConfig()  # emergency (multi-tier) checkpoints

    def __post_init__(self):
        accum = self.trainer.grad_accum_steps
        if accum > 1 and self.trainer.batch_size % accum:
            raise ConfigError(f"TrainerConfig.batch_size={self.trainer.batch_size} is not divisible by "
                              f"TrainerConfig.grad_accum_steps={accum}")


__all__ = ["Experiment", "TrainerConfig"]
