"""The step-time estimate (aot/step_time.py) on programs with known answers: a matmul's FLOPs (2mnk, and what
XLA's own cost analysis counts on a loop-free program), a scan of N bodies costing N times one, a collective
whose time follows its group's ring, splash attention's FLOPs against a mask counted in NumPy, and a whole train
step's matmul FLOPs against the model's FLOP formula."""


import dataclasses

import numpy as np
import pytest

from allam_jax.aot.step_time import (HOP_SECONDS, Interconnect, _causal_fraction, _dims, collective_seconds,
                                     convolution_flops, estimate_step_time, replica_groups, tuple_elements)

LINK = 1e11


def _ring(n: int, wrap: bool) -> Interconnect:
    return Interconnect([(i, 0, 0) for i in range(n)], (n, 1, 1), (wrap, False, False), LINK)


def test_all_gather_time_follows_the_ring():
    v = 64e6
    closed = [collective_seconds("all-gather", v, list(range(n)), _ring(n, True)) for n in (4, 8, 16)]
    # (p-1)/p of the data over both directions of the ring, plus a hop per ring step
    assert closed == pytest.approx([v * (n - 1) / n / (2 * LINK) + HOP_SECONDS * (n - 1) for n in (4, 8, 16)])
    assert closed[0] < closed[1] < closed[2]
    # a line (no wraparound) has one direction's bandwidth: twice the time of the data
    line = collective_seconds("all-gather", v, list(range(8)), _ring(8, False))
    assert line - 7 * HOP_SECONDS == pytest.approx(2 * (closed[1] - 7 * HOP_SECONDS))
    # an all-reduce is a reduce-scatter and an all-gather; a reduce-scatter moves what its result gathers from
    assert collective_seconds("all-reduce", v, list(range(8)), _ring(8, True)) == pytest.approx(2 * closed[1])
    assert collective_seconds("reduce-scatter", v / 8, list(range(8)), _ring(8, True)) == pytest.approx(closed[1])


def test_a_group_over_two_torus_axes_uses_both_rings():
    torus = Interconnect([(x, y, 0) for x in range(4) for y in range(4)], (4, 4, 1), (True, True, False), LINK)
    one_axis = collective_seconds("all-gather", 1e8, [0, 4, 8, 12], torus)  # x varies: one ring of 4
    both = collective_seconds("all-gather", 1e8, list(range(16)), torus)
    assert one_axis == pytest.approx(1e8 * 3 / 4 / (2 * LINK) + 3 * HOP_SECONDS)
    assert both == pytest.approx(1e8 * 15 / 16 / (4 * LINK) + 6 * HOP_SECONDS)


def test_groups_across_slices_pay_the_data_centre_network():
    net = Interconnect([(i % 4, 0, 0) for i in range(8)], (4, 1, 1), (True, False, False), LINK, 6.25e9,
                       slices=[i // 4 for i in range(8)])
    within = collective_seconds("all-reduce", 1e8, [0, 1, 2, 3], net)
    across = collective_seconds("all-reduce", 1e8, [0, 4], net)
    assert across == pytest.approx(2 * 1e8 / 2 / 6.25e9)
    assert across > 10 * within


@pytest.mark.parametrize("text,expected", [
    ("replica_groups={{0,1},{2,3}}", [[0, 1], [2, 3]]),
    ("replica_groups=[2,4]<=[8]", np.arange(8).reshape(2, 4).tolist()),
    ("replica_groups=[4,2]<=[2,4]T(1,0)", np.arange(8).reshape(2, 4).T.reshape(4, 2).tolist()),
    ("replica_groups={}", [list(range(8))]),
    ("source_target_pairs={{0,1},{1,2}}", [[0, 1], [1, 2]]),
    # the named-mesh form of newer XLA: devices varying along the listed axes, the others fixed
    ("replica_groups=mesh['a'=2,'b'=4] {'a'}", np.arange(8).reshape(2, 4).T.tolist()),
    ("replica_groups=mesh['a'=2,'b'=4] {'b'}", np.arange(8).reshape(2, 4).tolist()),
    ("replica_groups=mesh['a'=2,'b'=4] {'b','a'}", [np.arange(8).reshape(2, 4).T.reshape(-1).tolist()]),
    ("replica_groups=mesh['a'=2,'b'=2,'c'=2] {'a','c'}", np.arange(8).reshape(2, 2, 2).transpose(1, 0, 2).reshape(2, 4).tolist()),
    # a sub-axis 'b':(2)2: the minor factor 2 of b (its major factor 2 before it)
    ("replica_groups=mesh['a'=2,'b'=4] {'b':(2)2}", np.arange(8).reshape(4, 2).tolist()),
    ("replica_groups=mesh['a'=2,'b'=4] {'b':(1)2}", np.arange(8).reshape(2, 2, 2).transpose(0, 2, 1).reshape(4, 2).tolist()),
])
def test_replica_groups_in_every_hlo_form(text, expected):
    assert replica_groups(text, 8) == expected


@pytest.mark.parametrize("seq,bq,bkv", [(256, 256, 256), (1024, 128, 128), (1024, 256, 128), (512, 128, 256)])
def test_causal_block_fraction_against_a_numpy_mask(seq, bq, bkv):
    mask = np.tril(np.ones((seq, seq), bool))
    blocks = mask.reshape(seq // bq, bq, seq // bkv, bkv).any(axis=(1, 3))
    assert _causal_fraction(seq, seq, bq, bkv) == blocks.mean()


def test_convolution_flops_count_only_real_input():
    # a plain matmul written as a 1x1 convolution: [b=8, f=16] x [i=16, o=32] -> 2*8*16*32
    assert convolution_flops("f32[8,32]", "f32[8,16]", "f32[16,32]", "dim_labels=bf_io->bf") == 2 * 8 * 16 * 32
    # a window of 4 sliding over 4 positions with 3 zeros of padding on each side: 4 x 4 real (o, k) pairs of 28
    flops = convolution_flops("f32[7,2,3]", "f32[4,2,5]", "f32[5,4,3]",
                              "window={size=4 pad=3_3}, dim_labels=0bf_i0o->0bf")
    brute = sum(1 for o in range(7) for k in range(4) if 0 <= o - 3 + k < 4)
    assert flops == 2 * 5 * 3 * 2 * brute == 2 * 5 * 3 * 2 * 16


# ------------------------------------------------------------------------------------- compiled for a TPU topology
def _compile_for(topology, fn, *args):
    import jax

    from allam_jax.aot.dry_run import _HloDump

    with _HloDump(topology) as dump:
        compiled = jax.jit(fn).lower(*args).compile(compiler_options=dump.options())
        return compiled, dump.text(compiled)


@pytest.fixture(scope="module")
def one_chip():
    from allam_jax.aot.topology import resolve_topology

    return resolve_topology("v5e:1x1")


def _estimate(topology, hlo):
    net = Interconnect.from_devices(topology.devices, topology.wrap, topology.chip)
    return estimate_step_time(hlo, topology.chip, net)


@pytest.mark.tpu
def test_a_matmuls_flops_are_2mnk_as_xla_counts_them(one_chip):
    import jax
    import jax.numpy as jnp

    m, k, n = 512, 1024, 768
    dev = one_chip.devices[0]
    sharding = jax.sharding.SingleDeviceSharding(dev)
    a = jax.ShapeDtypeStruct((m, k), jnp.bfloat16, sharding=sharding)
    b = jax.ShapeDtypeStruct((k, n), jnp.bfloat16, sharding=sharding)
    compiled, matmul_hlo = _compile_for(one_chip, lambda x, y: x @ y, a, b)
    est = _estimate(one_chip, matmul_hlo)
    assert est.matmul_flops == 2 * m * k * n
    # a batched, grouped contraction as the attention projections run: XLA's cost analysis is the reference
    q = jax.ShapeDtypeStruct((4, 256, 8, 64), jnp.bfloat16, sharding=sharding)
    w = jax.ShapeDtypeStruct((8, 64, 512), jnp.bfloat16, sharding=sharding)
    compiled, hlo = _compile_for(one_chip, lambda x, y: jnp.einsum("bthd,hde->bte", x, y), q, w)
    assert _estimate(one_chip, hlo).matmul_flops == 2 * 4 * 256 * 8 * 64 * 512
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert _estimate(one_chip, hlo).matmul_flops == pytest.approx(xla["flops"], rel=0.01)
    # the matmul is compute bound on this chip: its time is its FLOPs at the calibrated share of the peak
    chip = one_chip.chip
    assert est.compute_seconds == pytest.approx(2 * m * k * n / (chip.peak_flops * chip.matmul_efficiency), rel=0.05)
    assert estimate_step_time(matmul_hlo, chip, Interconnect.from_devices(one_chip.devices, (), chip),
                              efficiency=chip.matmul_efficiency / 2).compute_seconds == pytest.approx(2 * est.compute_seconds)


@pytest.mark.tpu
def test_a_scan_of_n_bodies_costs_n_times_one(one_chip):
    import jax
    import jax.numpy as jnp

    sharding = jax.sharding.SingleDeviceSharding(one_chip.devices[0])

    def stack(n):
        def fn(x, ws):
            return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

        return _compile_for(one_chip, fn, jax.ShapeDtypeStruct((256, 512), jnp.bfloat16, sharding=sharding),
                            jax.ShapeDtypeStruct((n, 512, 512), jnp.bfloat16, sharding=sharding))[1]

    three, six, twelve = (_estimate(one_chip, stack(n)) for n in (3, 6, 12))
    body = 2 * 256 * 512 * 512
    assert (three.matmul_flops, six.matmul_flops, twelve.matmul_flops) == (3 * body, 6 * body, 12 * body)
    # each body adds the same time (what runs outside the loop is the same in all three)
    per_body = (six.step_seconds - three.step_seconds) / 3
    assert per_body > 0
    assert twelve.step_seconds - six.step_seconds == pytest.approx(6 * per_body, rel=1e-6)
    # and a body is its matmul at the chip's peak, or slower
    assert per_body >= body / one_chip.chip.peak_flops


@pytest.mark.slow
@pytest.mark.tpu
def test_a_psums_time_grows_with_its_ring_and_shrinks_with_more_rings():
    """A psum on a v5p-128 (a 4x4x4 cube, every ring closed) over 2 neighbours, a ring of 4, two rings (16
    chips) and the cube: priced from the replica groups in the compiled HLO."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from allam_jax.aot.topology import resolve_topology

    topology = resolve_topology("v5p-128")
    devices = np.array(topology.devices, dtype=object)
    order = np.lexsort(np.array([d.coords for d in devices]).T[::-1])  # x major, then y, then z
    mesh = Mesh(devices[order].reshape(4, 4, 2, 2), ("x", "y", "z1", "z2"))
    net = Interconnect.from_devices(list(mesh.devices.flat), topology.wrap, topology.chip)
    link, nbytes = topology.chip.ici_link_bandwidth, 64 * 1024 * 1024 * 4
    times = {}
    cases = {("z2",): (2, 1, 1), ("z1", "z2"): (4, 1, 3), ("y", "z1", "z2"): (16, 2, 6),
             ("x", "y", "z1", "z2"): (64, 3, 9)}  # group size, rings, ring steps
    for axes, (p, rings, hops) in cases.items():
        fn = jax.shard_map(lambda a, axes=axes: jax.lax.psum(a, axes), mesh=mesh, in_specs=P(), out_specs=P())
        arg = jax.ShapeDtypeStruct((nbytes // 4,), jnp.float32, sharding=NamedSharding(mesh, P()))
        est = estimate_step_time(_compile_for(topology, fn, arg)[1], topology.chip, net)
        times[axes] = est.by_collective.get("all-reduce", 0.0)
        # a reduce-scatter and an all-gather, each over both directions of every ring
        expected = 2 * nbytes * (p - 1) / p / (rings * 2 * link) + 2 * HOP_SECONDS * hops
        assert times[axes] == pytest.approx(expected, rel=1e-6), axes
    assert times[("z2",)] < times[("z1", "z2")]  # a longer ring: more of the data crosses it
    assert times[("y", "z1", "z2")] < times[("z1", "z2")]  # a second ring: twice the links


@pytest.mark.slow
@pytest.mark.tpu
def test_a_train_steps_flops_match_the_model_and_its_attention_kernels():
    """The small model of test_collectives on a v5p-8 (4 chips, mesh (1, 4, 1)) with splash attention: the HLO's
    matmul FLOPs are the model's (6 per parameter per token, +2 per layer parameter for full remat's second
    forward) and the kernels' are attention's (forward twice, the fused backward's five matmuls), to the FLOP."""
    import allam_jax.aot.dry_run as dry_run
    from allam_jax import gin_setup
    from allam_jax.aot.topology import resolve_topology
    from test_collectives import BINDINGS, D, HEAD_DIM, HEADS, LAYERS, MLP, ROWS, SEQ, VOCAB

    gin_setup.parse(["runs/tiny_cpu.gin"], BINDINGS + ["PartitioningConfig.mesh_shape = (1, -1, 1)",
                                                       "ModelConfig.attention_impl = 'pallas'"])
    report = dry_run.compile_step(gin_setup.build_experiment(), resolve_topology("v5p-8"))
    est = report.estimate
    tokens = ROWS // 4 * SEQ  # per chip
    layer_params = LAYERS * (4 * D * HEADS * HEAD_DIM + 3 * D * MLP)
    assert est["matmul_flops"] == 6 * (layer_params + VOCAB * D) * tokens + 2 * layer_params * tokens
    one_matmul = 2 * (ROWS // 4) * HEADS * SEQ * SEQ * HEAD_DIM  # a 256-token sequence is one splash block
    assert est["attention_flops"] == LAYERS * (2 + 2 + 5) * one_matmul
    assert est["unpriced_kernels"] == 0
    busy = est["compute_seconds"] + est["attention_seconds"]  # summed in another order than the step's parts
    assert busy * (1 - 1e-12) <= est["step_seconds"] <= est["no_overlap_seconds"] * (1 + 1e-12)
    assert est["no_overlap_seconds"] == pytest.approx(busy + est["communication_seconds"])
    assert est["compute_seconds"] >= est["matmul_flops"] / report.peak_flops_per_device
    assert 0 < report.estimated_mfu < 1


# ------------------------------------------------------------------------------------- splash kernels, every pass
def _splash_program(topology, rows: int, fused: bool, blocks: dict, seq=2048, heads=4, head_dim=128):
    """Forward and backward of JAX's splash kernel (causal) on q/k/v ``[rows, heads, T, D]`` (vmapped over rows)
    or, with ``rows=0``, ``[heads, T, D]`` (the kernel's own 3-D operands: one row per micro-batch)."""
    import jax
    import jax.numpy as jnp
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    sizes = sk.BlockSizes(use_fused_bwd_kernel=fused, **blocks)
    kernel = sk.make_splash_mha(sm.MultiHeadMask([sm.CausalMask((seq, seq))] * heads), block_sizes=sizes,
                                head_shards=1, q_seq_shards=1)

    def loss(q, k, v):
        out = kernel(q, k, v) if rows == 0 else jax.vmap(kernel)(q, k, v)
        return out.astype(jnp.float32).sum()

    shape = (heads, seq, head_dim) if rows == 0 else (rows, heads, seq, head_dim)
    arg = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=jax.sharding.SingleDeviceSharding(topology.devices[0]))
    with jax.default_matmul_precision("default"):  # Mosaic refuses fp32-precision dots on bf16 operands
        return _compile_for(topology, jax.grad(loss, argnums=(0, 1, 2)), arg, arg, arg)[1]


def _live_pairs(seq: int, bq: int, bkv: int) -> int:
    """(q block, kv block) pairs holding any causal (i >= j) position, counted on the dense NumPy mask."""
    mask = np.tril(np.ones((seq, seq), bool))
    return int(mask.reshape(seq // bq, bq, seq // bkv, bkv).any(axis=(1, 3)).sum())


SPLASH_CASES = {
    # rows, fused, block sizes of each pass (a different one for each, so a pass priced by another's is caught)
    "4-D rows, fused backward": (2, True, dict(block_q=512, block_kv=256, block_kv_compute=256, block_q_dkv=256,
                                                block_kv_dkv=512, block_kv_dkv_compute=512)),
    "3-D operands, separate backward": (0, False, dict(block_q=256, block_kv=512, block_kv_compute=512,
                                                       block_q_dkv=512, block_kv_dkv=256, block_kv_dkv_compute=256,
                                                       block_q_dq=128, block_kv_dq=512)),
}


@pytest.mark.tpu
@pytest.mark.parametrize("case", list(SPLASH_CASES))
def test_every_splash_kernel_is_priced_from_its_own_blocks(one_chip, case):
    """FLOPs and bytes of the forward, the fused or separate backward kernels, on 4-D and 3-D operands, against a
    count over the dense causal mask: each pass's matmuls on its live (q block, kv block) pairs, each operand read
    once plus its streamed side once per further live pair, the results (the fused pass's dQ partials) written."""
    from allam_jax.aot.hlo_stats import computations
    from allam_jax.aot.step_time import _Costs, kernel_cost, splash_pass

    rows, fused, blocks = SPLASH_CASES[case]
    seq, heads, head_dim = 2048, 4, 128
    hlo = _splash_program(one_chip, rows, fused, blocks, seq, heads, head_dim)
    batch = max(rows, 1)
    qkv = batch * heads * seq * head_dim * 2  # bytes of q (and of k, v, dO: bf16)
    comps, _ = computations(hlo)
    costs = _Costs(comps)
    priced = {}
    for comp, instructions in costs.parsed.items():
        for ins in instructions:
            if ins.opcode == "custom-call" and "tpu_custom_call" in ins.text:
                priced[splash_pass(ins)] = (kernel_cost(ins, costs.shapes[comp]), ins, comp)
    assert set(priced) == ({"fwd", "dkv"} if fused else {"fwd", "dkv", "dq"})
    passes = {"fwd": ("block_q", "block_kv", 2), "dkv": ("block_q_dkv", "block_kv_dkv", 5 if fused else 4),
              "dq": ("block_q_dq", "block_kv_dq", 3)}
    for kind, (cost, ins, comp) in priced.items():
        bq, bkv, matmuls = blocks[passes[kind][0]], blocks[passes[kind][1]], passes[kind][2]
        live = _live_pairs(seq, bq, bkv)
        block_matmul = 2 * batch * heads * bq * bkv * head_dim
        assert cost.priced and not cost.dense
        assert cost.flops == matmuls * live * block_matmul, kind
        from allam_jax.aot.hlo_stats import array_bytes

        once = sum(sum(array_bytes(costs.shapes[comp][o])) for o in ins.operands) + sum(array_bytes(ins.type))
        # each live pair reads one block of the streamed side; the first read of each block is in `once`
        if kind == "dkv":  # q, dO (bf16) and the f32 log-sum-exp and dI rows (8 sublanes) per q block
            per_q_block = (2 * qkv + 2 * batch * heads * 8 * seq * 4) * bq // seq
            again = (live - seq // bq) * per_q_block
            if fused:  # the dQ partials: a q-sized array per kv block, written
                assert any(_dims(t) == ([batch] if rows else []) + [heads, seq // bkv, seq, head_dim]
                           for t in tuple_elements(ins.type))
        else:  # k and v per kv block
            again = (live - seq // bkv) * 2 * qkv * bkv // seq
        assert cost.bytes == once + again, kind


@pytest.mark.tpu
def test_an_estimate_sums_every_kernel_and_names_none_unpriced(one_chip):
    """The whole program's attention FLOPs are the passes' sum; nothing is left unpriced or priced densely."""
    rows, fused, blocks = SPLASH_CASES["3-D operands, separate backward"]
    est = _estimate(one_chip, _splash_program(one_chip, rows, fused, blocks))
    one = 2 * 4 * 2048 * 2048 * 128  # one T x T x D matmul over the 4 heads, before the mask
    expected = (2 * _live_pairs(2048, 256, 512) / 32 + 4 * _live_pairs(2048, 512, 256) / 32
                + 3 * _live_pairs(2048, 128, 512) / 64) * one
    assert est.attention_flops == pytest.approx(expected, rel=1e-12)
    assert (est.unpriced_kernels, est.dense_kernels) == (0, 0)
    assert est.attention_seconds >= est.attention_flops / (one_chip.chip.peak_flops * one_chip.chip.matmul_efficiency)


def test_a_report_with_unpriced_kernels_says_so_first_and_gives_both_mfu_conventions():
    from allam_jax.aot.dry_run import CompileReport
    from allam_jax.aot.step_time import StepTimeEstimate
    from allam_jax.aot.table import format_report
    from allam_jax.aot.topology import CHIPS

    est = StepTimeEstimate(2.0, 1.5, 0.5, 0.1, 0.0, 0.0, 2.1, 1e15, 1e14, 1e12, {}, unpriced_kernels=640)
    report = CompileReport("train", "v5p-8", None, 4, {"data": 1, "fsdp": 4, "tensor": 1}, 10**9, 16, 4096, 1,
                           "pallas", "full", "bfloat16", 95 * 2**30, True, 1.0, 1e9, 1e8, 1e8, 2e9, 3e9,
                           model_flops=4 * 459e12, model_flops_causal=4 * 400e12, peak_flops_per_device=459e12,
                           estimate=dataclasses.asdict(est), calibration_note=CHIPS["v5p"].calibration_note())
    lines = format_report(report).splitlines()
    assert lines[0].startswith("WARNING: 640 kernel calls per step have no FLOP count")
    step = next(line for line in lines if line.startswith("step time"))
    # 459e12 FLOPs per chip in 2 s at 459e12 FLOP/s: 50%; the causal count 400e12: 43.6%
    assert "ESTIMATED" in step and "50.0% MFU (PaLM count), 43.6% (causal count)" in step
    assert any(line.strip().startswith("calibration") and "TPU v5p efficiency" in line for line in lines)
    report.estimate["unpriced_kernels"] = 0
    assert not format_report(report).startswith("WARNING")


def test_the_calibration_in_use_is_the_one_the_benchmark_last_fitted():
    """aot/calibration.py holds what benchmarks/vs_maxtext.py wrote to calibration.json: a refit (a changed
    estimator, a new MaxText) that is not copied into the code fails here."""
    import json
    from pathlib import Path

    from allam_jax.aot.calibration import CALIBRATIONS
    from allam_jax.aot.topology import CHIPS

    fitted = json.loads((Path(__file__).parent.parent / "benchmarks/results/calibration.json").read_text())
    for generation, cal in CALIBRATIONS.items():
        row = fitted[CHIPS[generation].name]
        assert (cal.efficiency, cal.fit_on, cal.held_out, cal.held_out_error, cal.best_published_mfu) == (
            row["efficiency"], row["fit_on"], row["held_out"], row["held_out_error"], row["best_published_mfu"])
        assert CHIPS[generation].matmul_efficiency == cal.efficiency
    assert set(fitted) == {CHIPS[g].name for g in CALIBRATIONS}


def test_the_benchmark_fits_on_fit_rows_and_scores_only_the_held_out_ones():
    """benchmarks/vs_maxtext.py's fit, on programs whose estimated MFU is exactly efficiency x u: a row matches at
    efficiency measured / u, the generation takes the geometric mean of its fit rows, a held-out row's error is
    its estimate at that efficiency minus its measurement."""
    import math
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import vs_maxtext

    peak = 459e12

    def program(u):  # MFU u at efficiency 1: step time F / (u e peak)
        return {"model_flops_per_device": 1e15,
                "raw_estimate": lambda e, u=u: {"step_seconds": 1e15 / (u * (e or 1.0) * peak)}}

    base = vs_maxtext.CALIBRATION["32b-v5p-128"]
    rows = [(dataclasses.replace(base, published_mfu=0.72, role="fit"), program(0.9)),
            (dataclasses.replace(base, published_mfu=0.81, role="fit"), program(0.9)),
            (dataclasses.replace(base, published_mfu=0.70, role="held out"), program(0.9))]
    g = vs_maxtext.fit(rows)["TPU v5p"]
    assert g["efficiency"] == pytest.approx(math.sqrt(0.8 * 0.9), rel=1e-6)
    assert g["held_out"] == [pytest.approx((g["efficiency"] * 0.9 - 0.70) * 100, abs=1e-4)]
    assert g["held_out_error"] == pytest.approx(abs(g["held_out"][0]))
    assert g["best_published_mfu"] == 0.81
