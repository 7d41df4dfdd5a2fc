"""Run in a subprocess with 8 fake CPU devices: one train step on several meshes vs one device.

Prints a JSON report; tests/test_partitioning.py asserts on it.
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from allam_jax.core import partitioning  # noqa: E402
from allam_jax.model import Decoder, ModelConfig  # noqa: E402
from allam_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer  # noqa: E402
from allam_jax.train.state import init_train_state, state_shardings  # noqa: E402
from allam_jax.objectives.lm import LmObjective, StepConfig  # noqa: E402
from allam_jax.train.step import accumulate_gradients, make_train_step  # noqa: E402

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]
CFG = ModelConfig(vocab_size=384, d_model=64, num_layers=2, num_heads=8, num_kv_heads=4, mlp_dim=128,
                  max_seq_len=32, compute_dtype="float32")
B, T = 8, 16


def batch():
    rng = np.random.default_rng(0)
    seg = np.repeat(np.array([[1] * 10 + [2] * 6]), B, 0).astype(np.int32)
    pos = np.concatenate([np.arange(10), np.arange(6)])[None].repeat(B, 0).astype(np.int32)
    return {
        "inputs": rng.integers(3, 384, (B, T)).astype(np.int32),
        "targets": rng.integers(3, 384, (B, T)).astype(np.int32),
        "positions": pos,
        "segment_ids": seg,
        "loss_weights": (rng.random((B, T)) > 0.1).astype(np.float32),
        "lang_id": rng.integers(0, 2, (B, T)).astype(np.int32),
    }


def run(mesh_shape, devices, host_state=None, cfg=CFG, step_cfg=StepConfig(num_languages=2)):
    pcfg = partitioning.PartitioningConfig(mesh_shape=mesh_shape)
    partitioner = partitioning.Partitioner.create(pcfg, devices)
    model = Decoder(cfg)
    opt = OptimizerConfig(learning_rate=1e-3, warmup_steps=0, decay_steps=10)
    tx = make_optimizer(opt)
    _, shardings = state_shardings(model, tx, partitioner)
    if host_state is None:
        state = init_train_state(model, tx, partitioner, seed=0)
    else:
        state = jax.device_put(host_state, shardings)
    step = make_train_step(model, tx, learning_rate_schedule(opt), LmObjective(step_cfg))

    def with_grads(state, b):
        _, grads, _ = accumulate_gradients(LmObjective(step_cfg), model, state.params, b)
        new_state, metrics = step(state, b)
        return new_state, metrics, grads

    bs = partitioner.batch_sharding
    with partitioner.activate():
        fn = jax.jit(with_grads, in_shardings=(shardings, bs), out_shardings=(shardings, None, shardings.params))
        b = {k: jax.device_put(v, bs) for k, v in batch().items()}
        new_state, metrics, grads = fn(state, b)
    specs = {
        jax.tree_util.keystr(path): [list(a) if isinstance(a, tuple) else a for a in leaf.sharding.spec]
        for path, leaf in jax.tree_util.tree_flatten_with_path(new_state.params)[0]
    }
    grad_specs = [leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(grads)]
    assert grad_specs == [leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(new_state.params)]
    return jax.device_get(state), jax.device_get((new_state, grads)), jax.device_get(metrics), specs


def _rel_diffs(a_tree, b_tree) -> list[float]:
    return [float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30)) for a, b in
            zip(jax.tree_util.tree_leaves(a_tree), jax.tree_util.tree_leaves(b_tree))]


def _max_rel_diff(a_tree, b_tree) -> float:
    return max(_rel_diffs(a_tree, b_tree))


def indivisible():
    from allam_jax.core.errors import ConfigError

    try:
        run((1, 1, 8), jax.devices())
    except ConfigError as e:
        print(str(e))
    else:
        print("no error")


def main():
    if sys.argv[1:] == ["indivisible"]:
        return indivisible()
    devices = jax.devices()
    assert len(devices) == 8, devices
    init_state, (ref_new, ref_grads), ref_metrics, _ = run((1, 1, 1), devices[:1])
    report = {"meshes": {}}
    meshes, cfg = MESHES, CFG
    if sys.argv[1:] == ["pallas"]:  # the flash kernel under shard_map vs the single-device reference
        import dataclasses

        meshes, cfg = [(2, 2, 2), (1, 2, 4)], dataclasses.replace(CFG, attention_impl="pallas")
    if sys.argv[1:] == ["bf16"]:  # the CPU bf16 matmuls and blockwise attention, sharded vs one device
        import dataclasses

        meshes = [(2, 2, 2), (1, 2, 4), (2, 4, 1)]  # (2, 4, 1): the matmuls per batch shard under shard_map
        cfg = dataclasses.replace(CFG, compute_dtype="bfloat16", matmul_impl="explicit_vjp", attention_impl="blockwise")
        init_state, (ref_new, ref_grads), ref_metrics, _ = run((1, 1, 1), devices[:1], cfg=cfg)
        _, (_, f32_grads), _, _ = run((1, 1, 1), devices[:1], host_state=init_state)
        report["ref_vs_f32"] = _max_rel_diff(ref_grads, f32_grads)
    step_cfg = StepConfig(num_languages=2)
    if sys.argv[1:] == ["chunked"]:  # LM head + cross-entropy in chunks, sharded, vs the unchunked reference
        # (2, 4, 1): no tensor axis, so the chunks run per shard under shard_map (one gather, one reduce)
        meshes, step_cfg = [(2, 2, 2), (1, 2, 4), (2, 4, 1)], StepConfig(num_languages=2, logits_chunk_size=T // 4)
    for shape in meshes:
        _, (new, grads), metrics, specs = run(shape, devices, host_state=init_state, cfg=cfg, step_cfg=step_cfg)
        grad_diffs = _rel_diffs(grads, ref_grads)
        diffs = [float(np.max(np.abs(a - b))) for a, b in
                 zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(ref_new.params))]
        report["meshes"][json.dumps(list(shape))] = {
            "loss": float(metrics["loss"]),
            "ref_loss": float(ref_metrics["loss"]),
            "grad_norm": float(metrics["grad_norm"]),
            "ref_grad_norm": float(ref_metrics["grad_norm"]),
            "max_param_diff": max(diffs),
            "max_rel_grad_diff": max(grad_diffs),
            "vs_f32": _max_rel_diff(grads, f32_grads) if sys.argv[1:] == ["bf16"] else None,
            "specs": specs,
            "mesh_axis_sizes": dict(zip(partitioning.MESH_AXES, shape)),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
