"""Output rows for new tokens, fitted so each starts with the probability the data gives it (``--init fitted``;
its input rows are the mean of the sub-token rows, rescaled to the base rows' mean length: a mean of ~7 rows is
~4x shorter than a row, and such small rows learn slower than random ones in continued pretraining).

Mean-of-sub-token output rows copy the logits of the pieces a new token replaces; in text of the new language
the base model rates those pieces highly, so probability spreads over hundreds of similar new tokens and the
expanded model starts *worse* than with random rows. Random rows, in turn, take probability from every
context, English included. This fit keeps the base model's predictions where the new pieces do not belong
and gives them the share they have where they do:

- the expanded model (new input rows already set) reads a sample of new-language text and of old-language
  text in the merged tokenization; ``h`` are its final hidden states;
- each new output row is ``w = w_mean + u_1 + log f_t * u_2``: ``w_mean`` the mean of the base output rows
  (Hewitt's initialisation, whose logit is the context's mean logit), ``f_t`` the token's smoothed frequency
  among the new tokens of the new-language sample, and ``u_1``, ``u_2`` ridge least-squares solutions of
  ``h . u_2 = [new-language context]`` and ``h . u_1 = log(q / (1 - q)) + logsumexp(base logits) - mean logit``
  in new-language contexts (``q``: the share of new tokens there) and ``OLD_OFFSET`` elsewhere;
- so in new-language contexts the new tokens together take about ``q`` of the probability, each in proportion
  to its frequency, and elsewhere their logits sit ``|OLD_OFFSET|`` nats below the mean logit.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from allam_jax.core.errors import TokenizerError
from allam_jax.data.normalize import normalize_text
from allam_jax.data.text_files import read_documents
from allam_jax.model import Decoder

OLD_OFFSET = -3.0  # where the new pieces do not belong, their logits start this far below the context's mean logit
RIDGE = 1e-3  # ridge penalty per hidden state (the fit has d_model unknowns and thousands of equations)


@dataclasses.dataclass(frozen=True)
class HeadFit:
    """What the fit reads: the model's config, text in the new pieces' language and text whose predictions must
    stay (``.txt`` lines or ``.jsonl`` 'text', local or ``gs://``), and how many windows of each."""

    model: object  # ModelConfig of the expanded model
    new_text: str
    old_text: str
    windows: int = 64


def fit_output_rows(base_head: np.ndarray, hidden: np.ndarray, is_new: np.ndarray, counts: np.ndarray,
                    new_share: float, old_offset: float = OLD_OFFSET, ridge: float = RIDGE) -> np.ndarray:
    """New output rows ``[n_new, d]`` from the base rows ``[n_base, d]``, hidden states ``[N, d]`` with their
    context's language (``is_new``), each new token's count in the new-language sample and the new tokens'
    share there (float64 throughout)."""
    head = np.asarray(base_head, np.float64)
    h = np.asarray(hidden, np.float64)
    new = np.asarray(is_new, bool)
    if not new.any() or new.all():
        raise TokenizerError("the fit needs hidden states of both new-language and old-language text")
    q = float(np.clip(new_share, 1e-3, 1 - 1e-3))
    w_mean = head.mean(0)
    logits = h @ head.T
    top = logits.max(1)
    lse = np.log(np.exp(logits - top[:, None]).sum(1)) + top
    target = np.where(new, lse - h @ w_mean + np.log(q / (1 - q)), old_offset)
    gram = h.T @ h + ridge * len(h) * np.eye(h.shape[1])
    u1, u2 = np.linalg.solve(gram, h.T @ np.stack([target, new.astype(np.float64)], 1)).T
    freq = (np.asarray(counts, np.float64) + 1.0) / (np.sum(counts) + len(counts))
    return w_mean[None, :] + u1[None, :] + np.log(freq)[:, None] * u2[None, :]


def _windows(texts: Sequence[str], encode, bos: int, width: int, limit: int) -> list[list[int]]:
    out = []
    for text in texts:
        ids = [bos] + list(encode(text))
        for start in range(0, len(ids) - 1, width):
            out.append(ids[start: start + width])
            if len(out) == limit:
                return out
    return out


def sample_statistics(params, fit: HeadFit, encode, bos: int, base_vocab: int, partitioner) \
        -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The expanded model's hidden states on both samples, their language, new-token counts and share."""
    cfg = fit.model
    rows, langs = [], []
    for path, new in ((fit.new_text, True), (fit.old_text, False)):
        windows = _windows([normalize_text(t) for t, _ in read_documents(path)], encode, bos, cfg.max_seq_len,
                           fit.windows)
        rows += windows
        langs += [new] * len(windows)
    if not any(langs) or all(langs):
        raise TokenizerError(f"no text to fit on in {fit.old_text if any(langs) else fit.new_text}")
    ids = np.concatenate([np.asarray(w[1:], np.int64) for w, new in zip(rows, langs) if new])
    counts = np.bincount(ids[ids >= base_vocab] - base_vocab, minlength=cfg.vocab_size - base_vocab)
    share = float((ids >= base_vocab).mean())
    parts = partitioner.axis_size(partitioner.batch_axes)
    batch = -(-8 // parts) * parts  # rows per forward pass: a multiple of the batch-sharded devices
    model = Decoder(cfg)
    forward = partitioner.jit(lambda p, x: model.apply({"params": p}, x, return_hidden=True))
    states = []
    for start in range(0, len(rows), batch):
        chunk = rows[start: start + batch]
        tokens = np.zeros((batch, cfg.max_seq_len), np.int32)
        for r, w in enumerate(chunk):
            tokens[r, : len(w)] = w
        hidden = np.asarray(jax.device_get(forward(params, jax.device_put(tokens, partitioner.batch_sharding))),
                            np.float64)
        states += [hidden[r, : len(w)] for r, w in enumerate(chunk)]
    states = np.concatenate(states)
    is_new = np.concatenate([np.full(len(w), new) for w, new in zip(rows, langs)])
    return states, is_new, counts, share


__all__ = ["HeadFit", "OLD_OFFSET", "fit_output_rows", "sample_statistics"]
