"""Emergency (multi-tier) checkpoints: frequent saves to each host's own disk, rarer ones to the bucket.

At pod scale a slice is lost every few days, and a trip to Cloud Storage costs minutes each way. Orbax's
``emergency.CheckpointManager`` keeps both tiers over the mesh's ``data`` axis (the slices, when there are several):
the first replica writes the persistent checkpoint (``WORKDIR/checkpoints``, every ``TrainerConfig.checkpoint_every``
steps), every other replica writes its shards to its hosts' local disks (``CheckpointConfig.local_dir``, every
``local_every`` steps). A restart restores the newest step that some replica holds complete on all its hosts and
broadcasts it to the others, so a host that lost its disk is refilled from a peer; with no complete local copy
it restores the newest persistent step. Needs a mesh with ``data`` > 1 (at least two replicas).

Orbax's manager keeps one pytree per step, so the data position travels inside it (``data_position``: the JSON of
the iterator's state, as bytes). A workdir keeps the kind of checkpoints it started with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from etils import epath
from jax._src import mesh as mesh_lib
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from allam_jax.core.errors import CheckpointError, ConfigError
from allam_jax.core.paths import as_path
from allam_jax.train.state import TrainState

log = logging.getLogger(__name__)

DATA_POSITION_BYTES = 8192
_DATA_KEY = "data_position"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """``emergency``: Orbax's emergency checkpoints (local every ``local_every`` steps into ``local_dir`` on each
    host, keeping ``local_keep``; persistent as usual). ``local_dir`` may hold ``{process}`` (this process's index),
    for several processes sharing one machine's disk."""

    emergency: bool = False
    local_dir: Optional[str] = None
    local_every: int = 10
    local_keep: int = 2

    def __post_init__(self):
        if self.emergency and not self.local_dir:
            raise ConfigError("CheckpointConfig.emergency = True needs CheckpointConfig.local_dir (a directory on each "
                              "host's own disk, e.g. '/dev/shm/allam-ckpt' or '/mnt/localssd/ckpt')")
        for name in ("local_every", "local_keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CheckpointConfig.{name} must be a positive integer, got {value!r}")
        if self.local_dir is not None:
            self.local_path(0)

    def local_path(self, process: int) -> str:
        """``local_dir`` with ``{process}`` filled in; any other placeholder or a stray brace is a ConfigError."""
        if not isinstance(self.local_dir, str) or not self.local_dir:
            raise ConfigError(f"CheckpointConfig.local_dir must be a directory path, got {self.local_dir!r}")
        try:
            return self.local_dir.format(process=process)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"CheckpointConfig.local_dir = {self.local_dir!r}: only {{process}} can be filled in "
                              f"(this process's index), not {e}; double a literal brace ({{{{ or }}}})") from None


def encode_data_position(data_state: dict) -> np.ndarray:
    raw = json.dumps(data_state, sort_keys=True).encode()
    if len(raw) > DATA_POSITION_BYTES:
        raise CheckpointError(f"the data position is {len(raw)} bytes of JSON, more than the {DATA_POSITION_BYTES} an "
                              "emergency checkpoint holds")
    return np.frombuffer(raw.ljust(DATA_POSITION_BYTES, b"\0"), np.uint8).copy()


def decode_data_position(array: Any) -> dict:
    return json.loads(bytes(np.asarray(array, np.uint8)).rstrip(b"\0").decode())


@contextlib.contextmanager
def _outside_mesh():
    """Orbax's emergency manager runs its own cross-host programs (shard_map over a (host, device) mesh), which
    the run's ambient mesh (``Partitioner.activate``) would contradict."""
    with jax.set_mesh(mesh_lib.empty_concrete_mesh):
        yield


def _initialize_orbax_multihost() -> None:
    """Orbax's emergency manager maps JAX's process and device ids through the distributed client's key-value
    store (filled once per process, after ``jax.distributed.initialize``) and reads absl flags."""
    if not flags.FLAGS.is_parsed():  # the manager reads absl flags of its own (their defaults serve)
        flags.FLAGS.mark_as_parsed()
    if jax.process_count() == 1:
        return
    from orbax.checkpoint._src.multihost import multihost

    if getattr(multihost, "_RUNTIME_TO_DISTRIBUTED_ID", None) is None:
        multihost.initialize_runtime_to_distributed_ids()
    multihost.initialize_distributed_to_device_ids()


def _fields(state: Any) -> dict[str, Any]:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState) if getattr(state, f.name) is not None}


class EmergencyCheckpointer:
    """The :class:`~allam_jax.checkpoint.regular.Checkpointer` interface over Orbax's emergency manager."""

    def __init__(self, directory: str, config: CheckpointConfig, mesh: Mesh, abstract_state: TrainState,
                 save_every: int, keep: int, async_save: bool = True):
        from orbax.checkpoint.experimental.emergency import checkpoint_manager as emergency

        if mesh.shape.get("data", 1) < 2:
            raise ConfigError(f"CheckpointConfig.emergency = True needs at least two replicas on the mesh's data axis "
                              f"(the slices, or PartitioningConfig.mesh_shape's first entry), got data = "
                              f"{mesh.shape.get('data', 1)}")
        self.directory = as_path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._refuse_regular_checkpoints()
        self.config = config
        self.local_every = config.local_every
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self._abstract = self._tree_abstract(abstract_state)
        local = epath.Path(config.local_path(jax.process_index()))
        local.mkdir(parents=True, exist_ok=True)
        options = emergency.CheckpointManagerOptions(
            local=emergency.LocalCheckpointOptions(save_interval_steps=config.local_every, max_to_keep=config.local_keep),
            persistent=emergency.PersistentCheckpointOptions(save_interval_steps=save_every, max_to_keep=keep),
            enable_async_checkpointing=async_save)
        _initialize_orbax_multihost()
        with _outside_mesh():
            self.manager = emergency.CheckpointManager(local, self.directory, mesh, self._abstract, options=options)
        self.local_directory = local

    def _tree_abstract(self, abstract_state: TrainState) -> dict[str, Any]:
        tree = _fields(abstract_state)
        tree[_DATA_KEY] = jax.ShapeDtypeStruct((DATA_POSITION_BYTES,), jnp.uint8, sharding=self._replicated)
        return tree

    def _refuse_regular_checkpoints(self) -> None:
        regular = [p for p in self.directory.iterdir() if p.name.isdigit() and (p / "data").exists()]
        if regular:
            raise CheckpointError(f"{self.directory} holds regular checkpoints (step {regular[0].name} has a 'data' "
                                  "item); a workdir keeps its kind: set CheckpointConfig.emergency = False, or start "
                                  "emergency checkpoints in a new workdir (TrainerConfig.init_from the old one)")

    def due(self, step: int) -> bool:
        """Whether ``step`` is a local save step (the loop then saves without forcing a persistent one)."""
        return step % self.local_every == 0

    def partial_steps(self) -> list[str]:
        return []

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        import orbax.checkpoint as ocp

        tree = _fields(state)
        tree[_DATA_KEY] = jax.device_put(encode_data_position(data_state), self._replicated)
        try:
            with _outside_mesh():
                return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree)), force=force)
        except Exception as e:  # noqa: BLE001 - OSError, tensorstore and orbax errors alike
            from allam_jax.checkpoint.regular import save_error_text

            raise CheckpointError(f"saving step {step} (emergency checkpoints: {self.directory}, local "
                                  f"{self.local_directory}) failed: {save_error_text(e)}") from None

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, dict, int]]:
        step = self.manager.latest_step()
        if step is None:
            return None
        with _outside_mesh():
            restored = self.manager.restore(step)
        tree = dict(restored["state"] if "state" in restored else restored)
        data_state = decode_data_position(jax.device_get(tree.pop(_DATA_KEY)))
        state = TrainState(**{f.name: tree.get(f.name) for f in dataclasses.fields(TrainState)})
        log.info("emergency checkpoints: restored step %d", step)
        return state, data_state, step

    def check_errors(self) -> None:
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"a background save to {self.directory} failed: {e}; stopped") from None

    def wait(self) -> None:
        with _outside_mesh():
            self.manager.wait_until_finished()
        self.check_errors()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            with _outside_mesh():
                self.manager.close()
