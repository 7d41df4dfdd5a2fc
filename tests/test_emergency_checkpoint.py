"""Emergency checkpoints' settings and their one-line errors (the two-slice SIGKILL test is in test_multiprocess)."""

import pytest

from allam_jax.core.errors import CheckpointError, ConfigError
from allam_jax.checkpoint.emergency import (DATA_POSITION_BYTES, CheckpointConfig, decode_data_position,
                                                  encode_data_position)


def test_the_data_position_round_trips_through_its_byte_array():
    state = {"rows_taken": 123456, "shards": 64, "seed": 7, "epoch": {"en": 2, "ar": 3}, "text": "عربي"}
    array = encode_data_position(state)
    assert array.shape == (DATA_POSITION_BYTES,) and array.dtype.name == "uint8"
    assert decode_data_position(array) == state
    with pytest.raises(CheckpointError, match="more than the 8192 an emergency checkpoint holds"):
        encode_data_position({"x": "a" * DATA_POSITION_BYTES})


def test_settings_are_checked_when_the_config_is_built():
    with pytest.raises(ConfigError, match="needs CheckpointConfig.local_dir"):
        CheckpointConfig(emergency=True)
    with pytest.raises(ConfigError, match="CheckpointConfig.local_every must be a positive integer, got 0"):
        CheckpointConfig(emergency=True, local_dir="/tmp/x", local_every=0)


def test_emergency_checkpoints_need_two_replicas(tmp_path):
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from allam_jax.checkpoint.emergency import EmergencyCheckpointer

    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    config = CheckpointConfig(emergency=True, local_dir=str(tmp_path / "local"))
    with pytest.raises(ConfigError, match=r"needs at least two replicas on the mesh's data axis .* got data = 1"):
        EmergencyCheckpointer(str(tmp_path / "w"), config, mesh, None, save_every=5, keep=2)


@pytest.mark.tpu
def test_a_workdir_keeps_the_kind_of_checkpoints_it_started_with(tmp_path):
    """Emergency checkpoints refuse a workdir of regular ones (a step with a 'data' item) and the reverse (steps of
    one 'default' item), each in one line, before anything is read or written (a mesh of two compile-only TPU slices
    stands in for a run's: the refusal comes before Orbax touches a device)."""
    from allam_jax.aot.topology import resolve_topology
    from allam_jax.core.partitioning import PartitioningConfig, create_mesh
    from allam_jax.checkpoint.regular import Checkpointer
    from allam_jax.checkpoint.emergency import EmergencyCheckpointer

    regular = tmp_path / "regular" / "checkpoints"
    (regular / "2" / "state").mkdir(parents=True)
    (regular / "2" / "data").mkdir()
    mesh = create_mesh(PartitioningConfig(), resolve_topology("v5p-8", 2).devices)
    config = CheckpointConfig(emergency=True, local_dir=str(tmp_path / "local"))
    with pytest.raises(CheckpointError, match=r"holds regular checkpoints \(step 2 has a 'data' item\)") as e:
        EmergencyCheckpointer(str(regular), config, mesh, None, save_every=5, keep=2)
    assert "\n" not in str(e.value)
    emergency = tmp_path / "emergency" / "checkpoints"
    (emergency / "3" / "default").mkdir(parents=True)  # the layout Orbax's emergency manager writes
    with pytest.raises(CheckpointError, match="holds emergency checkpoints"):
        Checkpointer(str(emergency), save_every=5).restore_latest(None)
    assert sorted(p.name for p in emergency.iterdir()) == ["3"]  # nothing moved aside
