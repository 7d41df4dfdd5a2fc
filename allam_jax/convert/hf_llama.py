"""Hugging Face Llama-family tensors (Llama, Mistral, Qwen2, Qwen3) <-> allam-jax parameters; their
``config.json`` is mapped in :mod:`allam_jax.convert.hf_config`.

Our attention kernels are ``[d_model, heads, head_dim]`` and RoPE uses the half-split layout that
Hugging Face checkpoints are already stored in, so q/k need a transpose and a reshape, never a
permutation. Tensors are read one at a time from safetensors (single file or sharded with an index)
into preallocated host arrays, so peak memory stays near one copy of the model.

Name map (``L`` = layer; our kernels are ``W.T`` reshaped):

    model.embed_tokens.weight                   embed/embedding
    model.layers.L.self_attn.{q,k,v}_proj       attention/{query,key,value}/kernel  [d, heads, hd]
    model.layers.L.self_attn.o_proj             attention/out/kernel                [heads, hd, d]
    model.layers.L.self_attn.{q,k,v}_proj.bias  attention/{query,key,value}/bias    [heads, hd]  (Qwen2)
    model.layers.L.self_attn.{q,k}_norm         attention/{query,key}_norm/scale    [hd]         (Qwen3)
    model.layers.L.mlp.{gate,up,down}_proj      mlp/{gate,up,down}/kernel
    model.layers.L.input_layernorm              attention_norm/scale
    model.layers.L.post_attention_layernorm     mlp_norm/scale
    model.norm.weight                           final_norm/scale
    lm_head.weight                              lm_head/kernel (absent when embeddings are tied)
"""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Callable, Iterator, Optional

import numpy as np

from allam_jax.convert.hf_config import (SUPPORTED_ARCHITECTURES, config_from_hf,  # noqa: F401 - their old home
                                         hf_config_from, model_gin)
from allam_jax.core.errors import ConversionError, first_line
from allam_jax.core.paths import PathLike, as_path, is_remote
from allam_jax.model.config import ModelConfig


# ---------------------------------------------------------------- tensors


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, hd, f = cfg.d_model, cfg.kv_head_dim, cfg.mlp_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (cfg.num_heads * hd, d),
            p + "self_attn.k_proj.weight": (cfg.num_kv_heads * hd, d),
            p + "self_attn.v_proj.weight": (cfg.num_kv_heads * hd, d),
            p + "self_attn.o_proj.weight": (d, cfg.num_heads * hd),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        })
        if cfg.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (cfg.num_heads * hd,),
                           p + "self_attn.k_proj.bias": (cfg.num_kv_heads * hd,),
                           p + "self_attn.v_proj.bias": (cfg.num_kv_heads * hd,)})
        if cfg.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


# our (module path, leaf) for a per-layer HF suffix, and how a HF weight becomes our kernel
def _layer_map(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]]]:
    d, hd = cfg.d_model, cfg.kv_head_dim
    variants: dict = {}
    if cfg.qkv_bias:
        variants.update({
            "self_attn.q_proj.bias": (("attention", "query", "bias"), lambda w: w.reshape(cfg.num_heads, hd)),
            "self_attn.k_proj.bias": (("attention", "key", "bias"), lambda w: w.reshape(cfg.num_kv_heads, hd)),
            "self_attn.v_proj.bias": (("attention", "value", "bias"), lambda w: w.reshape(cfg.num_kv_heads, hd)),
        })
    if cfg.qk_norm:
        variants.update({"self_attn.q_norm.weight": (("attention", "query_norm", "scale"), lambda w: w),
                         "self_attn.k_norm.weight": (("attention", "key_norm", "scale"), lambda w: w)})
    return variants | {
        "self_attn.q_proj.weight": (("attention", "query", "kernel"), lambda w: w.T.reshape(d, cfg.num_heads, hd)),
        "self_attn.k_proj.weight": (("attention", "key", "kernel"), lambda w: w.T.reshape(d, cfg.num_kv_heads, hd)),
        "self_attn.v_proj.weight": (("attention", "value", "kernel"), lambda w: w.T.reshape(d, cfg.num_kv_heads, hd)),
        "self_attn.o_proj.weight": (("attention", "out", "kernel"), lambda w: w.T.reshape(cfg.num_heads, hd, d)),
        "mlp.gate_proj.weight": (("mlp", "gate", "kernel"), lambda w: w.T),
        "mlp.up_proj.weight": (("mlp", "up", "kernel"), lambda w: w.T),
        "mlp.down_proj.weight": (("mlp", "down", "kernel"), lambda w: w.T),
        "input_layernorm.weight": (("attention_norm", "scale"), lambda w: w),
        "post_attention_layernorm.weight": (("mlp_norm", "scale"), lambda w: w),
    }


def _unmap(cfg: ModelConfig) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Inverse transforms: our kernel -> HF weight, keyed by HF suffix."""
    d = cfg.d_model
    flat = lambda k: k.reshape(-1)  # noqa: E731 - a bias [heads, hd] -> [heads * hd]
    return {
        "self_attn.q_proj.bias": flat, "self_attn.k_proj.bias": flat, "self_attn.v_proj.bias": flat,
        "self_attn.q_norm.weight": lambda k: k, "self_attn.k_norm.weight": lambda k: k,
        "self_attn.q_proj.weight": lambda k: k.reshape(d, -1).T,
        "self_attn.k_proj.weight": lambda k: k.reshape(d, -1).T,
        "self_attn.v_proj.weight": lambda k: k.reshape(d, -1).T,
        "self_attn.o_proj.weight": lambda k: k.reshape(-1, d).T,
        "mlp.gate_proj.weight": lambda k: k.T,
        "mlp.up_proj.weight": lambda k: k.T,
        "mlp.down_proj.weight": lambda k: k.T,
        "input_layernorm.weight": lambda k: k,
        "post_attention_layernorm.weight": lambda k: k,
    }


class SafetensorsReader:
    """Tensors of a Hugging Face model directory, one at a time (single file or sharded with an index)."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        self._safe_open = safe_open
        if is_remote(hf_dir):  # safetensors maps local files; it has no object-store reader
            raise ConversionError(f"{hf_dir}: Hugging Face weights are read from a local directory; copy it first "
                                  "(gcloud storage cp -r)")
        root = as_path(hf_dir)
        index = root / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: root / f for name, f in weight_map.items()}
        elif (root / "model.safetensors").is_file():
            with self._open(root / "model.safetensors") as f:
                self.files = {name: root / "model.safetensors" for name in f.keys()}
        else:
            raise ConversionError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json (PyTorch .bin "
                                  "checkpoints are not read: re-save them with safe_serialization=True)")
        for path in set(self.files.values()):
            if not path.is_file():
                raise ConversionError(f"{path}: listed in the index but missing")

    def names(self) -> set[str]:
        return set(self.files)

    def get(self, name: str) -> np.ndarray:
        with self._open(self.files[name]) as f:
            try:
                return f.get_tensor(name)
            except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError without the path
                raise ConversionError(f"{self.files[name]}: cannot read tensor {name} ({first_line(e, 200)})") from None

    @contextlib.contextmanager
    def _open(self, path: PathLike):
        try:
            handle = self._safe_open(str(path), framework="numpy")
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: SafetensorError, OSError
            raise ConversionError(f"{path}: not a readable safetensors file ({first_line(e, 200)})") from None
        with handle as f:
            yield f



def hf_to_params(reader: SafetensorsReader, cfg: ModelConfig, dtype=np.float32,
                 progress: Optional[Callable[[str], None]] = None) -> dict:
    """Our parameter tree (numpy, ``dtype``) from a reader; every tensor checked by name and shape."""
    expected = _expected_shapes(cfg)
    have = reader.names()
    if cfg.tie_embeddings:
        have.discard("lm_head.weight")  # some tied checkpoints still store it
    have = {n for n in have if not n.endswith("rotary_emb.inv_freq")}
    missing, extra = sorted(set(expected) - have), sorted(have - set(expected))
    if missing or extra:
        raise ConversionError(f"tensors do not match the config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                              f", unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")

    def load(name: str) -> np.ndarray:
        w = reader.get(name)
        if tuple(w.shape) != expected[name]:
            raise ConversionError(f"tensor {name} has shape {tuple(w.shape)}, the config implies {expected[name]}")
        if progress:
            progress(name)
        return np.asarray(w, dtype=dtype)

    params: dict = {"embed": {"embedding": load("model.embed_tokens.weight")},
                    "final_norm": {"scale": load("model.norm.weight")}}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": load("lm_head.weight").T.copy()}
    layer_map = _layer_map(cfg)
    stacked: dict = {}
    for i in range(cfg.num_layers):
        for suffix, (path, transform) in layer_map.items():
            w = transform(load(f"model.layers.{i}.{suffix}"))
            if cfg.scan_layers:
                node = stacked
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                if path[-1] not in node:
                    node[path[-1]] = np.empty((cfg.num_layers, *w.shape), dtype)
                node[path[-1]][i] = w
            else:
                node = params.setdefault(f"layer_{i}", {})
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = np.ascontiguousarray(w)
    if cfg.scan_layers:
        params["layers"] = stacked
    return params


def params_to_hf(params: dict, cfg: ModelConfig, dtype=np.float32) -> Iterator[tuple[str, np.ndarray]]:
    """``(hf_name, array)`` pairs for our parameters, one tensor at a time."""
    def as_np(x):
        return np.asarray(x, dtype=dtype)

    yield "model.embed_tokens.weight", as_np(params["embed"]["embedding"])
    yield "model.norm.weight", as_np(params["final_norm"]["scale"])
    if not cfg.tie_embeddings:
        yield "lm_head.weight", np.ascontiguousarray(as_np(params["lm_head"]["kernel"]).T)
    unmap = _unmap(cfg)
    for i in range(cfg.num_layers):
        layer = params["layers"] if cfg.scan_layers else params[f"layer_{i}"]
        for suffix, (path, _) in _layer_map(cfg).items():
            node = layer
            for key in path:
                node = node[key]
            w = as_np(node[i] if cfg.scan_layers else node)
            yield f"model.layers.{i}.{suffix}", np.ascontiguousarray(unmap[suffix](w))


def hf_tensor_order(cfg: ModelConfig) -> list[str]:
    """The names :func:`params_to_hf` yields, in its order."""
    names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if cfg.tie_embeddings else ["lm_head.weight"])
    for i in range(cfg.num_layers):
        names += [f"model.layers.{i}.{suffix}" for suffix in _layer_map(cfg)]
    return names


_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def write_safetensors(tensors: Iterator[tuple[str, np.ndarray]], cfg: ModelConfig, out: PathLike, dtype=np.float32,
                      max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes ``model.safetensors`` or, past ``max_shard_bytes``, shards plus ``model.safetensors.index.json``,
    one tensor at a time: every name and shape is known from ``cfg`` before any is read, so each shard's header
    is written first and each tensor streamed after it; host memory holds one tensor, never a shard."""
    out = as_path(out)
    dtype = np.dtype(dtype)
    shapes = _expected_shapes(cfg)
    shards: list[list[str]] = [[]]
    size = 0
    for name in hf_tensor_order(cfg):
        nbytes = int(np.prod(shapes[name])) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    weight_map, total = {}, 0
    for fname, names in zip(files, shards):
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name in names:
            nbytes = int(np.prod(shapes[name])) * dtype.itemsize
            header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype.name], "shape": list(shapes[name]),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        with (out / fname).open("wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for expected in names:
                name, arr = next(tensors)
                arr = np.ascontiguousarray(arr, dtype=dtype)
                if name != expected or arr.shape != tuple(shapes[name]):
                    raise ConversionError(f"internal: tensor {name} {arr.shape} where {expected} "
                                          f"{tuple(shapes[expected])} was planned")
                f.write(memoryview(arr.reshape(-1).view(np.uint8)))
                del arr
        total += offset
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def write_tokenizer_files(spm_model: str, out: PathLike, max_len: int, bpe=None) -> None:
    """``tokenizer.model`` plus the config files that make ``AutoTokenizer`` build a Llama tokenizer; for a
    byte-level BPE ``tokenizer.json`` (``bpe``: it, loaded), that file and its family's ``tokenizer_config.json``
    (copied from beside it, else one naming its BOS/EOS) for a fast tokenizer."""
    out = as_path(out)
    if bpe is not None:
        _write_bpe_tokenizer_files(spm_model, bpe, out, max_len)
        return
    (out / "tokenizer.model").write_bytes(as_path(spm_model).read_bytes())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "model_max_length": max_len, "add_bos_token": True,
        "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "legacy": False,
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")


def _write_bpe_tokenizer_files(tokenizer_json: str, tok, out, max_len: int) -> None:
    src = as_path(tokenizer_json)
    (out / "tokenizer.json").write_bytes(src.read_bytes())
    config = src.parent / "tokenizer_config.json"
    if config.is_file():
        (out / "tokenizer_config.json").write_bytes(config.read_bytes())
        return
    names = {k: tok.id_to_piece(i) for k, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id)) if i is not None}
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, **names}, indent=2) + "\n")
