"""Tokenizer encode throughput (one core) and the fertility table on the bundled corpora.

    python benchmarks/tokenizer.py [--data data_cache/bundled] [--base_vocab 2000] [--arabic_vocab 2000]

Trains a base tokenizer on English only and an Arabic one, merges them, then prints tokens/s for
each model and the fertility table (English vs Arabic, before vs after the merge).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from allam_jax.data import corpora
from allam_jax.tokenizer.fertility import fertility_table, format_table
from allam_jax.tokenizer.merge import merge_tokenizers
from allam_jax.tokenizer.spm_io import load_processor
from allam_jax.tokenizer.train import train_tokenizer


def encode_throughput(model: str, lines: list[str], repeats: int = 3) -> tuple[float, float]:
    """Best-of-N (tokens/s, MB/s) encoding ``lines`` one at a time on one thread."""
    sp = load_processor(model)
    nbytes = sum(len(x.encode("utf-8")) for x in lines)
    best = float("inf")
    tokens = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = sum(len(sp.encode(x)) for x in lines)
        best = min(best, time.perf_counter() - t0)
    return tokens / best, nbytes / best / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data_cache/bundled", help="output of allam data prepare (made if missing)")
    p.add_argument("--base_vocab", type=int, default=2000, help="English-only base tokenizer size")
    p.add_argument("--arabic_vocab", type=int, default=2000, help="Arabic tokenizer size")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "en.txt").exists():
        corpora.prepare(str(data))
    en, ar = str(data / "en.txt"), str(data / "ar.txt")
    with tempfile.TemporaryDirectory() as tmp:
        base, add, merged = (os.path.join(tmp, n) for n in ("base.model", "arabic.model", "merged.model"))
        train_tokenizer([en], args.base_vocab, base)
        train_tokenizer([ar], args.arabic_vocab, add)
        merge_tokenizers(base, add, merged)
        lines = Path(en).read_text(encoding="utf-8").splitlines() + Path(ar).read_text(encoding="utf-8").splitlines()
        print(f"{'model':<14} {'tokens/s':>12} {'MB/s':>8}   (one thread, {len(lines):,} lines, en + ar)")
        for name, path in (("base", base), ("arabic", add), ("merged", merged)):
            tps, mbs = encode_throughput(path, lines)
            print(f"{name:<14} {tps:>12,.0f} {mbs:>8.2f}")
        print()
        rows = fertility_table([base, merged], [en, ar])
        for r in rows:
            r["model"] = Path(r["model"]).stem
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    from allam_jax.core.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as the allam command does (ALLAM_HUGEPAGES=0 to measure without)
    sys.exit(main())
