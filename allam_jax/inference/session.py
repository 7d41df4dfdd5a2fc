"""Loading a checkpoint for ``allam generate`` / ``allam chat``, and the interactive chat loop."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional, TextIO

from allam_jax.align.chat import ChatTemplate, encode_prompt
from allam_jax.core.partitioning import Partitioner
from allam_jax.inference.generate import Generator, SamplingConfig
from allam_jax.model import Decoder

if TYPE_CHECKING:
    from allam_jax.core.partitioning import PartitioningConfig
    from allam_jax.model import ModelConfig


def open_generator(cfg: "ModelConfig", ckpt: str, vocabulary: str = "byte",
                   partitioning: Optional["PartitioningConfig"] = None) -> Generator:
    """A generator for the model ``cfg`` with the parameters of ``ckpt`` restored straight into their shards on
    the ``partitioning`` mesh (default: every device on fsdp), and the tokenizer ``vocabulary``."""
    from allam_jax.checkpoint.params_io import load_params
    from allam_jax.data.vocabularies import bos_id, check_fits_model, get_vocabulary

    vocab = get_vocabulary(vocabulary)
    check_fits_model(vocab, cfg.vocab_size, f"tokenizer {vocabulary}")
    partitioner = Partitioner.create(partitioning)
    params = load_params(ckpt, Decoder(cfg), partitioner)  # straight into their shards
    return Generator(cfg, params, vocab, bos_id(vocab), partitioner=partitioner)


def chat_loop(gen: Generator, sampling: SamplingConfig, system: Optional[str] = None,
              stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, template=None) -> int:
    """Reads user turns line by line, streams each answer; an empty line or EOF ends the chat. An answer ends at
    EOS or at the template's end-of-turn token (Llama-3's <|eot_id|>, ChatML's <|im_end|>)."""
    messages = [{"role": "system", "content": system}] if system else []
    template = template or ChatTemplate()
    stops = {int(gen.vocab.eos_id)} | set(template.end_of_turn_ids(gen.vocab)[-1:])
    turns = 0
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line or not line.strip():
            stdout.write("\n")
            return turns
        messages.append({"role": "user", "content": line.strip()})
        prompt = encode_prompt(messages, gen.vocab, template, gen.bos_id)
        stdout.write("allam> ")
        answer: list[int] = []
        shown = ""
        for step in gen.stream([prompt], sampling):
            tok = step[0]
            if tok is None or tok in stops:
                break
            answer.append(tok)
            text = gen.vocab.decode(answer)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                stdout.write(text[len(shown):])
                stdout.flush()
                shown = text
        stdout.write("\n")
        messages.append({"role": "assistant", "content": gen.vocab.decode(answer) or " "})
        turns += 1
