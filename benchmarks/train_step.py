"""Train-step throughput and MFU on the current backend, printed as a table.

    python benchmarks/train_step.py                      # tiny and ~100M configs
    python benchmarks/train_step.py --configs 100m --batch_size 8 --seq_len 512 --steps 5
    python benchmarks/train_step.py --gin_file models/small_100m.gin --gin_file perf/cpu_bf16.gin \
        --gin_param "ModelConfig.remat_policy='dots'"     # any gin-defined model, mesh and precision

With ``--gin_file``/``--gin_param`` the model (``ModelConfig``) and the mesh (``PartitioningConfig``) come from
gin, as ``allam train`` builds them, and ``--configs`` is not used: the way to measure a tuned config such as
``gin_configs/perf/*.gin`` on the machine it is meant for.

MFU = model FLOPs (6N + attention, see ModelConfig.flops_per_token) x tokens/s / peak. The peak is the
data-sheet bf16 value on TPU/GPU and, on CPU, a matmul peak measured in the model's compute dtype (or
--peak_flops).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from allam_jax.core import partitioning  # noqa: E402
from allam_jax.model import Decoder, ModelConfig  # noqa: E402
from allam_jax.core.errors import ConfigError  # noqa: E402
from allam_jax.train.metrics import peak_flops_per_device  # noqa: E402
from allam_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer  # noqa: E402
from allam_jax.core.trees import count_params  # noqa: E402
from allam_jax.train.state import init_train_state, state_shardings  # noqa: E402
from allam_jax.objectives.lm import LmObjective, StepConfig  # noqa: E402
from allam_jax.train.step import make_train_step  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_torch import CONFIGS, make_batch  # noqa: E402  (the same model shapes and batch in every benchmark)


def bench(name: str, cfg: ModelConfig, pcfg: partitioning.PartitioningConfig, batch_size: int, seq_len: int,
          steps: int, peak: float, warmup: int = 3) -> dict:
    """Compiles the train step of ``cfg`` on the mesh of ``pcfg``, runs ``warmup`` untimed steps (the first ones
    after compiling run slower: allocator and page faults) and times ``steps`` more."""
    partitioner = partitioning.Partitioner.create(pcfg)
    model = Decoder(cfg)
    opt = OptimizerConfig()
    tx = make_optimizer(opt)
    _, shardings = state_shardings(model, tx, partitioner)
    bs = partitioner.batch_sharding
    batch = make_batch(cfg, batch_size, seq_len)
    with partitioner.activate():
        state = init_train_state(model, tx, partitioner, seed=0)
        batch = {k: jax.device_put(v, bs) for k, v in batch.items()}
        step = jax.jit(make_train_step(model, tx, learning_rate_schedule(opt), LmObjective(StepConfig(num_languages=1))),
                       in_shardings=(shardings, bs), out_shardings=(shardings, None), donate_argnums=(0,))
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        for _ in range(warmup):
            state, m = step(state, batch)
        jax.block_until_ready(m)
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
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the compile step (default 3)")
    p.add_argument("--remat", default="none", help="ModelConfig.remat_policy (default none; with --gin_file bind "
                   "ModelConfig.remat_policy instead)")
    p.add_argument("--peak_flops", type=float, default=None, help="peak FLOP/s per device for MFU "
                   "(default: data sheet on TPU/GPU, measured matmul peak on CPU)")
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; relative to gin_configs/ "
                   "or the current directory) defining ModelConfig and PartitioningConfig; replaces --configs")
    p.add_argument("--gin_param", action="append", default=[], help="gin binding (repeatable), e.g. "
                   "\"ModelConfig.attention_impl='pallas'\"")
    args = p.parse_args(argv)
    if args.gin_file or args.gin_param:
        from allam_jax import gin_setup

        try:
            gin_setup.parse(args.gin_file, args.gin_param)
            cfg = gin_setup.model_config()
            pcfg = gin_setup.partitioning_config()
        except (ConfigError, FileNotFoundError) as e:
            print(f"train_step.py: {e}", file=sys.stderr)
            return 2
        cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, args.seq_len))
        runs = [("+".join(os.path.basename(f).removesuffix(".gin") for f in args.gin_file) or "gin", cfg, pcfg)]
    else:
        runs = [(name.strip(), ModelConfig(**CONFIGS[name.strip()], max_seq_len=args.seq_len, remat_policy=args.remat),
                 partitioning.PartitioningConfig(mesh_shape=(1, -1, 1))) for name in args.configs.split(",")]
    peak = peak_flops_per_device(args.peak_flops, runs[0][1].dtype)
    dev = jax.devices()[0]
    print(f"backend={jax.default_backend()} device={dev.device_kind} x{jax.device_count()} "
          f"peak={peak / 1e9:.1f} GFLOP/s/device jax={jax.__version__}")
    width = max(6, *(len(name) for name, _, _ in runs))
    header = (f"{'config':<{width}} {'params':>12} {'tokens':>9} {'compile s':>9} {'step s':>8} {'tokens/s':>10} "
              f"{'MFU':>7}")
    print(header)
    print("-" * len(header))
    for name, cfg, pcfg in runs:
        r = bench(name, cfg, pcfg, args.batch_size, args.seq_len, args.steps, peak, args.warmup)
        print(f"{r['config']:<{width}} {r['params']:>12,} {r['tokens']:>9} {r['compile_s']:>9.2f} {r['step_s']:>8.3f} "
              f"{r['tokens_s']:>10.0f} {r['mfu']:>6.1%}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from allam_jax.core.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the allam command does (ALLAM_HUGEPAGES=0 to measure without)
    sys.exit(main())
