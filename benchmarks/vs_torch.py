"""allam-jax against Hugging Face transformers + PyTorch on the same Llama, batch and optimizer, in one run.

    python benchmarks/vs_torch.py                               # tiny and ~100M, float32 and bf16
    python benchmarks/vs_torch.py --configs 100m --precisions bf16 --rounds 3 --steps 2 --batch_size 4

Both frameworks start from the same weights (ours exported with the Hugging Face tensor map), train on the
same batch with AdamW (betas 0.9/0.95, weight decay 0.1 except on norm scales, global-norm clipping 1.0,
constant learning rate), and alternate: a round times ``--steps`` steps of each. The first-step losses are
printed side by side as a check that both compute the same model. MFU is model FLOPs (6N + attention)
per second over the best matmul rate measured here with either framework in that precision.

Precisions: ``float32`` everywhere (PyTorch's default), and ``bf16`` mixed precision: float32 parameters and
optimizer, bf16 matmul inputs with float32 accumulation (allam-jax: ``compute_dtype='bfloat16'``,
``matmul_impl='explicit_vjp'``; PyTorch: ``torch.autocast('cpu', torch.bfloat16)``). The column
``vs torch f32`` divides by PyTorch's float32 run of the same config, the baseline a user gets by default.

Also measured (allam-jax only): KV-cache decoding tokens/s, the seqio data pipeline's tokens/s on the
bundled corpora (if ``allam data prepare`` has run), and the checkpoint save's blocking time as a
fraction of step time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# PyTorch's OpenMP threads otherwise spin for a while after each parallel region, stealing the cores from
# the JAX step that follows (alternating runs on a small machine); passive waiting is fair to both.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from allam_jax.core import partitioning  # noqa: E402
from allam_jax.model import Decoder, ModelConfig  # noqa: E402
from allam_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer  # noqa: E402
from allam_jax.core.trees import count_params  # noqa: E402
from allam_jax.train.state import init_train_state, state_shardings  # noqa: E402
from allam_jax.objectives.lm import LmObjective, StepConfig  # noqa: E402
from allam_jax.train.step import make_train_step  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=384, d_model=64, num_layers=2, num_heads=8, num_kv_heads=4, mlp_dim=192),
    "100m": dict(vocab_size=32000, d_model=768, num_layers=12, num_heads=12, num_kv_heads=12, mlp_dim=2048),
}
PRECISIONS = {
    "float32": dict(compute_dtype="float32", matmul_impl="explicit_vjp"),
    "bf16": dict(compute_dtype="bfloat16", matmul_impl="explicit_vjp"),
}
OPTIMIZER = OptimizerConfig(learning_rate=1e-4, warmup_steps=0, schedule="constant", beta1=0.9, beta2=0.95,
                            eps=1e-8, weight_decay=0.1, clip_norm=1.0)


def make_batch(cfg: ModelConfig, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "positions": np.tile(np.arange(seq_len), (batch_size, 1)).astype(np.int32),
            "segment_ids": np.ones((batch_size, seq_len), np.int32),
            "loss_weights": np.ones((batch_size, seq_len), np.float32),
            "lang_id": np.zeros((batch_size, seq_len), np.int32)}


class JaxTrainer:
    def __init__(self, cfg: ModelConfig, batch: dict):
        self.partitioner = partitioning.Partitioner.create(partitioning.PartitioningConfig(mesh_shape=(1, -1, 1)))
        model = Decoder(cfg)
        tx = make_optimizer(OPTIMIZER)
        _, shardings = state_shardings(model, tx, self.partitioner)
        bs = self.partitioner.batch_sharding
        with self.partitioner.activate():
            self.state = init_train_state(model, tx, self.partitioner, seed=0)
            self.batch = {k: jax.device_put(v, bs) for k, v in batch.items()}
        self.initial_params = jax.device_get(self.state.params)
        self.step_fn = jax.jit(make_train_step(model, tx, learning_rate_schedule(OPTIMIZER), LmObjective(StepConfig(num_languages=1))),
                               in_shardings=(shardings, bs), out_shardings=(shardings, None), donate_argnums=(0,))

    def step(self) -> float:
        with self.partitioner.activate():
            self.state, metrics = self.step_fn(self.state, self.batch)
            return float(metrics["loss"])  # blocks until the step is done


class TorchTrainer:
    def __init__(self, cfg: ModelConfig, params, batch: dict, compile_model: bool = False, bf16: bool = False):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from allam_jax.convert.hf_llama import hf_config_from, params_to_hf

        self.torch = torch
        hf = hf_config_from(cfg)
        hf.pop("architectures"), hf.pop("torch_dtype")
        self.model = LlamaForCausalLM(LlamaConfig(**hf, attn_implementation="sdpa"))
        state = {k: torch.from_numpy(np.array(v)) for k, v in params_to_hf(params, cfg)}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "rotary" not in m]:
            raise RuntimeError(f"weights do not map: missing {missing}, unexpected {unexpected}")
        self.model.train()
        decay = [p for n, p in self.model.named_parameters() if "norm" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if "norm" in n]
        o = OPTIMIZER
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=o.learning_rate,
                                     betas=(o.beta1, o.beta2), eps=o.eps)
        self.inputs = torch.from_numpy(batch["inputs"].astype(np.int64))
        self.targets = torch.from_numpy(batch["targets"].astype(np.int64))
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.bf16 = bf16

    def step(self) -> float:
        torch = self.torch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(input_ids=self.inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), self.targets.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), OPTIMIZER.clip_norm)
        self.opt.step()
        return float(loss.detach())


def matmul_peak(precision: str, n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Best matmul FLOP/s in this precision with JAX and with PyTorch on this CPU."""
    import jax.numpy as jnp
    import torch

    from allam_jax.train.metrics import measure_matmul_peak

    bf16 = precision == "bf16"
    a = torch.ones(n, n, dtype=torch.bfloat16 if bf16 else torch.float32)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    jax_peak = measure_matmul_peak(n, repeats, jnp.bfloat16 if bf16 else jnp.float32)
    return {"jax": jax_peak, "torch": 2.0 * n**3 / best}


def compare(name: str, precision: str, batch_size: int, seq_len: int, rounds: int, steps: int, peak: float,
            compile_torch: bool, scan_layers: bool, attention: str) -> dict:
    cfg = ModelConfig(**CONFIGS[name], max_seq_len=seq_len, scan_layers=scan_layers, attention_impl=attention,
                      **PRECISIONS[precision])
    batch = make_batch(cfg, batch_size, seq_len)
    jx = JaxTrainer(cfg, batch)
    pt = TorchTrainer(cfg, jx.initial_params, batch, compile_torch, bf16=precision == "bf16")
    t0 = time.perf_counter()
    first = {"jax": jx.step()}
    warm = {"jax": time.perf_counter() - t0}
    t0 = time.perf_counter()
    first["torch"] = pt.step()
    warm["torch"] = time.perf_counter() - t0
    times: dict[str, list[float]] = {"jax": [], "torch": []}
    for _ in range(rounds):
        for key, trainer in (("jax", jx), ("torch", pt)):
            for _ in range(steps):
                t0 = time.perf_counter()
                trainer.step()
                times[key].append(time.perf_counter() - t0)
    tokens = batch_size * seq_len
    flops = cfg.training_flops_per_token(seq_len)
    out = {"config": name, "precision": precision, "params": count_params(jx.initial_params),
           "tokens": f"{batch_size}x{seq_len}",
           "first_loss": first, "warmup_s": warm}
    for key in ("jax", "torch"):
        step_s = float(np.median(times[key]))
        out[key] = {"step_s": step_s, "tokens_s": tokens / step_s, "mfu": flops * tokens / step_s / peak}
    out["ratio"] = out["jax"]["tokens_s"] / out["torch"]["tokens_s"]
    out["cfg"], out["trainer"] = cfg, jx
    return out


def decode_tokens_per_s(cfg: ModelConfig, params, batch: int = 8, prompt: int = 32, new: int = 64) -> float:
    from types import SimpleNamespace

    from allam_jax.inference.generate import Generator, SamplingConfig

    gen = Generator(cfg, params, SimpleNamespace(eos_id=-1), bos_id=1)
    prompts = [list(range(3, 3 + prompt))] * batch
    sampling = SamplingConfig(max_new_tokens=new)
    for _ in gen.stream(prompts, sampling):  # compiles the prefill and the one-token step
        pass
    t0 = time.perf_counter()
    n = sum(1 for _ in gen.stream(prompts, sampling))
    return batch * n / (time.perf_counter() - t0)


def checkpoint_blocking_s(trainer: JaxTrainer) -> tuple[float, float]:
    """(seconds the loop is blocked by an async save, seconds until the save is on disk)."""
    from allam_jax.checkpoint.regular import Checkpointer

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(tmp, save_every=1, keep=1, async_save=True)
        t0 = time.perf_counter()
        ckpt.save(1, trainer.state, {"batches": 1}, force=True)
        blocked = time.perf_counter() - t0
        ckpt.wait()
        total = time.perf_counter() - t0
        ckpt.close()
    return blocked, total


def data_tokens_per_s(data_dir: str, seq_len: int, batch_size: int, batches: int = 50) -> float | None:
    from pathlib import Path

    if not (Path(data_dir) / "en.txt").is_file():
        return None
    from allam_jax.data.pipeline import SeqioData
    from allam_jax.data.tasks import CorpusPaths

    d = Path(data_dir)
    data = SeqioData(vocabulary="byte", paths=CorpusPaths(ar=[str(d / "ar.txt")], en=[str(d / "en.txt")],
                                                          parallel=[str(d / "parallel.jsonl")]))
    it = data.make_iterator(seq_len, batch_size)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size * seq_len / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,100m", help="comma-separated subset of: " + ",".join(CONFIGS))
    p.add_argument("--batch_size", type=int, default=8, help="rows per step (default 8)")
    p.add_argument("--seq_len", type=int, default=256, help="tokens per row (default 256)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per framework per round (default 3)")
    p.add_argument("--precisions", default="float32,bf16", help="comma-separated subset of: float32 (both "
                   "frameworks in float32), bf16 (bf16 matmuls with float32 accumulation and float32 parameters; "
                   "PyTorch under CPU autocast). Default both")
    p.add_argument("--torch_compile", action="store_true", help="also torch.compile the PyTorch model")
    p.add_argument("--scan", action="store_true", help="allam-jax with scanned layers (ModelConfig.scan_layers; "
                   "default unrolled, faster on CPU)")
    p.add_argument("--attention", default="blockwise", help="ModelConfig.attention_impl for allam-jax (default "
                   "blockwise, the CPU choice; 'reference' for plain XLA)")
    p.add_argument("--data", default="data_cache/bundled", help="bundled corpora for the data-pipeline row")
    p.add_argument("--checkpoint_every", type=int, default=100, help="steps between saves for the overhead row")
    args = p.parse_args(argv)

    import torch
    import transformers

    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    bad = [x for x in precisions if x not in PRECISIONS]
    if bad or not precisions:
        p.error(f"--precisions takes a comma-separated subset of {sorted(PRECISIONS)}, got {args.precisions!r}")
    print(f"jax {jax.__version__} ({jax.devices()[0].device_kind} x{jax.device_count()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, {os.cpu_count()} CPUs")
    print(f"allam-jax: attention_impl={args.attention}, scan_layers={args.scan}; process GLIBC_TUNABLES="
          f"{os.environ.get('GLIBC_TUNABLES', '(unset)')} (both frameworks run in this process)")
    peak = {}
    for precision in precisions:
        peaks = matmul_peak(precision)
        peak[precision] = max(peaks.values())
        print(f"{precision} matmul peak: jax {peaks['jax'] / 1e9:.1f} GFLOP/s, torch {peaks['torch'] / 1e9:.1f} "
              f"GFLOP/s; MFU below uses {peak[precision] / 1e9:.1f}")
    header = (f"{'config':<6} {'precision':>9} {'params':>12} {'tokens':>8} {'first loss jax/torch':>21} "
              f"{'jax tok/s':>10} {'torch tok/s':>11} {'jax/torch':>9} {'vs torch f32':>12} {'jax MFU':>8} "
              f"{'torch MFU':>9}")
    print(header)
    print("-" * len(header))
    extras = []
    for name in args.configs.split(","):
        torch_f32 = None
        for precision in precisions:
            r = compare(name.strip(), precision, args.batch_size, args.seq_len, args.rounds, args.steps,
                        peak[precision], args.torch_compile, args.scan, args.attention)
            if precision == "float32":
                torch_f32 = r["torch"]["tokens_s"]
            loss = f"{r['first_loss']['jax']:.4f}/{r['first_loss']['torch']:.4f}"
            vs_f32 = f"{r['jax']['tokens_s'] / torch_f32:.2f}x" if torch_f32 else "-"
            print(f"{r['config']:<6} {precision:>9} {r['params']:>12,} {r['tokens']:>8} {loss:>21} "
                  f"{r['jax']['tokens_s']:>10,.0f} {r['torch']['tokens_s']:>11,.0f} {r['ratio']:>8.2f}x "
                  f"{vs_f32:>12} {r['jax']['mfu']:>7.1%} {r['torch']['mfu']:>8.1%}")
            sys.stdout.flush()
            blocked, total = checkpoint_blocking_s(r["trainer"])
            extras.append((f"{name} {precision}", decode_tokens_per_s(r["cfg"], r["trainer"].initial_params),
                           blocked, total, r["jax"]["step_s"]))
    print()
    print(f"{'config':<14} {'decode tok/s (KV cache, 8x64)':>30} {'ckpt blocking s':>16} {'ckpt on disk s':>15} "
          f"{'blocking / step':>16} {f'overhead @ every {args.checkpoint_every}':>20}")
    for name, decode, blocked, total, step_s in extras:
        print(f"{name:<14} {decode:>30,.0f} {blocked:>16.3f} {total:>15.3f} {blocked / step_s:>16.2f} "
              f"{blocked / (args.checkpoint_every * step_s):>20.3%}")
    rate = data_tokens_per_s(args.data, args.seq_len, args.batch_size)
    print()
    print(f"data pipeline (seqio mixture, byte vocabulary, {args.batch_size}x{args.seq_len}): "
          + (f"{rate:,.0f} packed tokens/s" if rate else f"skipped: no corpora in {args.data} (allam data prepare)"))
    return 0


if __name__ == "__main__":
    from allam_jax.core.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the allam command does (ALLAM_HUGEPAGES=0 to measure without)
    sys.exit(main())
