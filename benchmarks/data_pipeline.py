"""Throughput of the seqio input pipeline (read + clean + tokenise + mix + pack), on 1 and 2 cores.

    python benchmarks/data_pipeline.py [--data data_cache/bundled] [--vocabulary byte|PATH.model]
                                       [--batches 200] [--batch_size 8] [--seq_len 1024] [--cores 1 2]

Each core count runs in its own process pinned with ``sched_setaffinity`` (before TensorFlow starts,
so its thread pools size themselves to it). Prints a table: packed tokens/s, real (non-padding)
tokens/s and packing efficiency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def worker(args) -> dict:
    os.sched_setaffinity(0, set(range(args.worker_cores)))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from allam_jax.data.pipeline import SeqioData
    from allam_jax.data.tasks import CorpusPaths

    data_dir = Path(args.data)
    data = SeqioData(vocabulary=args.vocabulary, paths=CorpusPaths(
        ar=[str(data_dir / "ar.txt")], en=[str(data_dir / "en.txt")], parallel=[str(data_dir / "parallel.jsonl")]))
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data_cache/bundled", help="output of allam data prepare (made if missing)")
    p.add_argument("--vocabulary", default="byte", help="'byte' or a SentencePiece .model (default byte)")
    p.add_argument("--batches", type=int, default=200, help="timed batches per run (default 200)")
    p.add_argument("--batch_size", type=int, default=8, help="rows per batch (default 8)")
    p.add_argument("--seq_len", type=int, default=1024, help="packed length (default 1024)")
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="core counts to try (default 1 2)")
    p.add_argument("--worker_cores", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_cores:
        print(json.dumps(worker(args)))
        return 0
    if not (Path(args.data) / "en.txt").exists():
        from allam_jax.data import corpora

        corpora.prepare(args.data)
    rows = []
    for cores in args.cores:
        if cores > os.cpu_count():
            print(f"skipping {cores} cores: this machine has {os.cpu_count()}", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, f"--worker_cores={cores}", f"--data={args.data}",
               f"--vocabulary={args.vocabulary}", f"--batches={args.batches}", f"--batch_size={args.batch_size}",
               f"--seq_len={args.seq_len}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"vocabulary={args.vocabulary} batch={args.batch_size}x{args.seq_len} batches={args.batches}")
    print(f"{'cores':>5} {'setup s':>8} {'packed tok/s':>13} {'real tok/s':>11} {'packing':>8}")
    for r in rows:
        print(f"{r['cores']:>5} {r['setup_s']:>8.1f} {r['packed_tok_s']:>13,.0f} {r['real_tok_s']:>11,.0f} "
              f"{r['efficiency']:>8.1%}")
    return 0


if __name__ == "__main__":
    from allam_jax.core.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the allam command does (ALLAM_HUGEPAGES=0 to measure without)
    sys.exit(main())
