"""Train a SentencePiece BPE model (Llama-2 conventions) on normalised text files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import sentencepiece as spm

from allam_jax.data.text_files import read_documents
from allam_jax.data.normalize import normalize_text
from allam_jax.tokenizer.spm_io import TokenizerError, load_proto, write_proto_atomically


def train_tokenizer(
    inputs: Sequence[str],
    vocab_size: int,
    out: str,
    *,
    model_type: str = "bpe",
    remove_tatweel: bool = True,
    strip_diacritics: bool = False,
    character_coverage: float = 0.9995,
    max_sentences: int = 2_000_000,
) -> dict:
    """Trains on the documents of ``inputs`` (.txt lines or .jsonl 'text') and writes ``out``.

    Matches Llama-2's tokenizer: byte fallback, digits split one by one, identity normalisation
    (our own ``normalize_text`` runs first), a dummy prefix, whitespace kept as is, unk/bos/eos = 0/1/2.
    """
    if vocab_size < 300 and model_type == "bpe":
        raise TokenizerError(f"--vocab_size {vocab_size} is too small: byte fallback alone needs 256 + 3 pieces")
    n_docs = 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        with open(corpus, "w", encoding="utf-8") as f:
            for path in inputs:
                for text, _ in read_documents(path):
                    line = normalize_text(text, remove_tatweel, strip_diacritics).replace("\n", " ")
                    if line.strip():
                        f.write(line + "\n")
                        n_docs += 1
        prefix = Path(tmp) / "sp"
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type=model_type,
                character_coverage=character_coverage, byte_fallback=True, split_digits=True,
                normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1, input_sentence_size=max_sentences,
                shuffle_input_sentence=True, max_sentence_length=16384, num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise TokenizerError(f"SentencePiece training failed: {str(e).splitlines()[-1]}") from None
        proto = load_proto(str(prefix) + ".model")
        write_proto_atomically(proto, out)
    return {"documents": n_docs, "vocab_size": len(proto.pieces), "out": out}
