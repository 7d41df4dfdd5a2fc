"""Train a SentencePiece BPE model (Llama-2 conventions) on normalised text files."""

from __future__ import annotations

import io
import logging
import os
from typing import Iterator, Sequence

import sentencepiece as spm

from allam_jax.core import paths
from allam_jax.data.normalize import ARABIC_DIACRITICS, normalize_text
from allam_jax.data.text_files import read_documents
from allam_jax.tokenizer.spm_io import ModelProto, TokenizerError, write_proto_atomically

log = logging.getLogger(__name__)


def input_files(patterns: Sequence[str]) -> list[str]:
    """Every file of ``patterns`` (paths or globs, local or ``gs://``); one matching nothing is an error."""
    files = []
    for pattern in patterns:
        matched = paths.glob(pattern)
        if not matched:
            raise TokenizerError(f"no input file matches {pattern}")
        files += matched
    return files


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
    also_undiacritised: bool = False,
) -> dict:
    """Trains on the documents of ``inputs`` (paths or globs of .txt lines or .jsonl 'text', local or
    ``gs://``) and writes ``out``. Documents stream into SentencePiece (no local copy of the corpus), which
    keeps a uniform random sample of ``max_sentences`` of them (reservoir sampling) when there are more.

    Matches Llama-2's tokenizer: byte fallback, digits split one by one, identity normalisation
    (our own ``normalize_text`` runs first), a dummy prefix, whitespace kept as is, unk/bos/eos = 0/1/2.

    ``also_undiacritised``: a document with Arabic diacritics is given twice, as written and stripped of them, so
    a corpus of vowelled (classical) text still yields the pieces of Arabic as it is usually written while vowelled
    text keeps pieces of its own (stripping alone leaves the marks to byte fallback).
    """
    if vocab_size < 300 and model_type == "bpe":
        raise TokenizerError(f"--vocab_size {vocab_size} is too small: byte fallback alone needs 256 + 3 pieces")
    files = input_files(inputs)
    seen = [0]

    def sentences() -> Iterator[str]:
        for path in files:
            for text, _ in read_documents(path):
                line = normalize_text(text, remove_tatweel, strip_diacritics).replace("\n", " ")
                if line.strip():
                    seen[0] += 1
                    yield line
                    plain = ARABIC_DIACRITICS.sub("", line) if also_undiacritised else line
                    if plain != line and plain.strip():
                        yield plain

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, byte_fallback=True, split_digits=True,
            normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, input_sentence_size=max_sentences,
            shuffle_input_sentence=True, max_sentence_length=16384, num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        if seen[0] == 0:
            raise TokenizerError(f"no text to train on in {', '.join(files)}: the file(s) are empty or every line is "
                                 "blank") from None
        raise TokenizerError(f"SentencePiece training on {', '.join(files)} failed: "
                             f"{str(e).splitlines()[-1]}") from None
    proto = ModelProto()
    proto.ParseFromString(model.getvalue())
    write_proto_atomically(proto, out)
    used = min(seen[0], max_sentences)
    if used < seen[0]:
        log.info("trained on a random sample of %d of %d documents (--max_sentences)", used, seen[0])
    return {"documents": seen[0], "sampled": used, "files": len(files), "vocab_size": len(proto.pieces), "out": out}
