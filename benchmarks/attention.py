"""Attention speed: our Pallas flash kernel vs the XLA reference vs cuDNN (where it exists).

    python benchmarks/attention.py [--seq_lens 1024 2048 4096 8192] [--batch 2] [--heads 32] [--kv_heads 8]
                                   [--head_dim 128] [--dtype bfloat16] [--no_causal] [--segments 1]

For each T prints forward and forward+backward milliseconds and TFLOP/s (causal FLOPs counted as
half of 4·B·H·T²·D forward, and forward+backward as 3.5× the forward), plus the speed-up of the Pallas kernel
over the reference and its ratio to cuDNN. Also checks that the outputs agree. Timing: median of
``--iters`` runs after warm-up, each ended by ``block_until_ready``. On CPU the Pallas kernel runs in
interpret mode (correct, not fast): use small --seq_lens there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from allam_jax.kernels.flash_attention import BlockSizes, flash_attention
from allam_jax.kernels.reference_attention import reference_attention


def _time(fn, *args, iters: int) -> float:
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cudnn(q, k, v, segment_ids, causal):
    groups = q.shape[2] // k.shape[2]
    if segment_ids is not None:
        raise NotImplementedError("segment ids")
    del groups  # jax.nn.dot_product_attention handles GQA itself
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq_lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="sequence lengths")
    p.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--heads", type=int, default=32, help="query heads (default 32)")
    p.add_argument("--kv_heads", type=int, default=8, help="key/value heads (default 8: GQA 4)")
    p.add_argument("--head_dim", type=int, default=128, help="head dimension (default 128)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="input dtype")
    p.add_argument("--no_causal", action="store_true", help="full (bidirectional) attention")
    p.add_argument("--segments", type=int, default=1, help="packed documents per row (>1 adds segment ids)")
    p.add_argument("--block_q", type=int, default=64, help="forward query tile")
    p.add_argument("--block_k", type=int, default=64, help="forward key tile")
    p.add_argument("--block_q_bwd", type=int, default=64, help="backward query tile")
    p.add_argument("--block_k_bwd", type=int, default=64, help="backward key tile")
    p.add_argument("--num_warps", type=int, default=4, help="Triton warps, forward (default 4)")
    p.add_argument("--num_stages", type=int, default=3, help="Triton pipeline stages, forward (default 3)")
    p.add_argument("--num_warps_bwd", type=int, default=4, help="Triton warps, backward (default 4)")
    p.add_argument("--num_stages_bwd", type=int, default=2, help="Triton pipeline stages, backward (default 2)")
    p.add_argument("--impls", nargs="+", default=["pallas", "xla_reference", "cudnn"],
                   help="implementations to time (default all that exist here)")
    p.add_argument("--iters", type=int, default=10, help="timed runs per measurement (median)")
    args = p.parse_args(argv)

    backend = jax.default_backend()
    interpret = backend not in ("gpu", "tpu")
    dtype = jnp.dtype(args.dtype)
    causal = not args.no_causal
    blocks = BlockSizes(args.block_q, args.block_k, args.block_q_bwd, args.block_k_bwd, args.num_warps,
                        args.num_stages, args.num_warps_bwd, args.num_stages_bwd)
    impls = {
        "pallas": lambda q, k, v, s: flash_attention(q, k, v, segment_ids=s, causal=causal, block_sizes=blocks,
                                                     interpret=interpret),
        "xla_reference": lambda q, k, v, s: reference_attention(q, k, v, segment_ids=s, causal=causal),
    }
    if backend == "gpu" and args.segments == 1:
        impls["cudnn"] = lambda q, k, v, s: _cudnn(q, k, v, s, causal)

    impls = {name: fn for name, fn in impls.items() if name in args.impls}
    print(f"blocks: {blocks}")
    print(f"device: {jax.devices()[0].device_kind} ({backend}); B={args.batch} H={args.heads} K={args.kv_heads} "
          f"D={args.head_dim} {args.dtype} causal={causal} segments={args.segments}")
    header = f"{'T':>6} {'impl':<14} {'fwd ms':>9} {'fwd TF/s':>9} {'f+b ms':>9} {'f+b TF/s':>9} {'max|Δ|':>9}"
    print(header)
    print("-" * len(header))
    for t in args.seq_lens:
        keys = jax.random.split(jax.random.PRNGKey(t), 4)
        q = jax.random.normal(keys[0], (args.batch, t, args.heads, args.head_dim), dtype)
        k = jax.random.normal(keys[1], (args.batch, t, args.kv_heads, args.head_dim), dtype)
        v = jax.random.normal(keys[2], (args.batch, t, args.kv_heads, args.head_dim), dtype)
        seg = None
        if args.segments > 1:
            seg = jnp.broadcast_to(jnp.arange(t) * args.segments // t, (args.batch, t)).astype(jnp.int32)
        flops = 4 * args.batch * args.heads * t * t * args.head_dim * (0.5 if causal else 1.0)
        results = {}
        for name, fn in impls.items():
            fwd = jax.jit(fn)
            loss = jax.jit(jax.grad(lambda q, k, v, s, fn=fn: jnp.sum(fn(q, k, v, s).astype(jnp.float32) ** 2),
                                    argnums=(0, 1, 2)))
            try:
                out = fwd(q, k, v, seg)
                t_fwd = _time(fwd, q, k, v, seg, iters=args.iters)
                t_fb = _time(loss, q, k, v, seg, iters=args.iters)
            except Exception as e:  # noqa: BLE001 - a backend without an implementation is reported, not fatal
                print(f"{t:>6} {name:<14} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                continue
            results[name] = (t_fwd, t_fb, out)
            ref = results.get("pallas", (None, None, out))[2]
            delta = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
            print(f"{t:>6} {name:<14} {t_fwd * 1e3:>9.3f} {flops / t_fwd / 1e12:>9.1f} {t_fb * 1e3:>9.3f} "
                  f"{3.5 * flops / t_fb / 1e12:>9.1f} {delta:>9.2e}")
        if "pallas" in results:
            pf, pb, _ = results["pallas"]
            line = []
            if "xla_reference" in results:
                rf, rb, _ = results["xla_reference"]
                line.append(f"pallas vs reference: fwd {rf / pf:.2f}x, fwd+bwd {rb / pb:.2f}x faster")
            if "cudnn" in results:
                cf, cb, _ = results["cudnn"]
                line.append(f"pallas / cudnn time: fwd {pf / cf:.2f}, fwd+bwd {pb / cb:.2f}")
            print(f"{'':>6} " + "; ".join(line))
    return 0


if __name__ == "__main__":
    from allam_jax.core.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the allam command does (ALLAM_HUGEPAGES=0 to measure without)
    sys.exit(main())
