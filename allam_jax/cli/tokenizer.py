"""``allam tokenizer train|merge|fertility|from-hf``: train, merge and measure tokenizers."""

from __future__ import annotations

import argparse
import json

from allam_jax.cli.common import positive_int, probability
from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import as_path
from allam_jax.tokenizer import NORMALIZATIONS
from allam_jax.tokenizer.bpe import iter_documents, merge_bpe, train_bpe
from allam_jax.tokenizer.fertility import fertility_table, format_table
from allam_jax.tokenizer.from_hf import convert_hf_json
from allam_jax.tokenizer.interface import is_bpe_path
from allam_jax.tokenizer.merge import merge_tokenizers
from allam_jax.tokenizer.spm_io import write_proto_atomically
from allam_jax.tokenizer.train import train_tokenizer


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train, merge and measure tokenizers (SentencePiece or byte-level BPE)",
                       description="Vocabulary expansion: learn Arabic pieces, merge them into a base model, "
                       "and compare fertility.")
    tok = p.add_subparsers(dest="tokenizer_command", required=True, metavar="TOKENIZER_COMMAND")
    t = tok.add_parser("train", help="train a SentencePiece BPE model or a byte-level BPE tokenizer.json",
                       description="--kind sentencepiece (default): SentencePiece BPE with byte fallback and split "
                       "digits (Llama-2 conventions), written as .model. --kind bpe: byte-level BPE (Llama-3 / Qwen "
                       "conventions) with Hugging Face tokenizers, written as tokenizer.json; with --base, pieces to "
                       "merge into that tokenizer, split by its own pre-tokenizer.")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="text files or globs, local or gs:// ('gs://b/ar/*.txt'): .txt (a document per line) or "
                   ".jsonl with a 'text' field; read streaming, nothing copied to local disk")
    t.add_argument("--vocab_size", type=positive_int, required=True,
                   help="number of pieces, specials and 256 bytes included")
    t.add_argument("--out", required=True, help="path of the .model (sentencepiece) or .json (bpe) file to write")
    t.add_argument("--kind", default="sentencepiece", choices=("sentencepiece", "bpe"),
                   help="tokenizer kind (default sentencepiece)")
    t.add_argument("--base", help="--kind bpe: the base tokenizer.json whose normaliser and pre-tokenizer the new "
                   "pieces are learned with (e.g. Llama-3.1's); without it, Llama-3's pre-tokenizer and the specials "
                   "<|pad|>, <|begin_of_text|>, <|end_of_text|> at ids 0-2")
    t.add_argument("--keep_tatweel", action="store_true", help="keep tatweel/kashida (removed by default)")
    t.add_argument("--strip_diacritics", action="store_true", help="remove Arabic diacritics (kept by default)")
    t.add_argument("--also_undiacritised", action="store_true",
                   help="give each document with Arabic diacritics twice, as written and stripped of them: pieces for "
                   "Arabic as it is usually written, from a vowelled (classical) corpus, while vowelled text keeps "
                   "pieces of its own")
    t.add_argument("--character_coverage", type=probability, default=0.9995,
                   help="share of characters covered by pieces; the rest use byte fallback (default 0.9995)")
    t.add_argument("--max_sentences", type=positive_int, default=2_000_000,
                   help="train on a uniform random sample of at most this many documents (default 2M; the output "
                   "says how many it used)")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused by default)")
    m = tok.add_parser("merge", help="append new pieces to a base model; base ids unchanged",
                       description="SentencePiece (.model): through the protobuf, base pieces keep id, score and type; "
                       "new Arabic pieces are appended; the size is padded. Byte-level BPE (tokenizer.json): base ids "
                       "and merges kept, new Arabic pieces take the ids after the base's, their merges rank first "
                       "(they only fire inside Arabic text), the size is padded with unused special tokens.")
    m.add_argument("--base", required=True, help="base model: Llama-2's tokenizer.model, or Llama-3's / Qwen's "
                   "tokenizer.json")
    m.add_argument("--add", required=True, help="tokenizer of the same kind whose new pieces are appended (allam "
                   "tokenizer train)")
    m.add_argument("--out", required=True, help="merged .model or .json to write")
    m.add_argument("--pad_to_multiple", type=positive_int, default=128,
                   help="pad the size with UNUSED pieces (default 128; 1 = off)")
    m.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (refused by default; never one of the inputs)")
    m.add_argument("--normalization", default="nfc_tatweel", choices=NORMALIZATIONS,
                   help="SentencePiece only: normalisation compiled into the merged model, so every encoder "
                   "(sentencepiece, TF-Text, "
                   "seqio) applies it: nfc_tatweel (default: canonical compositions as NFC, tatweel removed, as "
                   "training text is), nfc_tatweel_nodiacritics (Arabic diacritics removed too), base (the base "
                   "model's own)")
    m.add_argument("--max_new", type=positive_int, default=None,
                   help="keep at most this many new pieces, the first learned (e.g. 16000 from a 20K Arabic BPE, "
                   "part of which the base already has; with --pad_to_multiple 1, one stage of a progressive "
                   "expansion: every smaller such merge is a prefix of a larger one)")
    m.add_argument("--all_scripts", action="store_true",
                   help="also add pieces without Arabic letters (may change how English is split)")
    f = tok.add_parser("fertility", help="tokens per word and more, per model and language",
                       description="Tokens/word, characters/token, bytes/token, unknown and byte-fallback rates per "
                       "model, language and register; each document's language is guessed from its script.")
    f.add_argument("--model", nargs="+", required=True, metavar="MODEL",
                   help="tokenizers to compare: SentencePiece .model or byte-level BPE tokenizer.json files")
    f.add_argument("--text", nargs="+", required=True, metavar="[LABEL=]FILE",
                   help=".txt or .jsonl files; LABEL=FILE also reports that file's documents as register LABEL "
                   "(modern=news.txt); Arabic is always split into diacritised and undiacritised documents")
    f.add_argument("--json", action="store_true", help="print JSON rows instead of a table")

    h = tok.add_parser("from-hf", help="a Llama-family tokenizer.json to a SentencePiece .model",
                       description="Convert a Hugging Face tokenizer.json of the Llama family (BPE with byte fallback, "
                       "as transformers converts SentencePiece models: Llama, Llama-2, Mistral) into a SentencePiece "
                       "model that encodes the same ids, for merge, fertility and expand-checkpoint.")
    h.add_argument("--tokenizer_json", required=True, help="the tokenizer.json (local or gs://)")
    h.add_argument("--out", required=True, help=".model file to write")
    h.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused by default)")
    for parser, handler in ((t, run_train), (m, run_merge), (f, run_fertility), (h, run_from_hf)):
        parser.set_defaults(handler=handler)


def _check_out(out: str, overwrite: bool, inputs: tuple = ()) -> None:
    """A tokenizer command never replaces a file unasked, and never one of its own inputs."""
    target = as_path(out)
    for name, path in inputs:
        if as_path(path).exists() and target.exists() and str(as_path(path).resolve()) == str(target.resolve()):
            raise ConfigError(f"--out {out} is the {name} file: write the result elsewhere")
    if target.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; choose another path or pass --overwrite to replace it")


def run_train(args: argparse.Namespace) -> int:
    _check_out(args.out, args.overwrite, (("--base", args.base),) if args.base else ())
    if args.kind == "bpe":
        return _train_bpe(args)
    if args.base:
        raise ConfigError("--base is for --kind bpe (a SentencePiece model is trained on its own, then merged)")

    info = train_tokenizer(args.input, args.vocab_size, args.out, remove_tatweel=not args.keep_tatweel,
                           strip_diacritics=args.strip_diacritics, character_coverage=args.character_coverage,
                           max_sentences=args.max_sentences, also_undiacritised=args.also_undiacritised)
    print(f"wrote {info['out']}: {info['vocab_size']:,} pieces, trained on {info['sampled']:,} of "
          f"{info['documents']:,} documents from {info['files']} file(s)")
    return 0


def _train_bpe(args: argparse.Namespace) -> int:
    docs = iter_documents(args.input, not args.keep_tatweel, args.strip_diacritics, args.max_sentences)
    info = train_bpe(docs, args.vocab_size, args.out, base=args.base, progress=True)
    print(f"wrote {info['out']}: {info['vocab_size']:,} byte-level BPE pieces, trained on {info['documents']:,} "
          f"documents" + (f" with {args.base}'s pre-tokenizer" if args.base else ""))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    _check_out(args.out, args.overwrite, (("--base", args.base), ("--add", args.add)))
    kinds = {name: "tokenizer.json" if is_bpe_path(path) else ".model" for name, path in
             (("--base", args.base), ("--add", args.add), ("--out", args.out))}
    if len(set(kinds.values())) > 1:
        raise ConfigError("--base, --add and --out must be of one kind (all .model or all .json), got " +
                          ", ".join(f"{k} {v}" for k, v in kinds.items()))
    if is_bpe_path(args.base):
        return _merge_bpe(args)
    r = merge_tokenizers(args.base, args.add, args.out, args.pad_to_multiple, arabic_only=not args.all_scripts,
                         normalization=args.normalization, max_new=args.max_new)
    print(f"wrote {args.out}: {r.base_size:,} base + {r.added:,} new + {r.padding} padding = {r.merged_size:,} "
          f"pieces (skipped {r.skipped_existing:,} already in base, {r.skipped_other_script:,} without Arabic); "
          f"normalisation {r.normalization}")
    return 0


def _merge_bpe(args: argparse.Namespace) -> int:
    r = merge_bpe(args.base, args.add, args.out, args.pad_to_multiple, arabic_only=not args.all_scripts,
                  max_new=args.max_new)
    print(f"wrote {args.out}: {r.base_size:,} base ids + {r.added:,} new + {r.padding} padding = {r.merged_size:,} "
          f"ids, {r.merges_added:,} merges ranked first (skipped {r.skipped_other_script:,} pieces without Arabic); "
          "normalisation: the base's")
    return 0


def run_fertility(args: argparse.Namespace) -> int:
    rows = fertility_table(args.model, args.text)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def run_from_hf(args: argparse.Namespace) -> int:
    _check_out(args.out, args.overwrite, (("--tokenizer_json", args.tokenizer_json),))
    proto = convert_hf_json(args.tokenizer_json)
    write_proto_atomically(proto, args.out)
    byte = sum(p.type == p.BYTE for p in proto.pieces)
    print(f"wrote {args.out}: {len(proto.pieces):,} pieces ({byte} bytes), SentencePiece BPE, "
          f"dummy prefix {'on' if proto.normalizer_spec.add_dummy_prefix else 'off'}")
    return 0
