"""Log-likelihood scoring with lm-evaluation-harness semantics, multiple-choice accuracy, perplexity.

``loglikelihood(context, continuation)``: trailing spaces of the context move to the continuation; the
two are tokenised jointly and split at the context's token length (so a merge across the boundary
counts towards the continuation); the score is the summed log-probability of the continuation tokens
after BOS + context. Requests are packed several to a row (segment ids keep them apart) into one
jitted shape.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import Partitioner, jit_on
from allam_jax.eval.readers import Question
from allam_jax.model import Decoder, ModelConfig
from allam_jax.objectives.logprobs import forward_logits, token_logprobs


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens the harness's way (``_encode_pair``)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return whole[: len(ctx)], whole[len(ctx):]


def score_tokens(model: Decoder, params, tokens: jax.Array, targets: jax.Array, positions: jax.Array,
                 segments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The scoring step: each target token's log-probability and whether it is the greedy choice."""
    logits = forward_logits(model, params, {"inputs": tokens, "positions": positions, "segment_ids": segments})
    return token_logprobs(logits, targets), jnp.argmax(logits, -1) == targets


def scoring_function(model: Decoder, partitioner: Optional[Partitioner] = None) -> Callable:
    """The jitted scoring step the scorer runs and ``allam compile --step=eval`` lowers: parameters and
    batch keep the shardings they arrive with, the outputs come back split like the batch."""
    outputs = {} if partitioner is None else {"out_shardings": (partitioner.batch_sharding,) * 2}
    return jit_on(partitioner, functools.partial(score_tokens, model), **outputs)


@dataclasses.dataclass
class LoglikelihoodScorer:
    """Scores (context, continuation) pairs with one model; ``bos`` is prepended to every context."""

    cfg: ModelConfig
    params: object
    encode: Callable[[str], list[int]]
    bos: int
    batch_size: int = 16
    progress: bool = False
    partitioner: Optional[Partitioner] = None  # with one, batches are split over its data and fsdp axes

    def __post_init__(self):
        self.score_fn = scoring_function(Decoder(self.cfg), self.partitioner)
        if self.partitioner is None:
            self._score = self.score_fn
            return
        parts = self.partitioner.axis_size(self.partitioner.batch_axes)
        if self.batch_size % parts:
            raise ConfigError(f"batch size {self.batch_size} is not divisible by the mesh's data x fsdp = {parts}")
        sharding = self.partitioner.batch_sharding
        self._score = lambda params, *arrays: self.score_fn(params, *(jax.device_put(a, sharding) for a in arrays))

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), continuation is the greedy decode)`` per text request."""
        return self.loglikelihood_tokens([encode_pair(self.encode, c, x) for c, x in requests])

    def loglikelihood_tokens(self, requests: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """The same for requests already tokenised as ``(context ids, continuation ids)``.

        Requests are packed: longest first, each into the current row while it fits (its own segment,
        positions from 0, BOS first), ``batch_size`` rows of ``max_seq_len`` tokens per jitted call."""
        width = self.cfg.max_seq_len
        encoded = []
        for ctx, cont in requests:
            seq = [self.bos] + list(ctx) + list(cont)
            if len(seq) - 1 > width:  # keep the end: the continuation must be scored whole
                seq = seq[-(width + 1):]
            encoded.append((seq, len(cont)))
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        rows: list[list[int]] = [[]]
        used = 0
        for i in order:
            n = len(encoded[i][0]) - 1
            if used + n > width:
                rows.append([])
                used = 0
            rows[-1].append(i)
            used += n
        out: list[Optional[tuple[float, bool]]] = [None] * len(encoded)
        batches = range(0, len(rows), self.batch_size)
        for start in tqdm(batches, desc="score", unit="batch", disable=not self.progress):
            batch_rows = rows[start: start + self.batch_size]
            arrays = {k: np.zeros((self.batch_size, width), np.int32) for k in ("tokens", "targets", "positions",
                                                                                   "segments")}
            spans = []
            for r, members in enumerate(batch_rows):
                col = 0
                for seg, i in enumerate(members, 1):
                    seq, n_cont = encoded[i]
                    n = len(seq) - 1
                    sl = slice(col, col + n)
                    arrays["tokens"][r, sl], arrays["targets"][r, sl] = seq[:-1], seq[1:]
                    arrays["positions"][r, sl], arrays["segments"][r, sl] = np.arange(n), seg
                    spans.append((i, r, col + n - n_cont, col + n))
                    col += n
            tok, correct = self._score(self.params, arrays["tokens"], arrays["targets"], arrays["positions"],
                                       arrays["segments"])
            tok, correct = np.asarray(tok), np.asarray(correct)
            for i, r, a, b in spans:
                out[i] = (float(tok[r, a:b].sum()), bool(correct[r, a:b].all()))
        return out  # type: ignore[return-value]


def fewshot_prompt(question: Question, shots: Sequence[Question]) -> str:
    return "".join(s.with_answer() + "\n\n" for s in shots) + question.prompt


def choice_correct(loglikelihoods: Sequence[float], choices: Sequence[str], gold: int) -> tuple[int, int]:
    """(acc, acc_norm) of one question: the best log-likelihood, and the best per character of the choice
    (lm-evaluation-harness's ``acc_norm``), against the gold index."""
    ll = np.asarray(loglikelihoods, np.float64)
    norm = ll / np.array([len(c) for c in choices])
    return int(np.argmax(ll) == gold), int(np.argmax(norm) == gold)


def evaluate_multiple_choice(scorer: LoglikelihoodScorer, questions: Sequence[Question],
                             dev: Optional[Sequence[Question]] = None, num_fewshot: int = 0,
                             seed: int = 1234) -> dict:
    """acc and acc_norm (log-likelihood divided by the continuation's characters) overall, per subject."""
    rng = random.Random(seed)
    pool = list(dev) if dev else list(questions)
    requests, spans = [], []
    for q in questions:
        candidates = [s for s in pool if s.source != q.source]
        shots = rng.sample(candidates, min(num_fewshot, len(candidates))) if num_fewshot else []
        context = fewshot_prompt(q, shots)
        spans.append((len(requests), len(q.choices)))
        requests += [(context, c) for c in q.choices]
    scores = scorer.loglikelihood(requests)
    per_subject: dict[str, list[tuple[int, int]]] = {}
    for q, (start, n) in zip(questions, spans):
        ll = [scores[start + j][0] for j in range(n)]
        per_subject.setdefault(q.subject, []).append(choice_correct(ll, q.choices, q.gold))
    flat = [r for rows in per_subject.values() for r in rows]
    return {
        "acc": float(np.mean([a for a, _ in flat])),
        "acc_norm": float(np.mean([b for _, b in flat])),
        "n": len(flat),
        "subjects": {s: {"acc": float(np.mean([a for a, _ in rows])), "acc_norm": float(np.mean([b for _, b in rows])),
                         "n": len(rows)} for s, rows in sorted(per_subject.items())},
    }


def perplexity(scorer: LoglikelihoodScorer, documents: Sequence[str]) -> dict:
    """Token perplexity and bits per UTF-8 byte of ``documents``. Each document is cut into windows of the
    model's length, each predicted after BOS alone (lm-evaluation-harness's rolling log-likelihood
    without overlap). Bits per byte compares models with different tokenizers."""
    step = scorer.cfg.max_seq_len
    windows = []
    for doc in documents:
        ids = scorer.encode(doc)
        windows += [([], ids[start: start + step]) for start in range(0, len(ids), step)]
    results = scorer.loglikelihood_tokens(windows)
    nll = -sum(ll for ll, _ in results)
    tokens = sum(len(w) for _, w in windows)
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    return {"perplexity": math.exp(nll / max(tokens, 1)), "bits_per_byte": nll / max(n_bytes, 1) / math.log(2),
            "tokens": int(tokens), "bytes": n_bytes, "documents": len(documents)}
