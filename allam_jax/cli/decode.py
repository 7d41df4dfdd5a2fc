"""``allam generate``, ``allam chat`` and ``allam eval``: everything that reads a checkpoint to decode or score."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from allam_jax.cli.common import (add_checkpoint_flag, add_gin_flags, non_negative_float, non_negative_int, positive_int,
                                  probability, seed_int)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from allam_jax.eval.readers import READERS

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

    p = sub.add_parser("eval", help="multiple-choice benchmarks and perplexity for a checkpoint",
                       description="Score ArabicMMLU, ACVA, Arabic EXAMS, translated MMLU and MMLU files "
                       "(lm-evaluation-harness log-likelihood semantics: acc and acc_norm) and per-language "
                       "perplexity / bits per byte; prints a markdown table, writes JSON and .md with --out.")
    add_gin_flags(p)
    add_checkpoint_flag(p)
    p.add_argument("--vocabulary", default=None, help="'byte' or a SentencePiece .model (default: the gin data "
                   "config's, else byte)")
    p.add_argument("--task", action="append", default=[], metavar="FORMAT:PATH[:DEV_PATH]",
                   help=f"a benchmark file, repeatable; FORMAT: {', '.join(READERS)}; few-shot "
                   "examples come from DEV_PATH (else from the other test questions)")
    p.add_argument("--perplexity", action="append", default=[], metavar="LANG:PATH",
                   help="held-out text (.txt a document per line, or .jsonl 'text') for perplexity, repeatable")
    p.add_argument("--num_fewshot", type=non_negative_int, default=0, help="few-shot examples per question (default 0)")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N questions/documents per file")
    p.add_argument("--batch_size", type=positive_int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--seed", type=seed_int, default=1234, help="few-shot sampling seed")
    p.add_argument("--out", default=None, help="write the report here (JSON) and beside it as .md")
    p.set_defaults(handler=run_eval)


def _sampling(args: argparse.Namespace):
    from allam_jax.inference.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, stop=tuple(args.stop), seed=args.seed)


def run_generate(args: argparse.Namespace) -> int:

    from allam_jax.runner import load_generator
    from allam_jax.core.errors import ConfigError

    texts = list(args.prompt)
    if args.prompts_file:
        from allam_jax.core.paths import as_path

        if not as_path(args.prompts_file).is_file():
            raise FileNotFoundError(f"prompts file not found: {args.prompts_file}")
        texts += [line for line in as_path(args.prompts_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ConfigError("no prompt: give --prompt TEXT (repeatable) or --prompts_file FILE")
    sampling = _sampling(args)
    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    if args.chat:
        from allam_jax.align.chat import encode_prompt
        from allam_jax.gin_setup import chat_template

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
    from allam_jax.core.errors import ConfigError
    from allam_jax.runner import load_generator
    from allam_jax.inference.session import chat_loop

    if sys.stdin is None or sys.stdin.closed:
        raise ConfigError("allam chat reads your turns from standard input, which is closed; run it in a terminal "
                          "or pipe the turns in (one per line)")
    from allam_jax.gin_setup import chat_template

    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    chat_loop(gen, _sampling(args), args.system, template=chat_template())
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from allam_jax.eval.runner import check_specs, markdown, run_eval, write_report
    from allam_jax.eval.scorer import LoglikelihoodScorer
    from allam_jax.runner import load_generator
    from allam_jax.core.errors import ConfigError

    if not args.task and not args.perplexity:
        raise ConfigError("nothing to evaluate: give --task FORMAT:PATH and/or --perplexity LANG:PATH")
    check_specs(args.task, args.perplexity)
    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    scorer = LoglikelihoodScorer(gen.cfg, gen.params, lambda text: gen.encode(text, add_bos=False), gen.bos_id,
                                 batch_size=args.batch_size, progress=True, partitioner=gen.partitioner)
    report = run_eval(scorer, args.task, args.num_fewshot, args.limit, args.perplexity, args.seed)
    report["checkpoint"] = args.ckpt
    print(markdown(report), end="")
    if args.out:
        write_report(report, args.out)
    return 0
