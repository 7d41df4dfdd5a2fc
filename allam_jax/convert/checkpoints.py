"""``allam convert from-hf`` / ``to-hf``: whole-checkpoint conversion, written all or nothing."""

from __future__ import annotations

import json
from typing import Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from allam_jax.convert.hf_config import config_from_hf, family_of, hf_config_from, model_gin
from allam_jax.convert.hf_llama import (ConversionError, SafetensorsReader, hf_tensor_order, hf_to_params,
                                        params_to_hf, write_safetensors, write_tokenizer_files)
from allam_jax.checkpoint.params_io import load_params, stored_params, write_params_checkpoint
from allam_jax.core.params import abstract_params
from allam_jax.core.trees import count_params
from allam_jax.core.paths import as_path, staged_dir
from allam_jax.model import Decoder, ModelConfig

_DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}


def _np_dtype(name: str):
    if name not in _DTYPES:
        raise ConversionError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def import_from_hf(hf_dir: str, out: str, scan_layers: bool = True, dtype: str = "float32",
                   progress: bool = True) -> dict:
    """Reads ``config.json`` + safetensors from ``hf_dir``; writes ``OUT/0/state`` (params), ``OUT/model.gin``
    and ``OUT/conversion.json``. Returns the summary."""
    config_path = as_path(hf_dir) / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{config_path}: not found (is {hf_dir} a Hugging Face model directory?)")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{config_path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if as_path(out).exists():
        raise ConversionError(f"output already exists: {out}")
    cfg = config_from_hf(hf_config, str(config_path), scan_layers)
    reader = SafetensorsReader(hf_dir)
    bar = tqdm(total=len(reader.names()), desc="import", unit="tensor", disable=not progress)
    params = hf_to_params(reader, cfg, _np_dtype(dtype), progress=lambda name: bar.update(1))
    bar.close()
    count = count_params(params)
    summary = {"source": str(hf_dir), "family": family_of(hf_config, str(config_path)), "params": count,
               "dtype": dtype, "scan_layers": scan_layers}
    write_params_checkpoint(out, params, {"model.gin": model_gin(cfg),
                                          "conversion.json": json.dumps(summary, indent=2) + "\n"})
    return summary


def restore_for_export(ckpt: str, cfg: ModelConfig) -> dict:
    """Parameters of ``ckpt`` on one device, checked against ``cfg``'s shapes (``core.params.load_params``)."""
    return load_params(ckpt, Decoder(cfg))


def export_to_hf(ckpt: str, cfg: ModelConfig, out: str, tokenizer: Optional[str] = None,
                 dtype: str = "float32", max_shard_bytes: int = 5 * 2**30, progress: bool = False) -> dict:
    """Writes a directory that ``transformers.AutoModelForCausalLM`` (and, with ``tokenizer``,
    ``AutoTokenizer``) loads. Tensors stream from the checkpoint's storage to the safetensors files one at a
    time (one layer of a scanned stack at a time): no device holds the model and host memory holds about one
    tensor, so a 70B model exports from a small VM. Locally the output appears whole or not at all (written
    beside it, then renamed); on a bucket, ``config.json`` is written last."""
    np_dtype = _np_dtype(dtype)
    bpe = None  # a byte-level tokenizer.json, loaded once for the check, its ids and the files written
    if tokenizer is not None:
        if not as_path(tokenizer).is_file():
            raise ConversionError(f"tokenizer not found: {tokenizer}")
        from allam_jax.data.vocabularies import ByteLevelBPEVocabulary, check_fits_model, get_vocabulary

        vocab = get_vocabulary(tokenizer)
        check_fits_model(vocab, cfg.vocab_size, f"tokenizer {tokenizer}")
        bpe = vocab.tokenizer if isinstance(vocab, ByteLevelBPEVocabulary) else None
    out_path = as_path(out)
    if out_path.exists():
        raise ConversionError(f"output already exists: {out}")
    params = stored_params(ckpt, abstract_params(Decoder(cfg)))
    with staged_dir(out) as target:
        names = len(hf_tensor_order(cfg))
        bar = tqdm(total=names, desc="export", unit="tensor", disable=not progress)

        def counted():
            for pair in params_to_hf(params, cfg, np_dtype):
                yield pair
                bar.update(1)

        write_safetensors(counted(), cfg, target, np_dtype, max_shard_bytes)
        bar.close()
        hf_config = hf_config_from(cfg, dtype)
        if bpe is not None:  # the ids of the tokenizer shipped with it
            hf_config.update(bos_token_id=bpe.bos_id, eos_token_id=bpe.eos_id)
        ids = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id") if hf_config.get(k) is not None}
        (target / "generation_config.json").write_text(json.dumps(ids) + "\n")
        if tokenizer is not None:
            write_tokenizer_files(tokenizer, target, cfg.max_seq_len, bpe)
        (target / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params, is_leaf=lambda x: hasattr(x, "shape")))
    return {"out": str(out_path), "params": count, "dtype": dtype}
