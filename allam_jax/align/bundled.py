"""Small real alignment sets built from the bundled parallel pairs (no instruction or preference set can
be downloaded here). Written in the public formats, so a user swaps in real data by changing paths:

- ``sft_{train,eval}.jsonl``: ``{"messages": [...]}`` translation instructions in both directions, phrased
  in English or Arabic, some with a system prompt, some two-turn.
- ``dpo_{train,eval}.jsonl``: ``{"prompt", "chosen", "rejected"}`` where chosen is the true translation
  and rejected, in equal shares, the source echoed back untranslated, the translation with its words
  reversed, or another sentence's translation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from allam_jax.core.paths import write_text_atomically

SYSTEM = "You are a helpful bilingual assistant. أنت مساعد مفيد ثنائي اللغة."
TO_AR = ("Translate into Arabic: {en}", "ترجم إلى العربية: {en}")
TO_EN = ("Translate into English: {ar}", "ترجم إلى الإنجليزية: {ar}")


def _pairs(parallel_jsonl: Path) -> list[tuple[str, str]]:
    out = []
    for line in parallel_jsonl.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        if len(obj["en"].split()) >= 2 and len(obj["ar"].split()) >= 2 and len(obj["en"]) <= 200:
            out.append((obj["en"], obj["ar"]))
    return out


def _turn(rng: random.Random, en: str, ar: str) -> list[dict]:
    if rng.random() < 0.5:
        return [{"role": "user", "content": rng.choice(TO_AR).format(en=en)}, {"role": "assistant", "content": ar}]
    return [{"role": "user", "content": rng.choice(TO_EN).format(ar=ar)}, {"role": "assistant", "content": en}]


def make_alignment_sets(parallel_jsonl: str, out_dir: str, eval_fraction: float = 0.05, seed: int = 0,
                        max_dpo_pairs: int = 6000) -> dict[str, int]:
    """Writes the four JSONL files into ``out_dir``; returns the number of records of each."""
    rng = random.Random(seed)
    pairs = _pairs(Path(parallel_jsonl))
    rng.shuffle(pairs)
    n_eval = max(1, int(len(pairs) * eval_fraction))
    splits = {"eval": pairs[:n_eval], "train": pairs[n_eval:]}
    counts = {}
    out = Path(out_dir)
    for split, items in splits.items():
        sft = []
        i = 0
        while i < len(items):
            messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.2 else []
            messages += _turn(rng, *items[i])
            i += 1
            if i < len(items) and rng.random() < 0.25:  # a second turn
                messages += _turn(rng, *items[i])
                i += 1
            sft.append({"messages": messages})
        dpo = []
        for j, (en, ar) in enumerate(items[:max_dpo_pairs]):
            to_arabic = rng.random() < 0.5
            prompt = rng.choice(TO_AR).format(en=en) if to_arabic else rng.choice(TO_EN).format(ar=ar)
            chosen, source = (ar, en) if to_arabic else (en, ar)
            other = items[(j + 1 + rng.randrange(max(1, len(items) - 1))) % len(items)][1 if to_arabic else 0]
            kind = rng.randrange(3)
            if kind == 0:  # the classic failure: the source echoed back untranslated
                rejected = source
            elif kind == 1 and len(set(chosen.split())) > 1:  # scrambled: words reversed
                rejected = " ".join(reversed(chosen.split()))
            else:  # fluent but wrong: another sentence's translation
                rejected = other
            if rejected != chosen:
                dpo.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        for name, records in ((f"sft_{split}.jsonl", sft), (f"dpo_{split}.jsonl", dpo)):
            write_text_atomically(out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            counts[name] = len(records)
    return counts
