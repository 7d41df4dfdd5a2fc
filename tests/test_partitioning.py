import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from allam_jax.core import partitioning
from allam_jax.core.errors import ConfigError

HERE = Path(__file__).parent


def _run_sharded_check(*mode: str, timeout: int = 900) -> str:
    """tests/sharded_check.py in a subprocess with 8 fake CPU devices; returns its last stdout line."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, str(HERE / "sharded_check.py"), *mode], capture_output=True, text=True,
                         env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sharded_report():
    return json.loads(_run_sharded_check())


def _expected_spec(name, sizes):
    """The default rules, restated independently: which mesh axis shards each dimension."""
    layer = ["layers"] if "layers" in name else []
    if "embedding" in name:
        logical = ["vocab", "embed"]
    elif "lm_head" in name:
        logical = ["embed", "vocab"]
    elif "scale" in name:
        logical = layer + ["norm"]
    elif "'query'" in name:
        logical = layer + ["embed", "heads", "head_dim"]
    elif "'key'" in name or "'value'" in name:
        logical = layer + ["embed", "kv_heads", "head_dim"]
    elif "'out'" in name:
        logical = layer + ["heads", "head_dim", "embed"]
    elif "'down'" in name:
        logical = layer + ["mlp", "embed"]
    else:
        logical = layer + ["embed", "mlp"]
    rule = {"vocab": "tensor", "embed": "fsdp", "heads": "tensor", "kv_heads": "tensor", "mlp": "tensor"}
    return [rule.get(a) for a in logical]


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["[8, 1, 1]", "[1, 8, 1]", "[2, 2, 2]", "[1, 2, 4]"])
def test_sharded_step_equals_single_device(sharded_report, mesh):
    r = sharded_report["meshes"][mesh]
    assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
    assert r["grad_norm"] == pytest.approx(r["ref_grad_norm"], rel=1e-4)
    assert r["max_rel_grad_diff"] < 1e-5
    # Adam's first step is about lr * sign(g): tiny gradients may flip, so parameters get a looser band.
    assert r["max_param_diff"] < 5e-5  # lr = 1e-3
    for name, spec in r["specs"].items():
        want = _expected_spec(name, r["mesh_axis_sizes"])
        got = (spec + [None] * len(want))[: len(want)]
        assert got == want, name


@pytest.mark.slow
def test_pallas_attention_under_shard_map_equals_single_device_reference():
    """attention_impl='pallas' (interpret mode) per shard on meshes with data, fsdp and tensor axes gives the
    single-device reference-attention loss and gradients."""
    report = json.loads(_run_sharded_check("pallas"))
    assert set(report["meshes"]) == {"[2, 2, 2]", "[1, 2, 4]"}
    for r in report["meshes"].values():
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
        assert r["max_rel_grad_diff"] < 1e-4


@pytest.mark.slow
def test_chunked_logits_sharded_match_one_device():
    """Chunked LM head + cross-entropy: left to the partitioner with a tensor axis, per batch shard (shard_map)
    on a data x fsdp mesh; both give the single-device unchunked loss and gradients."""
    report = json.loads(_run_sharded_check("chunked"))
    assert set(report["meshes"]) == {"[2, 2, 2]", "[1, 2, 4]", "[2, 4, 1]"}
    for r in report["meshes"].values():
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
        assert r["max_rel_grad_diff"] < 1e-4


@pytest.mark.slow
def test_cpu_bf16_matmuls_and_blockwise_attention_sharded_stay_as_close_to_float32_as_one_device():
    """bf16 compute with the CPU matmul path (custom gradient, forced transposes) and blockwise attention under
    (2, 2, 2), (1, 2, 4) and (2, 4, 1) meshes (the last runs the matmuls per batch shard under shard_map): same loss as one device, and gradients no further from the float32 model's
    than the single-device bf16 run is (bf16 rounding happens in a different order when sharded)."""
    report = json.loads(_run_sharded_check("bf16"))
    assert set(report["meshes"]) == {"[2, 2, 2]", "[1, 2, 4]", "[2, 4, 1]"}
    assert 0 < report["ref_vs_f32"] < 0.05
    for r in report["meshes"].values():
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-4)
        assert r["vs_f32"] < 2 * report["ref_vs_f32"] + 0.01


def test_mesh_shape_must_match_device_count():
    with pytest.raises(ConfigError, match="needs 8 devices, but there are 1"):
        partitioning.create_mesh(partitioning.PartitioningConfig(mesh_shape=(2, 2, 2)))
    with pytest.raises(ConfigError, match="mesh_shape"):
        partitioning.PartitioningConfig(mesh_shape=(1, -1, -1))
    with pytest.raises(ConfigError, match="unknown mesh axes"):
        partitioning.PartitioningConfig(logical_axis_rules=[("embed", "model")])


@pytest.mark.slow
def test_indivisible_dimension_names_the_parameter():
    """heads=8, kv_heads=4 cannot be split 8 ways over 'tensor': the error names the array."""
    msg = _run_sharded_check("indivisible", timeout=300)
    assert "dimension" in msg and "not divisible by mesh axes ('tensor',)" in msg and "kernel" in msg, msg
