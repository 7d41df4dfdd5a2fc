"""``allam data inspect``: what a mixture really feeds the model, next to what was configured."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from tqdm.auto import tqdm

from allam_jax.data import tasks as tasks_lib


def inspect_mixture(data, seq_len: int, batch_size: int, num_batches: int, num_examples: int = 3,
                    progress: bool = True) -> dict:
    """Draws ``num_batches`` packed batches of a ``SeqioData`` or ``CachedData``; returns realised token shares per task and language, packing
    efficiency, and the first ``num_examples`` segments decoded."""
    it = data.make_iterator(seq_len, batch_size)
    task_tokens = np.zeros(len(tasks_lib.TASKS))
    lang_tokens = np.zeros(len(tasks_lib.LANGUAGES))
    examples: list[dict] = []
    segments = 0
    for _ in tqdm(range(num_batches), desc="inspect", unit="batch", disable=not progress):
        batch = next(it)
        real = batch["loss_weights"] > 0
        task_tokens += np.bincount(batch["task_id"][real], minlength=len(task_tokens))
        lang_tokens += np.bincount(batch["lang_id"][real], minlength=len(lang_tokens))
        for row in range(batch["segment_ids"].shape[0]):
            seg = batch["segment_ids"][row]
            segments += len(np.unique(seg[seg > 0]))
            for s in np.unique(seg[seg > 0]):
                if len(examples) >= num_examples:
                    break
                idx = seg == s
                examples.append({
                    "task": tasks_lib.TASKS[int(batch["task_id"][row][idx][0])].name,
                    "lang": tasks_lib.LANGUAGES[int(batch["lang_id"][row][idx][0])],
                    "tokens": int(idx.sum()),
                    "text": it.vocab.decode([int(t) for t in batch["targets"][row][idx]]),
                })
    it.close()
    total = task_tokens.sum()
    configured: Mapping[str, float] = it.expected_shares
    return {
        "mixture": data.describe().mixture,
        "batches": num_batches,
        "tokens": int(total),
        "packing_efficiency": float(total / (num_batches * batch_size * seq_len)),
        "segments_per_row": segments / (num_batches * batch_size),
        "tasks": {spec.name: {"configured_share": configured.get(spec.name), "realised_share": float(n / total),
                              "tokens": int(n)}
                  for spec, n in zip(tasks_lib.TASKS, task_tokens) if n or spec.name in configured},
        "languages": {lang: {"realised_share": float(n / total), "tokens": int(n)}
                      for lang, n in zip(tasks_lib.LANGUAGES, lang_tokens) if n},
        "examples": examples,
    }


def format_report(report: dict) -> str:
    lines = [f"mixture {report['mixture']}: {report['batches']} batches, {report['tokens']:,} real tokens, packing "
             f"efficiency {report['packing_efficiency']:.1%}, {report['segments_per_row']:.1f} segments/row", "",
             f"{'task':<22}{'configured':>12}{'realised':>10}{'tokens':>12}"]
    for name, row in report["tasks"].items():
        conf = "-" if row["configured_share"] is None else f"{row['configured_share']:.3f}"
        lines.append(f"{name:<22}{conf:>12}{row['realised_share']:>10.3f}{row['tokens']:>12,}")
    lines += ["", f"{'language':<22}{'':>12}{'realised':>10}{'tokens':>12}"]
    for lang, row in report["languages"].items():
        lines.append(f"{lang:<22}{'':>12}{row['realised_share']:>10.3f}{row['tokens']:>12,}")
    for ex in report["examples"]:
        text = ex["text"].replace("\n", " ⏎ ")
        lines += ["", f"[{ex['task']} / {ex['lang']} / {ex['tokens']} tokens] {text[:300]}"]
    return "\n".join(lines)
