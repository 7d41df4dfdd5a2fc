"""Train-step throughput and MFU on the current backend, printed as a table.

    python benchmarks/train_step.py                      # tiny and ~100M configs
    python benchmarks/train_step.py --configs 100m --batch_size 8 --seq_len 512 --steps 5

MFU = model FLOPs (6N + attention, see ModelConfig.flops_per_token) x tokens/s / peak. The peak is the
data-sheet bf16 value on TPU/GPU and a measured float32 matmul peak on CPU (or --peak_flops).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from allam_jax import partitioning  # noqa: E402
from allam_jax.model import Decoder, ModelConfig  # noqa: E402
from allam_jax.train.metrics import peak_flops_per_device  # noqa: E402
from allam_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer  # noqa: E402
from allam_jax.train.state import count_params, init_train_state, state_shardings  # noqa: E402
from allam_jax.train.step import StepConfig, make_train_step  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_torch import CONFIGS, make_batch  # noqa: E402  (the same model shapes and batch in every benchmark)


def bench(name: str, batch_size: int, seq_len: int, steps: int, remat: str, peak: float) -> dict:
    cfg = ModelConfig(**CONFIGS[name], max_seq_len=seq_len, remat_policy=remat)
    pcfg = partitioning.PartitioningConfig(mesh_shape=(1, -1, 1))
    mesh = partitioning.create_mesh(pcfg)
    model = Decoder(cfg)
    opt = OptimizerConfig()
    tx = make_optimizer(opt)
    _, shardings = state_shardings(model, tx, mesh, pcfg.rules)
    bs = partitioning.batch_sharding(mesh)
    batch = make_batch(cfg, batch_size, seq_len)
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(pcfg.rules)):
        state = init_train_state(model, tx, mesh, pcfg.rules, seed=0)
        batch = {k: jax.device_put(v, bs) for k, v in batch.items()}
        step = jax.jit(make_train_step(model, tx, learning_rate_schedule(opt), StepConfig(num_languages=1)),
                       in_shardings=(shardings, bs), out_shardings=(shardings, None), donate_argnums=(0,))
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens_s = batch_size * seq_len / step_s
    return {
        "config": name,
        "params": count_params(state.params),
        "tokens": f"{batch_size}x{seq_len}",
        "compile_s": compile_s,
        "step_s": step_s,
        "tokens_s": tokens_s,
        "mfu": cfg.training_flops_per_token(seq_len) * tokens_s / (peak * jax.device_count()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,100m", help="comma-separated subset of: " + ",".join(CONFIGS))
    p.add_argument("--batch_size", type=int, default=8, help="global batch size (default 8)")
    p.add_argument("--seq_len", type=int, default=256, help="tokens per row (default 256)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the compile step (default 5)")
    p.add_argument("--remat", default="none", help="ModelConfig.remat_policy (default none)")
    p.add_argument("--peak_flops", type=float, default=None, help="peak FLOP/s per device for MFU "
                   "(default: data sheet on TPU/GPU, measured matmul peak on CPU)")
    args = p.parse_args(argv)
    peak = peak_flops_per_device(args.peak_flops)
    dev = jax.devices()[0]
    print(f"backend={jax.default_backend()} device={dev.device_kind} x{jax.device_count()} "
          f"peak={peak / 1e9:.1f} GFLOP/s/device jax={jax.__version__}")
    header = f"{'config':<6} {'params':>12} {'tokens':>9} {'compile s':>9} {'step s':>8} {'tokens/s':>10} {'MFU':>7}"
    print(header)
    print("-" * len(header))
    for name in args.configs.split(","):
        r = bench(name.strip(), args.batch_size, args.seq_len, args.steps, args.remat, peak)
        print(f"{r['config']:<6} {r['params']:>12,} {r['tokens']:>9} {r['compile_s']:>9.2f} {r['step_s']:>8.3f} "
              f"{r['tokens_s']:>10.0f} {r['mfu']:>6.1%}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from allam_jax.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the allam command does (ALLAM_HUGEPAGES=0 to measure without)
    sys.exit(main())
