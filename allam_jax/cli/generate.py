"""``allam generate`` and ``allam chat``: decoding from a checkpoint with a KV cache."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from allam_jax.align.chat import encode_prompt
from allam_jax.cli.common import (add_checkpoint_flag, add_gin_flags, non_negative_float, non_negative_int,
                                  positive_int, probability, seed_int)
from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import as_path
from allam_jax.gin_setup import chat_template
from allam_jax.inference.generate import SamplingConfig
from allam_jax.inference.session import chat_loop


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for name, help_text in (("generate", "generate text from prompts with a KV cache"),
                            ("chat", "interactive chat with streaming output (chat template)")):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ". The model "
                           "shape comes from the gin files, the weights from --ckpt.")
        add_gin_flags(p)
        add_checkpoint_flag(p)
        p.add_argument("--vocabulary", default=None, help="'byte' or a SentencePiece .model (default: the gin "
                       "data config's, else byte)")
        p.add_argument("--max_new_tokens", type=positive_int, default=64, help="tokens to generate at most (default 64)")
        p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--top_k", type=non_negative_int, default=0, help="sample from the k best tokens only (0 = off)")
        p.add_argument("--top_p", type=probability, default=1.0, help="nucleus sampling mass (1 = off)")
        p.add_argument("--stop", action="append", default=[], help="stop string, repeatable (cut from the output)")
        p.add_argument("--seed", type=seed_int, default=0, help="sampling seed")
        if name == "generate":
            p.add_argument("--prompt", action="append", default=[], help="a prompt, repeatable (one batch)")
            p.add_argument("--prompts_file", default=None, help="a text file with one prompt per line")
            p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn of the chat template")
            p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
        else:
            p.add_argument("--system", default=None, help="system prompt")
        p.set_defaults(handler=run_generate if name == "generate" else run_chat)


def _sampling(args: argparse.Namespace):
    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, stop=tuple(args.stop), seed=args.seed)


def run_generate(args: argparse.Namespace) -> int:

    from allam_jax.runner import load_generator

    texts = list(args.prompt)
    if args.prompts_file:
        if not as_path(args.prompts_file).is_file():
            raise FileNotFoundError(f"prompts file not found: {args.prompts_file}")
        texts += [line for line in as_path(args.prompts_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ConfigError("no prompt: give --prompt TEXT (repeatable) or --prompts_file FILE")
    sampling = _sampling(args)
    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    if args.chat:
        template = chat_template()
        prompts = [encode_prompt([{"role": "user", "content": t}], gen.vocab, template, gen.bos_id) for t in texts]
        if template.style == "turns":  # the answer ends at the template's end-of-turn token, not at EOS
            sampling = dataclasses.replace(sampling, stop=tuple(sampling.stop) + (template.end_of_turn,))
    else:
        prompts = [gen.encode(t) for t in texts]
    for text, result in zip(texts, gen.generate(prompts, sampling)):
        if args.json:
            print(json.dumps({"prompt": text, "output": result.text, "finish_reason": result.finish_reason,
                              "tokens": len(result.tokens)}, ensure_ascii=False))
        else:
            print(f"### {text}\n{result.text}\n[{result.finish_reason}, {len(result.tokens)} tokens]")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from allam_jax.runner import load_generator

    if sys.stdin is None or sys.stdin.closed:
        raise ConfigError("allam chat reads your turns from standard input, which is closed; run it in a terminal "
                          "or pipe the turns in (one per line)")

    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    chat_loop(gen, _sampling(args), args.system, template=chat_template())
    return 0
