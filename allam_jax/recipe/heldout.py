"""The recipe's data: a train / held-out split of the bundled corpora, and evaluation items built from the
held-out part only (nothing the models train on).

Multiple-choice items (``cloze`` format of :mod:`allam_jax.eval.readers`, plus a chat variant):

- ``en_cloze`` / ``ar_cloze``: the first words of a held-out passage; choices are its true next words and
  the next words of three other held-out passages of similar length.
- ``translate``: a held-out English sentence in the pretraining's own translation prompt
  (``ParallelRendering.en_to_ar``); choices are its Arabic translation and three other held-out
  translations of similar length.
- ``chat_translate``: the same question as a user turn of the chat template (what SFT teaches).
- ``chat_translate_to_en``: the other direction as a chat turn (``Translate into English:`` the Arabic); choices
  are the English text and three other held-out English texts of similar length: the aligned models' English.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Sequence

from allam_jax.core.errors import ConfigError
from allam_jax.core.paths import write_text_atomically
from allam_jax.data.normalize import normalize_text
from allam_jax.data.text_files import first_bytes


@dataclasses.dataclass(frozen=True)
class HeldoutConfig:
    """How much of the bundled data is held out, and how many evaluation items are built from it."""

    en_docs: int = 60
    ar_docs: int = 800
    pairs: int = 500  # distinct English texts (with all their translations)
    mc_items: int = 100
    perplexity_bytes: int = 24_000
    seed: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "seed" and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"HeldoutConfig.{f.name} must be a positive integer, got {value!r}")


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"bundled corpus file not found: {path} (run `allam data prepare`)")
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    write_text_atomically(path, "".join(ln + "\n" for ln in lines))


def _split(items: list, n_heldout: int, rng: random.Random) -> tuple[list, list]:
    if n_heldout >= len(items):
        raise ConfigError(f"cannot hold out {n_heldout} of {len(items)} items: lower the HeldoutConfig counts")
    chosen = set(rng.sample(range(len(items)), n_heldout))
    return [x for i, x in enumerate(items) if i not in chosen], [x for i, x in enumerate(items) if i in chosen]


def split_corpora(bundled: str, out: str, cfg: HeldoutConfig) -> dict:
    """Writes ``OUT/train/{en.txt,ar.txt,parallel.jsonl}`` and ``OUT/heldout/`` (the same, normalised)."""
    src, dst = Path(bundled), Path(out)
    rng = random.Random(cfg.seed)
    counts = {}
    for name, n in (("en.txt", cfg.en_docs), ("ar.txt", cfg.ar_docs)):
        train, held = _split(_lines(src / name), n, rng)
        _write_lines(dst / "train" / name, train)
        _write_lines(dst / "heldout" / name, [normalize_text(t) for t in held])
        counts[name] = {"train": len(train), "heldout": len(held)}
    groups: dict[str, list[str]] = {}  # every translation of one English text goes to the same side
    for line in _lines(src / "parallel.jsonl"):
        groups.setdefault(normalize_text(json.loads(line)["en"]).strip().lower(), []).append(line)
    train_groups, held_groups = _split(list(groups.values()), cfg.pairs, rng)
    train, held = [ln for g in train_groups for ln in g], [ln for g in held_groups for ln in g]
    _write_lines(dst / "train" / "parallel.jsonl", train)
    _write_lines(dst / "heldout" / "parallel.jsonl", held)
    counts["parallel.jsonl"] = {"train": len(train), "heldout": len(held)}
    return counts


def _distractors(rng: random.Random, index: int, lengths: list[int], k: int = 3, pool: int = 12) -> list[int]:
    """``k`` other indices among the ``pool`` nearest in length (so length alone gives the answer away less)."""
    near = sorted((j for j in range(len(lengths)) if j != index), key=lambda j: abs(lengths[j] - lengths[index]))
    return rng.sample(near[:pool], k)


def _with_gold(rng: random.Random, gold_text: str, others: list[str]) -> tuple[list[str], int]:
    choices = others + [gold_text]
    rng.shuffle(choices)
    return choices, choices.index(gold_text)


def cloze_items(documents: Sequence[str], language: str, context_words: int, answer_words: int, n: int,
                seed: int) -> list[dict]:
    """Up to ``n`` items from non-overlapping spans of ``context_words + answer_words`` words (long passages
    give several), drawn at random."""
    rng = random.Random(seed)
    width = context_words + answer_words
    spans = []
    for doc in documents:
        words = doc.split()
        for start in range(0, len(words) - width + 1, width):
            spans.append((" ".join(words[start: start + context_words]),
                          " " + " ".join(words[start + context_words: start + width])))
    if len(spans) < 4:
        raise ConfigError(f"only {len(spans)} held-out {language} passages have {width} words: hold out more "
                          "documents")
    rng.shuffle(spans)
    spans = spans[:n]
    lengths = [len(a) for _, a in spans]
    items = []
    for i, (context, answer) in enumerate(spans):
        others = [spans[j][1] for j in _distractors(rng, i, lengths) if spans[j][1] != answer]
        if len(others) < 3:
            continue
        choices, gold = _with_gold(rng, answer, others)
        items.append({"context": context, "choices": choices, "gold": gold, "language": language,
                      "subject": f"{language}_cloze"})
    return items


def _usable_pairs(pairs: Sequence[dict], n: int) -> list[dict]:
    """The first ``n`` pairs of 2-25 English words, one per English text (another valid translation of the same
    text must never be a distractor)."""
    seen: set[str] = set()
    usable = []
    for p in pairs:
        key = p["en"].strip().lower()
        if key not in seen and 2 <= len(p["en"].split()) <= 25 and 2 <= len(p["ar"].split()):
            seen.add(key)
            usable.append(p)
    return usable[:n]


def translation_items(pairs: Sequence[dict], n: int, seed: int, rendering) -> tuple[list, list]:
    """(plain items in the pretraining's en->ar prompt, chat items with ``messages``) on the same pairs."""
    rng = random.Random(seed)
    usable = _usable_pairs(pairs, n)
    if len(usable) < 4:
        raise ConfigError(f"only {len(usable)} usable held-out pairs: hold out more (HeldoutConfig.pairs)")
    prefix = rendering.en_to_ar.split("{ar}")[0]
    lengths = [len(p["ar"]) for p in usable]
    plain, chat = [], []
    for i, p in enumerate(usable):
        others = [usable[j]["ar"] for j in _distractors(rng, i, lengths) if usable[j]["ar"] != p["ar"]]
        if len(others) < 3:
            continue
        choices, gold = _with_gold(rng, p["ar"], others)
        plain.append({"context": prefix.format(en=p["en"]).rstrip(" "), "choices": [" " + c for c in choices],
                      "gold": gold,
                      "language": "translated", "subject": "translate_en_ar"})
        chat.append({"messages": [{"role": "user", "content": f"Translate into Arabic: {p['en']}"}],
                     "choices": choices, "gold": gold, "language": "translated", "subject": "chat_translate"})
    return plain, chat


def chat_items_to_english(pairs: Sequence[dict], n: int, seed: int) -> list[dict]:
    """Chat items asking for the English of a held-out Arabic text; distractors: other English texts."""
    rng = random.Random(seed)
    usable = _usable_pairs(pairs, n)
    lengths = [len(p["en"]) for p in usable]
    valid: dict[str, set] = {}  # every English text given for an Arabic one: none of them may be a distractor
    for p in pairs:
        valid.setdefault(p["ar"], set()).add(p["en"].strip().lower())
    items = []
    for i, p in enumerate(usable):
        others = [usable[j]["en"] for j in _distractors(rng, i, lengths)
                  if usable[j]["en"].strip().lower() not in valid[p["ar"]]]
        if len(others) < 3 or len(usable) < 4:
            continue
        choices, gold = _with_gold(rng, p["en"], others)
        items.append({"messages": [{"role": "user", "content": f"Translate into English: {p['ar']}"}],
                      "choices": choices, "gold": gold, "language": "translated", "subject": "chat_translate_to_en"})
    return items


def build_items(heldout_dir: str, out_dir: str, cfg: HeldoutConfig) -> dict[str, int]:
    """Writes ``OUT/{en_cloze,ar_cloze,translate}.jsonl`` (cloze format) and the chat items
    ``OUT/chat_translate{,_to_en}.jsonl``."""
    from allam_jax.data.sources import ParallelRendering

    held, out = Path(heldout_dir), Path(out_dir)
    sets = {
        "en_cloze": cloze_items(_lines(held / "en.txt"), "en", 12, 6, cfg.mc_items, cfg.seed),
        "ar_cloze": cloze_items(_lines(held / "ar.txt"), "ar", 6, 4, cfg.mc_items, cfg.seed + 1),
    }
    pairs = [{k: normalize_text(v) for k, v in json.loads(ln).items() if k in ("en", "ar")}
             for ln in _lines(held / "parallel.jsonl")]
    sets["translate"], sets["chat_translate"] = translation_items(pairs, cfg.mc_items, cfg.seed + 2,
                                                                  ParallelRendering())
    sets["chat_translate_to_en"] = chat_items_to_english(pairs, cfg.mc_items, cfg.seed + 3)
    for name, items in sets.items():
        _write_lines(out / f"{name}.jsonl", [json.dumps(x, ensure_ascii=False) for x in items])
    return {name: len(items) for name, items in sets.items()}


def perplexity_documents(path: str, max_bytes: int) -> list[str]:
    """Held-out documents up to ``max_bytes`` UTF-8 bytes in all (the last one cut at a word)."""
    return first_bytes(_lines(Path(path)), max_bytes)
