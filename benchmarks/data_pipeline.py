"""The input pipelines against each other: on-the-fly seqio (read + clean + tokenise + mix + pack while training)
and cached tasks (``allam data cache`` did the first three offline; batches are a function of the step).

    python benchmarks/data_pipeline.py [--data data_cache/bundled] [--cache data_cache/bench_cached]
                                       [--vocabulary byte|PATH.model] [--batches 200] [--batch_size 8]
                                       [--seq_len 1024] [--cores 1 2] [--pipelines seqio cached]
                                       [--restore_at 10 1000 100000 1000000] [--max_replay 2000]

Table 1, throughput: each (pipeline, core count) runs in its own process pinned with ``sched_setaffinity``
(before TensorFlow starts, so its thread pools size themselves to it): packed tokens/s, real (non-padding)
tokens/s and packing efficiency. Table 2, restore: seconds from a fresh iterator to the first batch after
``set_state(batches=N)`` (what a resumed run waits), one process per cell. The seqio pipeline restores by
replaying N batches: positions beyond ``--max_replay`` are not run but estimated from its measured replay
rate (marked ``est.``). The cache is built with the Beam DirectRunner when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _data(args):
    data_dir = Path(args.data)
    if args.pipeline == "cached":
        from allam_jax.data.cached_pipeline import CachedData

        return CachedData(cache_dir=args.cache, vocabulary=args.vocabulary)
    from allam_jax.data.pipeline import SeqioData
    from allam_jax.data.tasks import CorpusPaths

    return SeqioData(vocabulary=args.vocabulary, paths=CorpusPaths(
        ar=[str(data_dir / "ar.txt")], en=[str(data_dir / "en.txt")], parallel=[str(data_dir / "parallel.jsonl")]))


def worker(args) -> dict:
    os.sched_setaffinity(0, set(range(args.worker_cores)))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    data = _data(args)
    if args.worker_restore is not None:
        t0 = time.perf_counter()
        it = data.make_iterator(args.seq_len, args.batch_size)
        it.set_state({"batches": args.worker_restore})
        next(it)
        return {"restore_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    it = data.make_iterator(args.seq_len, args.batch_size)
    for _ in range(5):
        next(it)
    setup = time.perf_counter() - t0
    real = 0
    t0 = time.perf_counter()
    for _ in range(args.batches):
        real += int(next(it)["loss_weights"].sum())
    elapsed = time.perf_counter() - t0
    packed = args.batches * args.batch_size * args.seq_len
    return {"cores": args.worker_cores, "setup_s": setup, "packed_tok_s": packed / elapsed,
            "real_tok_s": real / elapsed, "efficiency": real / packed}


def _run(args, pipeline: str, cores: int, restore=None) -> dict:
    cmd = [sys.executable, __file__, f"--worker_cores={cores}", f"--data={args.data}", f"--cache={args.cache}",
           f"--vocabulary={args.vocabulary}", f"--batches={args.batches}", f"--batch_size={args.batch_size}",
           f"--seq_len={args.seq_len}", f"--pipeline={pipeline}"]
    if restore is not None:
        cmd.append(f"--worker_restore={restore}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data_cache/bundled", help="output of allam data prepare (made if missing)")
    p.add_argument("--vocabulary", default="byte", help="'byte' or a SentencePiece .model (default byte)")
    p.add_argument("--batches", type=int, default=200, help="timed batches per run (default 200)")
    p.add_argument("--batch_size", type=int, default=8, help="rows per batch (default 8)")
    p.add_argument("--seq_len", type=int, default=1024, help="packed length (default 1024)")
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="core counts to try (default 1 2)")
    p.add_argument("--cache", default="data_cache/bench_cached", help="cached tasks of --data (built if missing)")
    p.add_argument("--pipelines", nargs="+", default=["seqio", "cached"], choices=["seqio", "cached"],
                   help="pipelines to measure (default both)")
    p.add_argument("--restore_at", type=int, nargs="+", default=[10, 1000, 100_000, 1_000_000],
                   help="batch positions to restore at (default 10 1000 100000 1000000)")
    p.add_argument("--max_replay", type=int, default=2000, help="largest position the replaying seqio pipeline "
                   "is really restored at; beyond it the time is estimated (default 2000)")
    p.add_argument("--pipeline", default="seqio", help=argparse.SUPPRESS)
    p.add_argument("--worker_cores", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker_restore", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_cores:
        print(json.dumps(worker(args)))
        return 0
    if not (Path(args.data) / "en.txt").exists():
        from allam_jax.data import corpora

        corpora.prepare(args.data)
    if "cached" in args.pipelines and not (Path(args.cache) / "en_pretrain" / "COMPLETED").exists():
        from allam_jax.data.cache_job import run_cache
        from allam_jax.data.sources import CleaningConfig, ParallelRendering
        from allam_jax.data.tasks import CorpusPaths

        d = Path(args.data)
        run_cache(args.cache, CorpusPaths(ar=[str(d / "ar.txt")], en=[str(d / "en.txt")],
                                          parallel=[str(d / "parallel.jsonl")]),
                  args.vocabulary, CleaningConfig(), ParallelRendering(), num_shards=2, overwrite=True)
    cores_ok = [c for c in args.cores if c <= os.cpu_count()]
    for c in set(args.cores) - set(cores_ok):
        print(f"skipping {c} cores: this machine has {os.cpu_count()}", file=sys.stderr)
    print(f"vocabulary={args.vocabulary} batch={args.batch_size}x{args.seq_len} batches={args.batches}")
    print(f"{'pipeline':>8} {'cores':>5} {'setup s':>8} {'packed tok/s':>13} {'real tok/s':>11} {'packing':>8}")
    for pipeline in args.pipelines:
        for cores in cores_ok:
            r = _run(args, pipeline, cores)
            print(f"{pipeline:>8} {r['cores']:>5} {r['setup_s']:>8.1f} {r['packed_tok_s']:>13,.0f} "
                  f"{r['real_tok_s']:>11,.0f} {r['efficiency']:>8.1%}", flush=True)
    cores = max(cores_ok)
    print(f"\nrestore: seconds from a fresh iterator to the first batch at position N ({cores} cores)")
    print(f"{'pipeline':>8} " + " ".join(f"{n:>12,}" for n in args.restore_at))
    for pipeline in args.pipelines:
        cells, measured = [], {}
        for n in args.restore_at:
            if pipeline == "seqio" and n > args.max_replay:
                if len(measured) >= 2:  # the replay is linear: fit time = a + b * n on the measured points
                    (n0, t0), (n1, t1) = sorted(measured.items())[0], sorted(measured.items())[-1]
                    b = (t1 - t0) / (n1 - n0)
                    cells.append(f"{t0 + b * (n - n0):>8,.0f} est.")
                else:
                    cells.append(f"{'-':>12}")
                continue
            measured[n] = _run(args, pipeline, cores, restore=n)["restore_s"]
            cells.append(f"{measured[n]:>12.2f}")
        print(f"{pipeline:>8} " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    from allam_jax.core.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the allam command does (ALLAM_HUGEPAGES=0 to measure without)
    sys.exit(main())
