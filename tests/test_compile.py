"""``allam compile``: slice names, HLO statistics, and dry runs of real configs for fake TPU topologies."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from allam_jax.aot.hlo_stats import collective_stats, largest_buffers
from allam_jax.aot.topology import resolve_topology, torus_shape
from allam_jax.core.errors import ConfigError
from helpers import allam

TINY: list[str] = []  # runs/tiny_cpu.gin as it is: its data files need not exist for a dry run


# Cloud TPU's published slice shapes (the user-facing name -> chip torus), written out by hand.
@pytest.mark.parametrize("chips,dims,shape", [
    (4, 3, (2, 2, 1)), (8, 3, (2, 2, 2)), (16, 3, (2, 2, 4)), (32, 3, (2, 4, 4)), (64, 3, (4, 4, 4)),
    (128, 3, (4, 4, 8)), (256, 3, (4, 8, 8)), (512, 3, (8, 8, 8)), (1024, 3, (8, 8, 16)),
    (4, 2, (2, 2)), (8, 2, (2, 4)), (16, 2, (4, 4)), (32, 2, (4, 8)), (64, 2, (8, 8)), (128, 2, (8, 16)),
    (256, 2, (16, 16)),
])
def test_slice_shapes_match_cloud_tpu(chips, dims, shape):
    assert torus_shape(chips, dims) == shape


@pytest.mark.tpu
@pytest.mark.parametrize("name,devices,kind", [
    ("v5p-128", 64, "TPU v5"), ("v4-16", 8, "TPU v4"), ("v5e-16", 16, "TPU v5 lite"),
    ("v5litepod-8", 8, "TPU v5 lite"), ("v6e-4", 4, "TPU v6 lite"), ("v5e:2x2", 4, "TPU v5 lite"),
])
def test_slice_names_give_compile_only_tpu_devices(name, devices, kind):
    topo = resolve_topology(name)
    assert topo.num_devices == devices and topo.platform == "tpu"
    assert topo.devices[0].device_kind == kind


@pytest.mark.parametrize("name,fragment", [
    ("v9-8", "v4-N, v5p-N"), ("tpu-8", "v4-N, v5p-N"), ("v5p-7", "not a multiple"), ("v5p-24", "power of two"),
    ("gpu:8", "cpu:N"),
])
def test_bad_topology_names_are_one_line_errors(name, fragment):
    with pytest.raises(ConfigError) as e:
        resolve_topology(name)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_tpu_topology_without_libtpu_says_how_to_install_it(monkeypatch):
    import allam_jax.aot.topology as topology

    monkeypatch.setattr(topology, "libtpu_installed", lambda: False)
    with pytest.raises(ConfigError) as e:
        resolve_topology("v5p-128")
    assert "pip install" in str(e.value) and "libtpu" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_compile_help_explains_every_flag():
    text = allam("compile", "--help").stdout
    for flag in ("--gin_file", "--gin_bindings", "--topology", "--step", "--json", "v5p-N", "cpu:N", "Exit 0"):
        assert flag in text, flag


_SYNTHETIC_HLO = """HloModule m

%body.1 (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p = (s32[], f32[8,16]) parameter(0)
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=1
  %ag = f32[32,16]{1,0} all-gather(%x), dimensions={0}
  %ar = bf16[4,4]{1,0} all-reduce(%y), to_apply=%add
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %x)
}

%cond.1 (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]) parameter(0)
  %c = s32[]{:T(128)} constant(40)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

ENTRY %main (a: f32[8,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %w = (s32[], f32[8,16]) while(%t0), condition=%cond.1, body=%body.1
  %w2 = (s32[], f32[8,16]) while(%t1), condition=%cond.1, body=%body.1, backend_config={"known_trip_count":{"n":"3"}}
  %rs = f32[2,16]{1,0} reduce-scatter(%a), dimensions={0}, to_apply=%add
  %cp = (f32[8,16], f32[8,16], u32[], u32[]) collective-permute-start(%a), source_target_pairs={{0,1}}
  ROOT %r = f32[8,16]{1,0} add(%a, %a)
}
"""


def test_collective_stats_count_loop_bodies_times_their_trip_counts():
    stats = collective_stats(_SYNTHETIC_HLO)
    # the body runs 40 (bound of its condition) + 3 (known trip count) = 43 times per step
    assert stats["all-gather"] == {"count": 43, "bytes": 43 * 32 * 16 * 4}
    assert stats["all-reduce"] == {"count": 43, "bytes": 43 * 4 * 4 * 2}
    assert stats["reduce-scatter"] == {"count": 1, "bytes": 2 * 16 * 4}
    assert stats["collective-permute"] == {"count": 1, "bytes": 8 * 16 * 4}  # async start: its largest operand


_WINDOWED_LOOP_HLO = """HloModule m

%body.2 (p: (u32[], f32[8,16])) -> (u32[], f32[8,16]) {
  %p = (u32[], f32[8,16]) parameter(0)
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=1
  %cp = f32[8,16]{1,0} collective-permute(%x), source_target_pairs={{0,1},{1,0}}
  %i = u32[]{:T(128)} get-tuple-element(%p), index=0
  %two = u32[]{:T(128)} constant(2)
  %next = u32[]{:T(128)} add(%i, %two)
  ROOT %t = (u32[], f32[8,16]) tuple(%next, %cp)
}

%cond.2 (p: (u32[], f32[8,16])) -> pred[] {
  %p = (u32[], f32[8,16]) parameter(0)
  %c = u32[]{:T(128)} constant(8)
  %i = u32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c), direction=LT
}

ENTRY %main (a: f32[8,16]) -> (u32[], f32[8,16]) {
  %a = f32[8,16]{1,0} parameter(0)
  %one = u32[]{:T(128)} constant(1)
  %t0 = (u32[], f32[8,16]) tuple(%one, %a)
  ROOT %w = (u32[], f32[8,16]) while(%t0), condition=%cond.2, body=%body.2
}
"""


def test_a_loop_counting_in_steps_of_two_from_one_runs_ceil_seven_halves_times():
    """What the TPU compiler leaves of a windowed einsum (a collective matmul over 8 shards, unrolled twice): the
    counter starts at 1 and adds 2 until 8, so the body runs 4 times, not 8 (the bound alone)."""
    stats = collective_stats(_WINDOWED_LOOP_HLO)
    assert stats["collective-permute"]["count"] == 4


def test_largest_buffers_skip_aliases_and_name_the_op():
    top = largest_buffers(_SYNTHETIC_HLO, top=2)
    assert [b["name"] for b in top] == ["ag", "r"]
    assert top[0]["shape"] == "f32[32,16]" and top[0]["bytes"] == 32 * 16 * 4


@pytest.mark.tpu
def test_collective_stats_of_a_program_compiled_for_tpu():
    """A 5-step scan whose every step contracts a sharded axis and then applies tanh (so XLA cannot move the
    sum out of the loop), compiled by the TPU compiler: 5 all-reduces of a float32 [8, 128] per run."""
    devices = resolve_topology("v5e:2x2").devices
    mesh = Mesh(np.asarray(devices), ("x",))

    def f(w, c):
        def body(c, _):
            return jnp.tanh(jnp.einsum("ik,kj->ij", c, w)), None

        return jax.lax.scan(body, c, None, length=5)[0]

    w = jax.ShapeDtypeStruct((128, 128), jnp.float32, sharding=NamedSharding(mesh, P("x", None)))
    c = jax.ShapeDtypeStruct((8, 128), jnp.float32, sharding=NamedSharding(mesh, P()))
    hlo = jax.jit(f, out_shardings=NamedSharding(mesh, P())).lower(w, c).compile().as_text()
    stats = collective_stats(hlo)
    assert stats["all-reduce"] == {"count": 5, "bytes": 5 * 8 * 128 * 4}, stats


# ------------------------------------------------------------------ the command


@pytest.mark.slow
@pytest.mark.tpu
def test_compile_tiny_config_for_tpu_prints_a_table_that_fits(tmp_path):
    r = allam("compile", "--gin_file", "runs/tiny_cpu.gin", "--topology", "v5e:2x2", *TINY,
              "--gin_bindings", "ModelConfig.attention_impl = 'pallas'", "--hlo_out", str(tmp_path / "hlo"))
    assert r.returncode == 0, r.stderr[-3000:]
    for fragment in ("v5e:2x2", "4 devices", "fits", "model FLOPs", "step time", "attention pallas", "mesh",
                     "ESTIMATED (not measured)", "MFU (PaLM count)", "(causal count)", "calibration",
                     "exposed communication", "leaves out", "at 100% MFU"):
        assert fragment in r.stdout, r.stdout
    # --hlo_out keeps what the estimate read: priced again from the files, the step time is the table's
    from allam_jax.aot.step_time import Interconnect, estimate_step_time
    from allam_jax.aot.table import seconds_text

    topology = resolve_topology("v5e:2x2")
    devices = json.loads((tmp_path / "hlo" / "devices.json").read_text())
    net = Interconnect.from_coords([d[:3] for d in devices], topology.wrap, topology.chip, [d[3] for d in devices])
    est = estimate_step_time((tmp_path / "hlo" / "hlo.txt").read_text(), topology.chip, net)
    assert len(devices) == 4 and f"step time      {seconds_text(est.step_seconds)} ESTIMATED" in r.stdout


@pytest.mark.slow
@pytest.mark.tpu
def test_compile_search_prints_the_ranked_variants_and_refuses_other_steps():
    r = allam("compile", "--gin_file", "runs/tiny_cpu.gin", "--topology", "v5e:2x2", *TINY, "--search",
              "--search_remat", "full", "--search_grad_accum", "1", "2", "--search_logits_chunk", "0", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout)
    # one variant: the line stops at its first fit, one micro-batch
    assert [c["bindings"][-1] for c in found] == ["TrainerConfig.grad_accum_steps = 1"]
    assert found[0]["within_budget"] and 0 < found[0]["report"]["estimated_mfu"] < 1
    assert "[1/2" in r.stderr  # progress, a line per compile
    bad = allam("compile", "--gin_file", "runs/tiny_cpu.gin", "--topology", "v5e:2x2", "--search", "--step", "eval")
    assert bad.returncode == 2 and "--search ranks train steps" in bad.stderr


@pytest.mark.slow
@pytest.mark.tpu
def test_compile_json_for_each_step():
    reports = {}
    for step in ("train", "eval", "decode"):
        r = allam("compile", "--gin_file", "runs/tiny_cpu.gin", "--topology", "v5e-4", "--step", step, "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        report = reports[step] = json.loads(r.stdout)
        assert report["step"] == step and report["fits"] and report["num_devices"] == 4
        assert 0 < report["required_bytes"] < report["hbm_bytes"]
        assert report["argument_bytes"] > 0 and report["temp_bytes"] >= 0
        assert report["rows"] == 8 and report["seq_len"] == 256  # runs/tiny_cpu.gin's batch
    # training costs 3 forward passes; decoding makes one token per row instead of seq_len
    assert reports["train"]["model_flops"] == pytest.approx(3 * reports["eval"]["model_flops"])
    assert reports["decode"]["model_flops"] * 256 == pytest.approx(reports["eval"]["model_flops"])
    # the decode step holds a KV cache: 2 x layers x rows x seq x kv_heads x head_dim, bf16 on TPU
    cache = 2 * 2 * 8 * 256 * 4 * 8 * 2
    assert reports["decode"]["argument_bytes"] >= cache / 4


@pytest.mark.slow
@pytest.mark.tpu
def test_compile_reports_a_config_that_does_not_fit_with_exit_3():
    """1B parameters, 24 rows of 2048 tokens per chip and no remat on a v5p-8 (95 GiB chips): ~123 GiB."""
    r = allam("compile", "--gin_file", "runs/tiny_cpu.gin", "--gin_file", "models/allam_1b.gin", "--topology",
              "v5p-8", "--gin_bindings", "ModelConfig.max_seq_len = 2048", "--gin_bindings", "TrainerConfig.seq_len = 2048",
              "--gin_bindings", "TrainerConfig.batch_size = 96", "--gin_bindings", "ModelConfig.remat_policy = 'none'",
              "--gin_bindings", "ModelConfig.compute_dtype = 'bfloat16'", timeout=900)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "DOES NOT FIT" in r.stdout and "over by" in r.stdout
    assert "TrainerConfig.grad_accum_steps" in r.stdout
    # the largest arrays are the float32 logits of the 24 local rows: [24, 2048, 64000]
    listing = r.stdout.split("Largest arrays per device")[1]
    assert "f32[24,2048,64000]" in listing.splitlines()[1], listing


@pytest.mark.slow
@pytest.mark.parametrize("args,fragments", [
    (["--topology", "v9-8"], ["unknown", "v5p-N", "cpu:N"]),
    (["--topology", "cpu:4", "--gin_bindings", "PartitioningConfig.mesh_shape = (1, 1, 4)",
      "--gin_bindings", "ModelConfig.num_heads = 6", "--gin_bindings", "ModelConfig.num_kv_heads = 6",
      "--gin_bindings", "ModelConfig.d_model = 48"],
     ["ModelConfig.num_heads=6", "tensor", "4"]),
    (["--topology", "cpu:4", "--gin_bindings", "PartitioningConfig.mesh_shape = (1, 4, 1)",
      "--gin_bindings", "ModelConfig.d_model = 66", "--gin_bindings", "ModelConfig.head_dim = 16"],
     ["size 66", "fsdp", "size 4"]),
])
def test_compile_bad_input_is_one_line_exit_2(args, fragments):
    r = allam("compile", "--gin_file", "runs/tiny_cpu.gin", *TINY, *args)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("allam: error:")]
    assert len(lines) == 1, r.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_compile_on_fake_cpu_devices():
    r = allam("compile", "--gin_file", "runs/tiny_cpu.gin", "--topology", "cpu:4", "--json", *TINY,
              "--gin_bindings", "PartitioningConfig.mesh_shape = (2, 2, 1)")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["num_devices"] == 4 and report["mesh_shape"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert report["peak_flops_per_device"] is None and report["fits"]


@pytest.mark.slow
@pytest.mark.tpu
def test_an_advertised_run_config_fits_its_slice_dpo_70b_in_micro_batches():
    """One advertised config proves the path (docs/performance.md's table lists the rest): the 70B DPO step (policy,
    frozen reference, 1024 rows of 2048 tokens on a v5p-512) fits in 2 micro-batches (in one it needs ~112 GiB
    of 95), and the table says how many."""
    r = allam("compile", "--gin_file", "runs/dpo_llama2_70b_ar.gin", "--topology", "v5p-512", timeout=1200)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    step = next(line for line in r.stdout.splitlines() if line.startswith("step"))
    assert "1024 rows x 2048 tokens in 2 micro-batches" in step  # the config's global batch: 2M tokens
    assert "attention pallas, bfloat16" in step
    memory = next(line for line in r.stdout.splitlines() if line.startswith("memory"))
    assert memory.endswith("free)") and ": fits" in memory
    assert "69,500,936,192" in r.stdout


@pytest.mark.slow
def test_compile_lowers_the_very_programs_that_train_and_eval_run():
    """``allam compile --step=train|eval`` lowers the train program's and the scorer's own jitted functions
    (``Partitioner.jit``): the lowered programs' text is identical."""
    from allam_jax.aot.dry_run import lower_step
    from allam_jax.core.partitioning import PartitionedFunction, Partitioner
    from allam_jax.eval.scorer import LoglikelihoodScorer
    from allam_jax.train.program import build_train_program
    from helpers import experiment

    exp = experiment([], model={"max_seq_len": 64}, seq_len=64, batch_size=4)
    partitioner = Partitioner.create(exp.partitioning)
    program = build_train_program(exp, partitioner)
    params = program.abstract_state.params
    scorer = LoglikelihoodScorer(exp.model, params, lambda s: [], bos=1, batch_size=4, partitioner=partitioner)
    assert isinstance(scorer.score_fn, PartitionedFunction) and isinstance(program.step_fn, PartitionedFunction)
    arrays = [jax.ShapeDtypeStruct((4, 64), jnp.int32, sharding=partitioner.batch_sharding) for _ in range(4)]
    assert scorer.score_fn.lower(params, *arrays).as_text() == lower_step(exp, partitioner, "eval", program).as_text()
    assert program.step_fn.lower(program.abstract_state, program.abstract_batch(64)).as_text() == \
        lower_step(exp, partitioner, "train", program).as_text()


@pytest.mark.slow
@pytest.mark.tpu
def test_compile_the_variants_of_todays_bases_for_tpu():
    """Qwen3's q/k norm and head_dim, Qwen2's q/k/v bias, Llama-3's RoPE scaling and tied embeddings, all at once,
    through the TPU path (splash attention, FSDP-gathered weights): compiles and fits, with the parameters the
    closed form counts."""
    r = allam("compile", "--gin_file", "runs/tiny_cpu.gin", "--gin_file", "models/tiny_qwen3.gin", "--topology",
              "v5e:2x2", *TINY, "--json", "--gin_bindings", "ModelConfig.attention_impl = 'pallas'",
              "--gin_bindings", "ModelConfig.qkv_bias = True", "--gin_bindings", "ModelConfig.tie_embeddings = True",
              "--gin_bindings", "ModelConfig.rope_scaling = 'llama3'", "--gin_bindings",
              "ModelConfig.rope_original_max_len = 32", "--gin_bindings", "TrainerConfig.seq_len = 128")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    from allam_jax.model import ModelConfig

    cfg = ModelConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=96, head_dim=32,
                      qk_norm=True, qkv_bias=True, tie_embeddings=True)
    assert out["fits"] and out["params"] == cfg.num_params() and out["attention_impl"] == "pallas"
