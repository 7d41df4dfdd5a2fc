"""``allam eval``: benchmarks and perplexity for one checkpoint, as JSON and a markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import as_path, write_text_atomically
from allam_jax.data.sources import CleaningConfig, iter_documents
from allam_jax.eval.readers import parse_task_spec, read_task
from allam_jax.eval.scorer import LoglikelihoodScorer, evaluate_multiple_choice, perplexity


def check_specs(tasks: Sequence[str], perplexity_files: Sequence[str]) -> None:
    """Every ``--task`` and ``--perplexity`` well formed and its file present, before a model is loaded."""
    for spec in tasks:
        parse_task_spec(spec)
    for spec in perplexity_files:
        lang, _, path = spec.partition(":")
        if not lang or not path:
            raise ConfigError(f"bad --perplexity {spec!r}: use LANG:PATH")
        if not as_path(path).exists():
            raise FileNotFoundError(f"perplexity file not found: {path} (from --perplexity {spec})")


def run_eval(scorer: LoglikelihoodScorer, tasks: Sequence[str], num_fewshot: int = 0, limit: Optional[int] = None,
             perplexity_files: Sequence[str] = (), seed: int = 1234) -> dict:
    """``tasks``: ``FORMAT:PATH[:DEV_PATH]``; ``perplexity_files``: ``LANG:PATH`` (.txt or .jsonl ``text``)."""
    report: dict = {"tasks": {}, "perplexity": {}, "num_fewshot": num_fewshot}
    for spec in tasks:
        fmt, test, dev = read_task(spec)
        questions = test[:limit] if limit else test
        result = evaluate_multiple_choice(scorer, questions, dev, num_fewshot, seed)
        name = f"{fmt}:{Path(spec.split(':')[1]).stem}"
        report["tasks"][name] = {"format": fmt, "language": questions[0].language, **result}
    for spec in perplexity_files:
        lang, _, path = spec.partition(":")
        if not path:
            raise ConfigError(f"bad --perplexity {spec!r}: use LANG:PATH")
        docs = list(iter_documents([path], None, CleaningConfig(dedup=False)))
        if not docs:
            raise ConfigError(f"{path}: no text to measure perplexity on (the file is empty or every line was "
                              "dropped by cleaning)")
        report["perplexity"][f"{lang}:{Path(path).name}"] = {"language": lang, **perplexity(scorer, docs[:limit] if
                                                                                               limit else docs)}
    return report


def markdown(report: dict) -> str:
    lines = []
    if report["tasks"]:
        lines += ["| task | language | n | acc | acc_norm |", "|---|---|---|---|---|"]
        for name, r in report["tasks"].items():
            lines.append(f"| {name} | {r['language']} | {r['n']} | {r['acc']:.4f} | {r['acc_norm']:.4f} |")
        by_lang: dict[str, list[dict]] = {}
        for r in report["tasks"].values():
            by_lang.setdefault(r["language"], []).append(r)
        for lang, rows in sorted(by_lang.items()):
            n = sum(r["n"] for r in rows)
            acc = sum(r["acc"] * r["n"] for r in rows) / n
            acc_norm = sum(r["acc_norm"] * r["n"] for r in rows) / n
            lines.append(f"| **all {lang}** | {lang} | {n} | {acc:.4f} | {acc_norm:.4f} |")
    if report["perplexity"]:
        lines += ["", "| text | language | tokens | perplexity | bits/byte |", "|---|---|---|---|---|"]
        for name, r in report["perplexity"].items():
            lines.append(f"| {name} | {r['language']} | {r['tokens']:,} | {r['perplexity']:.3f} | "
                         f"{r['bits_per_byte']:.4f} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str) -> None:
    write_text_atomically(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(str(out).removesuffix(".json") + ".md", markdown(report))
