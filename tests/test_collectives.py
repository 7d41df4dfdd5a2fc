"""FSDP as the TPU compiler emits it: weights all-gathered (never an all-reduce of a zero-padded buffer), the LM
head gathered and reduced once per step (not per chunk), gradients reduce-scattered onto their shards. Asserted
on train steps compiled by libtpu for TPU topologies, so the partitioner's old choices cannot come back."""

import math

import pytest

from allam_jax import gin_setup
from allam_jax.aot.topology import resolve_topology, torus_wrap

# a small model whose every weight splits over 64 devices; full remat, bf16, the LM head in 4 chunks
D, MLP, HEADS, HEAD_DIM, VOCAB, LAYERS, ROWS, SEQ = 256, 512, 4, 64, 1024, 2, 64, 256
BINDINGS = [f"ModelConfig.d_model = {D}", f"ModelConfig.mlp_dim = {MLP}", f"ModelConfig.num_heads = {HEADS}",
            f"ModelConfig.num_kv_heads = {HEADS}", f"ModelConfig.vocab_size = {VOCAB}",
            f"ModelConfig.num_layers = {LAYERS}", "ModelConfig.compute_dtype = 'bfloat16'",
            "ModelConfig.remat_policy = 'full'", f"ModelConfig.max_seq_len = {SEQ}", f"TrainerConfig.seq_len = {SEQ}",
            f"TrainerConfig.batch_size = {ROWS}", f"StepConfig.logits_chunk_size = {SEQ // 4}"]
LAYER_WEIGHTS = {  # one layer's matmul weights as stored (logical order), sizes in elements
    "query": D * HEADS * HEAD_DIM, "key": D * HEADS * HEAD_DIM, "value": D * HEADS * HEAD_DIM,
    "out": HEADS * HEAD_DIM * D, "gate": D * MLP, "up": D * MLP, "down": MLP * D}
BF16 = 2


def _compile(topology: str, mesh_shape: tuple, with_text: bool = False, extra: tuple = ()):
    import allam_jax.aot.dry_run as dry_run
    from allam_jax.aot.hlo_stats import collective_ops

    gin_setup.parse(["runs/tiny_cpu.gin"], BINDINGS + [f"PartitioningConfig.mesh_shape = {mesh_shape}", *extra])
    texts = []
    original = dry_run.collective_stats
    dry_run.collective_stats = lambda hlo: texts.append(hlo) or original(hlo)
    try:
        report = dry_run.compile_step(gin_setup.build_experiment(), resolve_topology(topology))
    finally:
        dry_run.collective_stats = original
    assert report.fits
    return (collective_ops(texts[0]), report.params) + ((texts[0],) if with_text else ())


@pytest.mark.parametrize("shape,dims,wrap", [
    ((4, 4, 4), 3, (True, True, True)), ((4, 8, 8), 3, (True, True, True)), ((4, 4, 12), 3, (True, True, True)),
    ((2, 4, 4), 3, (False, False, False)), ((2, 2, 1), 3, (False, False, False)),
    ((8, 16), 2, (False, True, False)), ((16, 16), 2, (True, True, False)), ((8, 8), 2, (False, False, False)),
])
def test_torus_wraparound_follows_cloud_tpu_slices(shape, dims, wrap):
    """Cloud TPU's wiring, written out by hand: 3-D slices close every ring once each side is a multiple of 4;
    2-D slices close a side of 16 chips."""
    assert torus_wrap(shape, dims) == wrap


@pytest.mark.tpu
def test_slice_descriptions_carry_their_wraparound():
    assert resolve_topology("v5p-128").wrap == (True, True, True)
    assert resolve_topology("v5p-64").wrap == (False, False, False)
    assert resolve_topology("v5e-256").wrap == (True, True)


@pytest.fixture(scope="module")
def whole_cube():
    """The train step on a v5p-128 (a 4x4x4 cube with wraparound), every weight split 64 ways (mesh (1, 64, 1))."""
    return _compile("v5p-128", (1, -1, 1))


@pytest.mark.slow
@pytest.mark.tpu
def test_weights_are_all_gathered_once_per_use_on_a_whole_cube(whole_cube):
    ops, params = whole_cube
    # no gather written as an all-reduce of a zero-padded buffer (what the compiler emitted without the wraparound)
    assert not [op for op in ops if op["kind"] == "all-reduce" and "dynamic-update-slice" in op["operands"]]
    gathered = sum(op["times"] * op["bytes"] for op in ops if op["kind"] == "all-gather"
                   and all(s.startswith("bf16") for s in op["shapes"]))
    # each layer's weights twice (the forward, and its recomputation under full remat) and the LM head once, all
    # in bf16; the embedding table at most once (for its lookup the partitioner may move rows instead): nothing
    # more is gathered, in no other form
    layer = sum(LAYER_WEIGHTS.values())
    assert gathered in (BF16 * (2 * LAYERS * layer + VOCAB * D), BF16 * (2 * LAYERS * layer + 2 * VOCAB * D))


@pytest.mark.slow
@pytest.mark.tpu
def test_lm_head_is_gathered_and_reduced_once_per_step_not_per_chunk(whole_cube):
    ops, _ = whole_cube
    vocab_sized = [op for op in ops if op["kind"] == "all-gather" and _elements(op) == D * VOCAB]
    # the LM head (and the embedding table, if the lookup gathers it): one gather per step (per chunk, the head's
    # would run 4 times)
    assert sorted(op["times"] for op in vocab_sized) in ([1], [1, 1]), vocab_sized
    head = [op for op in ops if op["kind"] in ("all-reduce", "reduce-scatter") and f"bf16[{D},{VOCAB}]" in op["shapes"]]
    assert sum(op["times"] for op in head) == 1, head


def _elements(op: dict) -> int:
    return sum(math.prod(int(d) for d in s.split("[", 1)[1].split("]", 1)[0].split(",") if d) for s in op["shapes"])


@pytest.mark.slow
@pytest.mark.tpu
def test_each_gradient_is_reduced_once_on_a_whole_cube(whole_cube):
    """Over the whole slice libtpu lowers a gradient's reduce-scatter as an all-reduce followed by the slice
    (the same in MaxText's program); each gradient is still reduced exactly once, in bf16."""
    ops, params = whole_cube
    reduced = sum(op["times"] * op["bytes"] for op in ops if op["kind"] in ("all-reduce", "reduce-scatter")
                  and all(s.startswith("bf16") for s in op["shapes"]))
    assert LAYERS * sum(LAYER_WEIGHTS.values()) * BF16 < reduced <= params * BF16


def _array_elements(type_text: str) -> int:
    """Elements of an HLO array type such as ``bf16[256,1024]{1,0:T(8,128)}``; 0 for a tuple."""
    return 0 if type_text.startswith("(") else _elements({"shapes": [type_text]})


@pytest.mark.slow
@pytest.mark.tpu
def test_a_whole_reduced_gradient_is_sliced_to_its_shard_at_once():
    """Where a gradient is reduced whole (an all-reduce, then the slice), its only reader is the slice to the
    device's shard. Left to itself, XLA fused that slice into the optimizer's fusions at the end of the step, so
    the whole reduced weight (Llama-2 70B's LM head: 0.5 GB per chip) stayed live through the backward scan. The
    unchunked head's gradient is the one reduced whole here (the chunked loss's is reduce-scattered)."""
    from allam_jax.aot.hlo_stats import computations
    from allam_jax.aot.step_time import parse_instruction, tuple_elements

    _, _, hlo = _compile("v5p-128", (1, -1, 1), with_text=True, extra=("StepConfig.logits_chunk_size = 0",))
    comps, entry = computations(hlo)
    entry_ops = [i for i in map(parse_instruction, comps[entry]) if i]
    whole = []  # how readers name each head-sized result of an all-reduce
    for i in (i for i in entry_ops if i.opcode in ("all-reduce", "all-reduce-start")):
        elements = tuple_elements(i.type)
        whole += [f"{i.name}#{k}" if elements else i.name
                  for k, element in enumerate(elements or [i.type]) if _array_elements(element) == D * VOCAB]
    assert whole, "no gradient is reduced whole here any more: this test's premise needs updating"
    for ref in whole:
        readers = [i for i in entry_ops if ref in i.operands]
        assert len(readers) == 1, (ref, [i.name for i in readers])
        assert _array_elements(readers[0].type) * 64 == D * VOCAB, readers[0].text[:200]


@pytest.mark.slow
@pytest.mark.tpu
def test_gradients_are_reduce_scattered_onto_their_shards():
    """Data x FSDP on a v5p-16 (mesh (2, 4, 1)): every layer weight's gradient reaches its fsdp shard by a
    reduce-scatter (leading axis split, as the weight is), then is summed over the data axis as a shard; the LM
    head's likewise, once per step."""
    ops, _ = _compile("v5p-16", (2, 4, 1))
    scatters = [op for op in ops if op["kind"] == "reduce-scatter"]
    by_source = {}
    for op in scatters:
        name = op["source"].split("/layers/")[-1].split("/")[1] if "/layers/" in op["source"] else "lm_head"
        by_source[name] = by_source.get(name, 0) + op["times"]
        assert len(op["shapes"]) == 1 and op["shapes"][0].startswith("bf16")
    assert by_source == {**{name: LAYERS for name in LAYER_WEIGHTS}, "lm_head": 1}, by_source
    scattered = sum(op["times"] * op["bytes"] for op in scatters)
    assert scattered == BF16 * (LAYERS * sum(LAYER_WEIGHTS.values()) + D * VOCAB) // 4
    # nothing weight-sized is all-reduced but the embedding table (its gradient is a scatter-add)
    for op in ops:
        if op["kind"] == "all-reduce":
            assert all(_elements({"shapes": [s]}) <= VOCAB * D for s in op["shapes"]), op
