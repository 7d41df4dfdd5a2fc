"""Preference data for DPO: JSONL pairs ``{"prompt" | "messages", "chosen", "rejected"}`` tokenised with the
chat template into interleaved (chosen, rejected) rows, and an iterator whose position resumes exactly."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from allam_jax.align.chat import ChatTemplate, encode_prompt
from allam_jax.align.sft_data import SkipReport, conversation_language, read_jsonl
from allam_jax.core.errors import ChatError, ConfigError, DataError
from allam_jax.data.batch import DataDescription, empty_rows
from allam_jax.data.sources import expand_patterns
from allam_jax.data.tasks import LANGUAGES

log = logging.getLogger(__name__)



def _prompt_messages(obj: dict) -> list[dict]:
    if isinstance(obj.get("messages"), list):
        return obj["messages"]
    if isinstance(obj.get("prompt"), str):
        return [{"role": "user", "content": obj["prompt"]}]
    raise ChatError("expected 'prompt' (a string) or 'messages' (a list ending with a user turn)")


def _response(obj: dict, key: str) -> str:
    value = obj.get(key)
    if isinstance(value, list) and value and isinstance(value[-1], dict):  # chat-style [{"role", "content"}]
        value = value[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise ChatError(f"'{key}' is missing or empty")
    return value


@dataclasses.dataclass(frozen=True)
class DpoData:
    """Preference JSONL ``{"prompt" | "messages", "chosen", "rejected"}`` (gin: ``DpoData``), optionally with
    ``ref_chosen_logp`` and ``ref_rejected_logp``. Pairs are shuffled per epoch with a fixed seed; the
    position ``(epoch, index)`` is saved with each checkpoint."""

    paths: Sequence[str] = ("data_cache/bundled/dpo_train.jsonl",)
    vocabulary: str = "byte"
    template: ChatTemplate = ChatTemplate()
    on_error: str = "skip"
    seed: int = 0
    shuffle: bool = True
    require_reference: bool = False
    languages: Sequence[str] = LANGUAGES

    def describe(self) -> DataDescription:
        return DataDescription(self.vocabulary)

    def with_features(self, features: Mapping[str, Any]) -> "DpoData":
        """A precomputed reference (``ref_logp``) read as 0 where a pair has none would train against nothing:
        asked for, every pair must carry its ``ref_*_logp`` (``allam dpo-reference`` writes them)."""
        unknown = sorted(set(features) - {"ref_logp"})
        if unknown:
            raise ConfigError(f"DpoData cannot fill the batch features {unknown} the objective needs")
        return dataclasses.replace(self, require_reference=True) if features else self

    def load(self, seq_len: int, report: Optional[SkipReport] = None) -> list[dict]:
        """Every usable pair, tokenised: prompt, chosen and rejected ids, language, reference log-probs."""
        from allam_jax.data.vocabularies import bos_id, get_vocabulary

        vocab = get_vocabulary(self.vocabulary)
        bos = bos_id(vocab)
        report = report if report is not None else SkipReport()
        pairs = []
        for path in expand_patterns(self.paths):
            for line_no, obj in read_jsonl(path, self.on_error, report):
                try:
                    messages = _prompt_messages(obj)
                    prompt = encode_prompt(messages, vocab, self.template, bos)
                    chosen = [int(t) for t in vocab.encode(_response(obj, "chosen"))] + [int(vocab.eos_id)]
                    rejected = [int(t) for t in vocab.encode(_response(obj, "rejected"))] + [int(vocab.eos_id)]
                    ref = (obj.get("ref_chosen_logp"), obj.get("ref_rejected_logp"))
                    if self.require_reference and not all(isinstance(r, (int, float)) for r in ref):
                        raise ChatError("no ref_chosen_logp/ref_rejected_logp (run allam dpo-reference first)")
                except ChatError as e:
                    report.no_assistant_or_bad_roles += 1
                    if self.on_error == "fatal":
                        raise DataError(f"{path}:{line_no}: {e}") from None
                    continue
                if len(prompt) + max(len(chosen), len(rejected)) - 1 > seq_len:
                    report.too_long += 1
                    if self.on_error == "fatal":
                        raise DataError(f"{path}:{line_no}: prompt + response is longer than seq_len={seq_len}")
                    continue
                report.kept += 1
                lang = conversation_language([{"role": "assistant", "content": _response(obj, "chosen")}])
                pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "lang": LANGUAGES.index(lang),
                              "ref": [float(r) if isinstance(r, (int, float)) else 0.0 for r in ref],
                              "source": f"{path}:{line_no}"})
        if report.skipped():
            log.warning("DPO data: kept %d pairs, skipped %d (malformed %d, missing/empty fields %d, too long %d)",
                        report.kept, report.skipped(), report.malformed, report.no_assistant_or_bad_roles,
                        report.too_long)
        if not pairs:
            raise DataError(f"no usable preference pairs in {list(self.paths)}")
        return pairs

    def make_iterator(self, seq_len: int, batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> "PreferenceIterator":
        if batch_size % process_count:
            raise ConfigError(f"batch size {batch_size} is not divisible by the process count {process_count}")
        from allam_jax.data.vocabularies import get_vocabulary

        return PreferenceIterator(self.load(seq_len), seq_len, batch_size, self.seed, self.shuffle,
                                  process_index, process_count, vocab=get_vocabulary(self.vocabulary),
                                  languages=self.languages)


def pair_rows(pair: dict, seq_len: int) -> dict[str, np.ndarray]:
    """The two rows (chosen, rejected) of one pair in the trainer's layout plus ``ref_logp``."""
    out = empty_rows(2, seq_len)
    for r, response in enumerate((pair["chosen"], pair["rejected"])):
        ids = pair["prompt"] + response
        n = len(ids) - 1
        out["inputs"][r, :n] = ids[:-1]
        out["targets"][r, :n] = ids[1:]
        out["segment_ids"][r, :n] = 1
        out["positions"][r, :n] = np.arange(n)
        out["lang_id"][r, :n] = pair["lang"]
        out["loss_weights"][r, len(pair["prompt"]) - 1: n] = 1.0
    out["ref_logp"] = np.asarray(pair["ref"], np.float32)
    return out


class PreferenceIterator:
    """Batches of ``batch_size`` pairs (``2 * batch_size`` rows); each process takes its contiguous block."""

    def __init__(self, pairs: list[dict], seq_len: int, batch_size: int, seed: int, shuffle: bool,
                 process_index: int = 0, process_count: int = 1, vocab=None, languages: Sequence[str] = LANGUAGES):
        self.pairs, self.seq_len, self.batch_size, self.seed, self.shuffle = pairs, seq_len, batch_size, seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.vocab, self.languages, self.stage = vocab, list(languages), None
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.pairs))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def get_state(self) -> dict:
        return {"epoch": int(self.epoch), "index": int(self.index)}

    def set_state(self, state: dict) -> None:
        if "index" not in state:
            raise ConfigError(f"data state {dict(state)} is not from a preference iterator")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)

    def __iter__(self) -> "PreferenceIterator":
        return self

    def next_pairs(self) -> list[dict]:
        picked = []
        for _ in range(self.batch_size):
            if self.index >= len(self.pairs):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            picked.append(self.pairs[self._order[self.index]])
            self.index += 1
        per = self.batch_size // self.process_count
        return picked[self.process_index * per: (self.process_index + 1) * per]

    def __next__(self) -> dict[str, np.ndarray]:
        return stack_pairs(self.next_pairs(), self.seq_len)


def stack_pairs(pairs: Sequence[dict], seq_len: int) -> dict[str, np.ndarray]:
    """A batch of ``2 * len(pairs)`` interleaved rows (see :func:`pair_rows`)."""
    rows = [pair_rows(p, seq_len) for p in pairs]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


__all__ = ["DpoData", "PreferenceIterator", "pair_rows", "stack_pairs"]
