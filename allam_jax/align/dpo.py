"""Direct preference optimisation: the loss, sequence log-probs, preference data and the train step.

A DPO batch interleaves pairs: row ``2i`` is prompt + chosen, row ``2i + 1`` prompt + rejected, so
chosen and rejected go through one forward pass and stay paired whatever the batch sharding.
``loss_weights`` cover the response tokens (and their EOS); ``ref_logp`` carries precomputed
reference log-probs when the reference is ``precomputed``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from allam_jax.align.chat import ChatError, ChatTemplate, encode_prompt
from allam_jax.align.sft_data import SkipReport, conversation_language, read_jsonl
from allam_jax.data.sources import DataError, expand_patterns
from allam_jax.data.tasks import LANGUAGES
from allam_jax.core.errors import ConfigError
from allam_jax.train.cross_entropy import token_cross_entropy
from allam_jax.train.state import TrainState

log = logging.getLogger(__name__)

LOSS_TYPES = ("sigmoid", "ipo")


@dataclasses.dataclass(frozen=True)
class DpoConfig:
    """gin: ``DpoConfig``. ``reference``: ``frozen`` keeps a copy of the starting parameters in the
    train state; ``precomputed`` reads ``ref_chosen_logp``/``ref_rejected_logp`` from the data
    (``allam dpo-reference`` writes them), which saves a model's worth of memory at scale."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    reference: str = "frozen"

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"DpoConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.reference not in ("frozen", "precomputed"):
            raise ConfigError(f"DpoConfig.reference must be 'frozen' or 'precomputed', got {self.reference!r}")
        if not self.beta > 0:
            raise ConfigError(f"DpoConfig.beta must be positive, got {self.beta!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"DpoConfig.label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, cfg: DpoConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean DPO loss over pairs and the usual metrics. Sigmoid (Rafailov et al.) with conservative label
    smoothing ε: ``-(1-ε) log σ(βh) - ε log σ(-βh)``; IPO: ``(h - 1/(2β))²``; h is the log-ratio margin."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if cfg.loss_type == "sigmoid":
        eps = cfg.label_smoothing
        losses = -(1 - eps) * jax.nn.log_sigmoid(cfg.beta * h) - eps * jax.nn.log_sigmoid(-cfg.beta * h)
    else:
        losses = jnp.square(h - 1.0 / (2.0 * cfg.beta))
    rewards_chosen = cfg.beta * chosen_ratio
    rewards_rejected = cfg.beta * rejected_ratio
    metrics = {
        "rewards/chosen": jnp.mean(rewards_chosen),
        "rewards/rejected": jnp.mean(rewards_rejected),
        "rewards/margins": jnp.mean(rewards_chosen - rewards_rejected),
        "rewards/accuracy": jnp.mean((rewards_chosen > rewards_rejected).astype(jnp.float32)),
    }
    return jnp.mean(losses), metrics


def sequence_logprobs(model: nn.Module, params: Any, batch: dict) -> jax.Array:
    """Sum of the log-probabilities of each row's weighted target tokens: ``[rows]``."""
    logits = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
    token_ce, _ = token_cross_entropy(logits.astype(jnp.float32), batch["targets"])
    return -jnp.sum(token_ce * batch["loss_weights"].astype(jnp.float32), axis=-1)


def make_dpo_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                  cfg: DpoConfig) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    def step(state: TrainState, batch: dict):
        if cfg.reference == "frozen":
            ref = jax.lax.stop_gradient(sequence_logprobs(model, state.ref_params, batch))
        else:
            ref = batch["ref_logp"]
        ref = ref.reshape(-1, 2)

        def loss_fn(params):
            pol = sequence_logprobs(model, params, batch).reshape(-1, 2)
            return dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], cfg)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step),
                   "num_tokens": jnp.sum(batch["loss_weights"]), **metrics}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


# ---------------------------------------------------------------- data


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
        return PreferenceIterator(self.load(seq_len), seq_len, batch_size, self.seed, self.shuffle,
                                  process_index, process_count)


def pair_rows(pair: dict, seq_len: int) -> dict[str, np.ndarray]:
    """The two rows (chosen, rejected) of one pair in the trainer's layout plus ``ref_logp``."""
    out = {k: np.zeros((2, seq_len), np.int32) for k in ("inputs", "targets", "segment_ids", "positions", "lang_id")}
    out["loss_weights"] = np.zeros((2, seq_len), np.float32)
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
                 process_index: int = 0, process_count: int = 1):
        self.pairs, self.seq_len, self.batch_size, self.seed, self.shuffle = pairs, seq_len, batch_size, seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.languages = LANGUAGES
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


def pair_logprobs(model: nn.Module, params_list: Sequence[Any], pairs: list[dict], seq_len: int,
                  batch_size: int = 8, progress: Optional[str] = None) -> list[np.ndarray]:
    """Sequence log-probs ``[len(pairs), 2]`` (chosen, rejected) under each of ``params_list``; the last
    batch is padded so that one compiled shape serves every batch."""
    from tqdm.auto import tqdm

    fn = jax.jit(lambda p, b: sequence_logprobs(model, p, b).reshape(-1, 2))
    outs: list[list[np.ndarray]] = [[] for _ in params_list]
    for start in tqdm(range(0, len(pairs), batch_size), desc=progress, unit="batch", disable=progress is None):
        chunk = pairs[start: start + batch_size]
        batch = stack_pairs(chunk + [chunk[-1]] * (batch_size - len(chunk)), seq_len)
        batch.pop("ref_logp")
        for out, params in zip(outs, params_list):
            out.append(np.asarray(fn(params, batch))[: len(chunk)])
    return [np.concatenate(o) for o in outs]


def precompute_reference(model: nn.Module, params: Any, data: DpoData, seq_len: int, out_path: str,
                         batch_size: int = 8, progress: bool = True) -> int:
    """One pass of the reference model over ``data`` in file order: writes each usable pair's JSON object
    with ``ref_chosen_logp`` and ``ref_rejected_logp`` added to ``out_path`` (atomically)."""
    from pathlib import Path

    pairs = data.load(seq_len)
    [logp] = pair_logprobs(model, [params], pairs, seq_len, batch_size, "reference" if progress else None)
    sources: dict[str, dict] = {}
    for path in expand_patterns(data.paths):
        for line_no, obj in read_jsonl(path, "skip", SkipReport()):
            sources[f"{path}:{line_no}"] = obj
    tmp = Path(out_path + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for pair, (c, r) in zip(pairs, logp):
            obj = dict(sources[pair["source"]], ref_chosen_logp=float(c), ref_rejected_logp=float(r))
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    tmp.replace(out_path)
    return len(pairs)


def preference_metrics(model: nn.Module, params: Any, ref_params: Any, pairs: list[dict], seq_len: int,
                       beta: float, batch_size: int = 8) -> dict[str, float]:
    """Implicit-reward metrics of ``params`` against ``ref_params`` on held-out ``pairs`` (DpoData.load)."""
    pol, ref = pair_logprobs(model, [params, ref_params], pairs, seq_len, batch_size)
    chosen, rejected = beta * (pol[:, 0] - ref[:, 0]), beta * (pol[:, 1] - ref[:, 1])
    margins = chosen - rejected
    return {"rewards/chosen": float(np.mean(chosen)), "rewards/rejected": float(np.mean(rejected)),
            "rewards/margins": float(np.mean(margins)), "rewards/accuracy": float(np.mean(margins > 0)),
            "pairs": len(margins)}


__all__ = ["DpoConfig", "DpoData", "PreferenceIterator", "dpo_loss", "make_dpo_step", "pair_logprobs", "pair_rows",
           "precompute_reference", "preference_metrics", "sequence_logprobs", "stack_pairs"]
