"""Emergency checkpoints' settings and their one-line errors (the two-slice SIGKILL test is in test_multiprocess)."""

import pytest

from allam_jax.core.errors import CheckpointError, ConfigError
from allam_jax.train.emergency_checkpoint import (DATA_POSITION_BYTES, CheckpointConfig, decode_data_position,
                                                  encode_data_position)
from helpers import allam, corpus_files, write_gin


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


@pytest.mark.slow
def test_emergency_checkpoints_need_two_replicas_and_a_workdir_keeps_its_kind(tmp_path, monkeypatch):
    gin = write_gin(tmp_path / "g.gin", corpus_files(tmp_path / "c", en_docs=20, ar_docs=40),
                    **{"TrainerConfig.num_steps": 2, "TrainerConfig.checkpoint_every": 2})
    emergency = ("--gin_bindings=CheckpointConfig.emergency = True",
                 f"--gin_bindings=CheckpointConfig.local_dir = '{tmp_path / 'local'}'")
    r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / 'w'}", *emergency)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "needs at least two replicas on the mesh's data axis" in lines[-1], r.stderr[-2000:]
    assert not (tmp_path / "w" / "checkpoints").exists() or not any((tmp_path / "w" / "checkpoints").iterdir())
    r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 0, r.stderr[-2000:]
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / 'w'}", *emergency,
              "--gin_bindings=PartitioningConfig.mesh_shape = (2, 1, 1)")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and "holds regular checkpoints (step 2 has a 'data' item)" in lines[-1], r.stderr[-2000:]
