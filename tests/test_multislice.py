"""Several slices joined over the data-centre network: the hybrid mesh, what crosses DCN in a compiled program
(the TPU compiler's MegaScale sends), and ``allam compile --num_slices``."""

import dataclasses
import json

import numpy as np
import pytest

from allam_jax.aot.hlo_stats import dcn_transfers
from allam_jax.aot.step_time import Interconnect, dcn_collectives, dcn_seconds
from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import PartitioningConfig, create_mesh, slices_of
from helpers import allam


@dataclasses.dataclass(frozen=True)
class _Device:  # what slices_of reads of a device
    id: int
    process_index: int
    slice_index: object = None


def test_processes_form_slices_when_devices_carry_no_slice_index():
    devices = [_Device(i, i // 2) for i in range(8)]  # 4 processes of 2 devices
    groups = slices_of(devices, num_slices=2)
    assert [[d.id for d in g] for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [[d.id for d in g] for g in slices_of(devices)] == [list(range(8))]
    with pytest.raises(ConfigError, match="num_slices = 3 does not divide the 4 processes"):
        slices_of(devices, num_slices=3)
    tpu_like = [_Device(i, 0, i // 4) for i in range(8)]
    with pytest.raises(ConfigError, match="num_slices = 4, but the devices say they are on 2 slices"):
        slices_of(tpu_like, num_slices=4)


def _tpu_devices(slices: int):
    from allam_jax.aot.topology import resolve_topology

    return resolve_topology("v5p-8", slices).devices


@pytest.mark.tpu
def test_slices_line_up_on_the_dcn_axes_and_each_keeps_its_ici_mesh():
    devices = _tpu_devices(4)  # 4 slices of 2x2x1 chips
    mesh = create_mesh(PartitioningConfig(), devices)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 4, "tensor": 1}
    grid = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (grid == np.arange(4)[:, None, None]).all()  # each data row is one slice, in order
    one_slice = create_mesh(PartitioningConfig(), [d for d in devices if d.slice_index == 0])
    assert [d.id for d in mesh.devices[0].flat] == [d.id for d in one_slice.devices.flat]

    mesh = create_mesh(PartitioningConfig(mesh_shape=(1, 2, 2), dcn_mesh_shape=(2, 2, 1)), devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 2}
    grid = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (grid[:, :2] == grid[:, :1]).all() and (grid[:, 2:] != grid[:, :1]).all()  # fsdp: 2 slices x 2 chips
    assert set(np.unique(grid[:, :, 0] == grid[:, :, 1])) == {True}  # tensor stays inside a slice


@pytest.mark.tpu
@pytest.mark.parametrize("config,fragment", [
    (dict(dcn_mesh_shape=(3, 1, 1)), "dcn_mesh_shape (3, 1, 1) does not multiply to the 2 slice(s) of this run "
                                     "(mesh_shape inside each slice: (1, 4, 1))"),
    (dict(mesh_shape=(1, 8, 1)), "mesh_shape (1, 8, 1) (data, fsdp, tensor) needs 8 devices, but there are 4 per slice"),
])
def test_meshes_that_do_not_fit_the_slices_name_both_shapes(config, fragment):
    with pytest.raises(ConfigError) as e:
        create_mesh(PartitioningConfig(**config), _tpu_devices(2))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_tensor_parallelism_across_dcn_is_refused():
    with pytest.raises(ConfigError, match=r"dcn_mesh_shape \(1, 1, 2\) asks for tensor parallelism across slices "
                                          r"\(mesh_shape inside a slice: \(1, -1, 1\)\)"):
        PartitioningConfig(dcn_mesh_shape=(1, 1, 2))


_HLO = """
HloModule m

%body (p: (s32[], f32[256])) -> (s32[], f32[256]) {
  %p = (s32[], f32[256]{0}) parameter(0)
  %g = f32[256]{0} get-tuple-element(%p), index=1
  %after-all.1 = token[] after-all()
  %send.1 = (f32[256]{0}, u32[], token[]) send(%g, %after-all.1), channel_id=1, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-reduce.1_0",_xla_megascale_reduce_operation="SUM",_xla_megascale_target="{1,2,3,4}x{0:3}",_xla_megascale_transfer_type="ALL_REDUCE"}
  %recv.1 = (f32[256]{0}, u32[], token[]) recv(%after-all.1), channel_id=1, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-reduce.1_0"}
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], f32[256]{0}) tuple(%i, %g)
}

%cond (c: (s32[], f32[256])) -> pred[] {
  %c = (s32[], f32[256]{0}) parameter(0)
  %n = s32[] get-tuple-element(%c), index=0
  %k = s32[] constant(3)
  ROOT %lt = pred[] compare(%n, %k), direction=LT
}

ENTRY %main (x: f32[256]) -> f32[512] {
  %x = f32[256]{0} parameter(0)
  %z = s32[] constant(0)
  %init = (s32[], f32[256]{0}) tuple(%z, %x)
  %w = (s32[], f32[256]{0}) while(%init), condition=%cond, body=%body
  %after-all.2 = token[] after-all()
  %send.2 = (bf16[256]{0}, u32[], token[]) send(%x, %after-all.2), channel_id=2, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-gather.2_0",_xla_megascale_target={{100000,200000},{100001,200001}},_xla_megascale_transfer_type="ALL_GATHER"}
  %recv.2 = (bf16[512]{0}, u32[], token[]) recv(%after-all.2), channel_id=2, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-gather.2_0"}
  %send.3 = (f32[8]{0}, u32[], token[]) send(%x, %after-all.2), channel_id=3, is_host_transfer=true
  ROOT %out = f32[512]{0} broadcast(%x), dimensions={}
}
"""


def test_dcn_transfers_are_the_megascale_sends_with_their_loop_counts():
    got = sorted(dcn_transfers(_HLO), key=lambda t: t["kind"])
    assert got == [{"kind": "all-gather", "bytes": 512 * 2, "slices": 2, "times": 1},  # the recv's (gathered) size
                   {"kind": "all-reduce", "bytes": 256 * 4, "slices": 4, "times": 3}]  # a loop body of 3 trips
    net = Interconnect([(0, 0, 0)], (1, 1, 1), (False, False, False), 1e11, dcn_bandwidth=5e9)
    table = dcn_collectives(got, net)
    # an all-reduce among s slices moves 2 (s-1)/s of its bytes over each chip's DCN link; a gather (s-1)/s
    assert table["all-reduce"]["seconds"] == pytest.approx(3 * 2 * 1024 * 3 / 4 / 5e9)
    assert table["all-gather"]["seconds"] == pytest.approx(1024 * 1 / 2 / 5e9)
    assert dcn_seconds("all-reduce", 1e9, 1, net) == 0.0
    assert table["all-reduce"]["count"] == 3 and table["all-reduce"]["bytes"] == 3 * 1024


_WIDE = ("--gin_bindings", "ModelConfig.d_model = 256", "--gin_bindings", "ModelConfig.mlp_dim = 512",
         "--gin_bindings", "ModelConfig.num_heads = 4", "--gin_bindings", "ModelConfig.num_kv_heads = 2",
         "--gin_bindings", "ModelConfig.vocab_size = 512")


@pytest.mark.slow
@pytest.mark.tpu
def test_compile_two_slices_reports_what_crosses_dcn():
    """A small config on two v5p-8 slices: the slices are the data axis, so the gradients (and nothing that
    gathers weights) cross DCN, once per step, each chip its fsdp shard of them; --num_slices 2 = v5p-8x2. Widths
    are multiples of 128 so that TPU tiles add no padding to the bytes."""
    r = allam("compile", "--gin_file", "runs/tiny_cpu.gin", "--topology", "v5p-8", "--num_slices", "2", "--json",
              *_WIDE)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["num_slices"] == 2 and report["mesh_shape"] == {"data": 2, "fsdp": 4, "tensor": 1}
    dcn = report["dcn_collectives"]
    assert set(dcn) == {"all-reduce"}, dcn
    params = report["params"]
    # gradients cross as fsdp shards (4 chips per slice) in bfloat16, not whole: below half the whole gradient
    # (measured: 1.19 x params x 2 / 4 per chip; XLA reduces some of this small model's gradients over 2 chips)
    assert params * 2 / 4 <= dcn["all-reduce"]["bytes"] < params * 2 / 2
    assert dcn["all-reduce"]["seconds"] > 0 and report["estimate"]["dcn_seconds"] > 0
    # the table, from the same report (one compile): what --topology=v5p-8x2 prints
    from allam_jax.aot.dry_run import CompileReport
    from allam_jax.aot.table import format_report

    fields = {f.name for f in dataclasses.fields(CompileReport)}
    table = format_report(CompileReport(**{k: v for k, v in report.items() if k in fields}))
    assert "2 slices joined over DCN" in table
    line = next(ln for ln in table.splitlines() if ln.strip().startswith("across DCN"))
    assert line.split()[2:4] == ["all-reduce", f"x{int(dcn['all-reduce']['count'])}"]
    from allam_jax.aot.topology import split_slices

    assert split_slices("v5p-8x2") == ("v5p-8", 2) and split_slices("v5p-8", 2) == ("v5p-8", 2)
    with pytest.raises(ConfigError, match="--topology=v5p-8x2 names 2 slices but --num_slices=3"):
        split_slices("v5p-8x2", 3)


@pytest.mark.slow
@pytest.mark.tpu
def test_the_7b_multislice_config_fits_sends_gradient_shards_over_dcn_and_its_header_is_its_estimate():
    """runs/allam_7b_stage1_en_4slices.gin on four v5p-128 slices: it fits; only gradients cross DCN, each chip's
    1/64 shard of them once per micro-batch (the LM head's once per step: +0.2%); the days to 5.2T tokens in its
    header follow from this compile's estimate."""
    import re
    from pathlib import Path

    r = allam("compile", "--gin_file", "runs/allam_7b_stage1_en_4slices.gin", "--topology", "v5p-128x4", "--json",
              timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["fits"] and report["num_slices"] == 4
    assert report["mesh_shape"] == {"data": 4, "fsdp": 64, "tensor": 1}
    dcn = report["dcn_collectives"]
    assert set(dcn) == {"all-reduce"}, dcn
    shards = report["grad_accum_steps"] * report["params"] * 2 / 64  # bf16 gradient shards per micro-batch
    assert shards <= dcn["all-reduce"]["bytes"] <= 1.15 * shards, (dcn, shards)
    header = (Path(__file__).parents[1] / "gin_configs" / "runs" / "allam_7b_stage1_en_4slices.gin").read_text()
    step = float(re.search(r"estimated ([\d.]+) s per step", header).group(1))
    days = float(re.search(r"x [\d.]+ s = ([\d.]+) days", header).group(1))
    assert step == pytest.approx(report["estimate"]["step_seconds"], rel=0.02)
    tokens = report["rows"] * report["seq_len"]
    assert days == pytest.approx(5.2e12 / tokens * report["estimate"]["step_seconds"] / 86400, rel=0.02)


def test_the_7b_stage_2_config_continues_on_the_same_slices():
    import gin

    from allam_jax import gin_setup

    gin_setup.parse(["runs/allam_7b_stage2_mix_4slices.gin"], [])
    try:
        assert tuple(gin.query_parameter("PartitioningConfig.dcn_mesh_shape")) == (4, 1, 1)
        assert gin.query_parameter("TrainerConfig.batch_size") == 2048
        assert gin.query_parameter("TrainerConfig.num_steps") * 2048 * 4096 == pytest.approx(1.2e12, rel=0.001)
        assert gin.query_parameter("TrainerConfig.init_from") == "allam7b_stage1_params"
    finally:
        gin.clear_config()
