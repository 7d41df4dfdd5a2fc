"""Embedding surgery: grow the embedding and LM head to the merged vocabulary.

Old rows are copied bit for bit. Each new row (in both matrices) is, by default, the mean of the base
model's rows for the pieces that the *base* tokenizer splits the new piece's surface text into
(ALLaM's initialisation), so a new token starts out meaning roughly what its old spelling meant.
"""

from __future__ import annotations

import json
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from allam_jax.core.errors import CheckpointError
from allam_jax.core.paths import as_path
from allam_jax.checkpoint.params_io import abstract_params_as_saved, restore_params, write_params_checkpoint
from allam_jax.core.partitioning import Partitioner
from allam_jax.tokenizer import INIT_METHODS
from allam_jax.tokenizer.fit_head import HeadFit, fit_output_rows, sample_statistics
from allam_jax.tokenizer.interface import SentencePieceTokenizer, Tokenizer, as_tokenizer, load_tokenizer
from allam_jax.tokenizer.spm_io import ModelProto, TokenizerError



def surface_splitter(base: ModelProto):
    """A base processor that encodes a piece's text exactly: no dummy prefix, whitespace kept."""
    return SentencePieceTokenizer(base).split_surface


def subtoken_ids(base, merged) -> list[list[int]]:
    """For every id past the base vocabulary, the base ids its text splits into ([] for padding and specials).
    ``base``/``merged``: tokenizers of one kind (:mod:`.interface`), or SentencePiece protos."""
    base, merged = as_tokenizer(base), as_tokenizer(merged)
    return [base.split_surface(merged.id_to_piece(i)) if merged.is_normal(i) else []
            for i in range(base.vocab_size, merged.vocab_size)]


def _new_rows(table: jax.Array, ids: list[list[int]], method: str, seed: int) -> jax.Array:
    """Rows for the new ids from ``table [base_vocab, d]``: a masked mean over padded index lists."""
    n = len(ids)
    if method == "random":
        std = jnp.std(table.astype(jnp.float32))
        return (jax.random.normal(jax.random.PRNGKey(seed), (n, table.shape[1])) * std).astype(table.dtype)
    mean_all = jnp.mean(table.astype(jnp.float32), axis=0)
    if method == "mean_all":
        return jnp.broadcast_to(mean_all, (n, table.shape[1])).astype(table.dtype)
    width = max((len(i) for i in ids), default=1) or 1
    index = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width), np.float32)
    for r, row in enumerate(ids):
        index[r, : len(row)] = row
        mask[r, : len(row)] = 1.0
    # a one-off computation, run op by op (no program to compile or share)
    gathered = jnp.take(table.astype(jnp.float32), jnp.asarray(index), axis=0) * jnp.asarray(mask)[..., None]
    count = jnp.asarray(mask).sum(-1, keepdims=True)
    return jnp.where(count > 0, gathered.sum(1) / jnp.maximum(count, 1.0), mean_all).astype(table.dtype)


def _norm_matched(rows: jax.Array, table: jax.Array, spelled: np.ndarray) -> jax.Array:
    """``rows`` (those with a spelling) rescaled to the mean L2 norm of ``table``'s rows."""
    target = jnp.linalg.norm(table.astype(jnp.float32), axis=1).mean()
    norms = jnp.linalg.norm(rows.astype(jnp.float32), axis=1, keepdims=True)
    scaled = rows.astype(jnp.float32) * (target / jnp.maximum(norms, 1e-12))
    return jnp.where(jnp.asarray(spelled)[:, None], scaled, rows.astype(jnp.float32)).astype(rows.dtype)


def expand_params(params: dict, base: "Tokenizer | ModelProto", merged: "Tokenizer | ModelProto",
                  method: str = "mean_subtoken",
                  seed: int = 0, drop_extra_rows: bool = False, fit: Optional[HeadFit] = None,
                  partitioner: Optional[Partitioner] = None) -> tuple[dict, dict]:
    """Returns (new params, report). Rows past the base tokenizer's size are refused unless ``drop_extra_rows``
    says they are only vocabulary padding (then they are replaced, and the report names them). ``fitted``: input
    rows as ``mean_subtoken`` rescaled to the base rows' mean length, output rows fitted on the samples ``fit``
    names (:mod:`.fit_head`)."""
    if method not in INIT_METHODS:
        raise TokenizerError(f"--init must be one of {INIT_METHODS}, got {method!r}")
    if method == "fitted" and fit is None:
        raise TokenizerError("--init fitted needs text to fit on: --new_text (the added pieces' language) and "
                             "--old_text (text whose predictions must stay, e.g. English)")
    if method == "fitted" and "lm_head" not in params:
        raise TokenizerError("--init fitted sets output rows apart from input rows: it needs an untied LM head")
    base, merged = as_tokenizer(base), as_tokenizer(merged)
    base_n, merged_n = base.vocab_size, merged.vocab_size
    embedding = params["embed"]["embedding"]
    if embedding.shape[0] < base_n:
        raise TokenizerError(
            f"checkpoint embedding has {embedding.shape[0]} rows but the base tokenizer has {base_n} pieces: "
            "this checkpoint was not trained with that tokenizer"
        )
    if embedding.shape[0] > base_n and not drop_extra_rows:
        raise TokenizerError(
            f"checkpoint embedding has {embedding.shape[0]} rows but the base tokenizer has {base_n} pieces: rows "
            f"{base_n}-{embedding.shape[0] - 1} would be dropped; give the tokenizer the checkpoint was trained with, "
            "or --drop_extra_rows if those rows are only vocabulary padding")
    ids = subtoken_ids(base, merged)
    base_emb = embedding[:base_n]
    new = dict(params)
    input_method, output_method = ("mean_subtoken", "mean_all") if method == "fitted" else (method, method)
    new_emb = _new_rows(base_emb, ids, input_method, seed)
    if method == "fitted":  # a mean of several rows is shorter than a row: give it the base rows' length
        new_emb = _norm_matched(new_emb, base_emb, np.asarray([bool(i) for i in ids]))
    new["embed"] = dict(params["embed"], embedding=jnp.concatenate([base_emb, new_emb]))
    fit_report = None
    if "lm_head" in params:
        head = params["lm_head"]["kernel"]  # [d, vocab]
        if head.shape[1] != embedding.shape[0]:
            raise TokenizerError(f"lm_head has {head.shape[1]} columns but the embedding {embedding.shape[0]} rows")
        base_head = head[:, :base_n].T
        new_head = _new_rows(base_head, ids, output_method, seed + 1)
        new["lm_head"] = dict(params["lm_head"], kernel=jnp.concatenate([base_head, new_head]).T)
        if method == "fitted":
            bos = merged.bos_id if merged.bos_id is not None else merged.eos_id
            states, is_new, counts, share = sample_statistics(new, fit, merged.encode, bos, base_n,
                                                              partitioner or Partitioner.create())
            rows = fit_output_rows(np.asarray(jax.device_get(base_head), np.float64), states, is_new, counts, share)
            new["lm_head"]["kernel"] = jnp.concatenate([base_head, jnp.asarray(rows, base_head.dtype)]).T
            fit_report = {"hidden_states": {"new": int(is_new.sum()), "old": int((~is_new).sum())},
                          "new_token_share": share, "new_text": fit.new_text, "old_text": fit.old_text}
    lengths = [len(i) for i in ids if i]
    report = {
        "base_vocab": base_n,
        "merged_vocab": merged_n,
        "old_embedding_rows": int(embedding.shape[0]),
        "dropped_rows": [base_n, int(embedding.shape[0])] if embedding.shape[0] > base_n else None,
        "new_rows": merged_n - base_n,
        "init": method,
        "mean_subtokens_per_new_piece": float(np.mean(lengths)) if lengths else 0.0,
        "tied_embeddings": "lm_head" not in params,
        "fit": fit_report,
    }
    return new, report


def expand_checkpoint(ckpt: str, base_tokenizer: str, merged_tokenizer: str, out: str,
                      method: str = "mean_subtoken", seed: int = 0, drop_extra_rows: bool = False,
                      fit: Optional[HeadFit] = None) -> dict:
    """Reads params from ``ckpt``, writes ``out/0/state`` (params only) and ``out/expansion.json``.

    ``allam train`` continues from it with ``TrainerConfig.init_from = OUT`` and
    ``ModelConfig.vocab_size`` set to the merged size. Nothing is written unless every check passes.
    """
    base, merged = load_tokenizer(base_tokenizer), load_tokenizer(merged_tokenizer)
    merged.check_extends(base)
    if as_path(out).exists():
        raise TokenizerError(f"output already exists: {out}")
    partitioner = Partitioner.create()  # every device on fsdp: no host holds the whole model
    params = restore_params(ckpt, abstract_params_as_saved(ckpt, partitioner))
    if "embed" not in params or "embedding" not in params["embed"]:
        raise CheckpointError(f"{ckpt} has no params['embed']['embedding']: not an allam-jax checkpoint")
    with partitioner.activate():
        new_params, report = expand_params(params, base, merged, method, seed, drop_extra_rows, fit, partitioner)
    report.update(source=str(ckpt), base_tokenizer=base_tokenizer, merged_tokenizer=merged_tokenizer)
    write_params_checkpoint(out, new_params, {"expansion.json": json.dumps(report, indent=2) + "\n"})
    return report


__all__ = ["INIT_METHODS", "expand_checkpoint", "expand_params", "subtoken_ids", "surface_splitter"]
