"""DPO's reference pass and held-out preference metrics: sequence log-probs of (chosen, rejected) pairs under
one or more parameter sets (``allam dpo-reference`` writes them into the data for a ``precomputed`` reference)."""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from allam_jax.align.preference_data import DpoData, stack_pairs
from allam_jax.align.sft_data import SkipReport, read_jsonl
from allam_jax.core.partitioning import Partitioner, jit_on
from allam_jax.core.paths import open_atomically
from allam_jax.data.sources import expand_patterns
from allam_jax.objectives.logprobs import sequence_logprobs


def pair_logprobs(model: nn.Module, params_list: Sequence[Any], pairs: list[dict], seq_len: int,
                  batch_size: int = 8, progress: Optional[str] = None,
                  partitioner: Optional[Partitioner] = None) -> list[np.ndarray]:
    """Sequence log-probs ``[len(pairs), 2]`` (chosen, rejected) under each of ``params_list``; the last
    batch is padded so that one compiled shape serves every batch. With a ``partitioner`` the pass runs on its
    mesh (parameters as they arrive, sharded by ``load_params``; each batch split over the batch axes)."""
    fn = jit_on(partitioner, lambda p, b: sequence_logprobs(model, p, b).reshape(-1, 2))
    outs: list[list[np.ndarray]] = [[] for _ in params_list]
    for start in tqdm(range(0, len(pairs), batch_size), desc=progress, unit="batch", disable=progress is None):
        chunk = pairs[start: start + batch_size]
        batch = stack_pairs(chunk + [chunk[-1]] * (batch_size - len(chunk)), seq_len)
        batch.pop("ref_logp")
        if partitioner is not None:
            batch = jax.device_put(batch, partitioner.batch_sharding)
        for out, params in zip(outs, params_list):
            out.append(np.asarray(fn(params, batch))[: len(chunk)])
    return [np.concatenate(o) for o in outs]


def precompute_reference(model: nn.Module, params: Any, data: DpoData, seq_len: int, out_path: str,
                         batch_size: int = 8, progress: bool = True, partitioner: Optional[Partitioner] = None) -> int:
    """One pass of the reference model over ``data`` in file order (on ``partitioner``'s mesh when given): writes
    each usable pair's JSON object with ``ref_chosen_logp`` and ``ref_rejected_logp`` added to ``out_path``
    (atomically)."""
    pairs = data.load(seq_len)
    [logp] = pair_logprobs(model, [params], pairs, seq_len, batch_size, "reference" if progress else None,
                           partitioner)
    sources: dict[str, dict] = {}
    for path in expand_patterns(data.paths):
        for line_no, obj in read_jsonl(path, "skip", SkipReport()):
            sources[f"{path}:{line_no}"] = obj
    with open_atomically(out_path) as f:
        for pair, (c, r) in zip(pairs, logp):
            obj = dict(sources[pair["source"]], ref_chosen_logp=float(c), ref_rejected_logp=float(r))
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
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


__all__ = ["pair_logprobs", "precompute_reference", "preference_metrics"]
