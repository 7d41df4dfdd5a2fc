"""Hugging Face ``config.json`` <-> :class:`ModelConfig` for the families allam-jax runs: Llama (1/2/3.x, with
Llama-3's RoPE scaling), Mistral (a Llama without sliding windows), Qwen2/Qwen2.5 (biased q/k/v) and Qwen3
(per-head q/k RMSNorm).

Every field of a ``config.json`` is mapped, checked to hold the one value the decoder computes, or known not to
change the function (token ids, dtype, bookkeeping); anything else is refused in one line naming the field, so a
checkpoint never converts into a different model than the one on disk.
"""

from __future__ import annotations

from typing import Any, Callable

from allam_jax.core.errors import ConversionError
from allam_jax.model.config import ModelConfig

FAMILIES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
            "Qwen3ForCausalLM": "qwen3"}
SUPPORTED_ARCHITECTURES = tuple(FAMILIES)
SUPPORTED_ROPE_TYPES = ("default", "llama3")

# fields that do not change what the model computes (ids, storage dtype, bookkeeping, generation defaults)
_NEUTRAL = {"architectures", "model_type", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range",
            "use_cache", "torch_dtype", "dtype", "transformers_version", "_name_or_path", "output_attentions",
            "output_hidden_states", "return_dict", "pretraining_tp", "max_window_layers", "tokenizer_class",
            "use_return_dict", "max_length", "num_key_value_heads", "head_dim", "tie_word_embeddings",
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
            "original_max_position_embeddings"}  # the last rows are mapped below


def _is(value: Any) -> Callable[[Any], bool]:
    return lambda v: v == value


# fields whose one allowed value is what the decoder computes; any other value is refused by name
_FIXED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "hidden_act": (_is("silu"), "silu (SwiGLU)"),
    "mlp_bias": (lambda v: not v, "false"),
    "attention_dropout": (lambda v: not v, "0 (no dropout)"),
    "partial_rotary_factor": (_is(1.0), "1.0 (RoPE over the whole head)"),
    "use_sliding_window": (lambda v: not v, "false (full attention)"),
    "layer_types": (lambda v: all(t == "full_attention" for t in v or ()), "only 'full_attention'"),
}
# per family: attention_bias (Qwen2 has biased q/k/v and no such field); sliding_window (Mistral applies it
# whenever it is set; Qwen only with use_sliding_window / layer_types, checked above)
_FAMILY_FIXED: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "llama": {"attention_bias": (lambda v: not v, "false")},
    "mistral": {"sliding_window": (lambda v: v is None, "null (no sliding window)")},
    "qwen2": {"sliding_window": (lambda v: True, ""), "attention_bias": (lambda v: True, "")},
    "qwen3": {"sliding_window": (lambda v: True, ""), "attention_bias": (lambda v: not v, "false")},
}
_ROPE_KEYS = {"default": {"rope_type", "type", "rope_theta"},
              "llama3": {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
                         "original_max_position_embeddings"}}


def family_of(hf_config: dict, source: str) -> str:
    arch = hf_config.get("architectures") or [hf_config.get("model_type", "?")]
    known = [FAMILIES[a] for a in arch if a in FAMILIES]
    if not known:
        raise ConversionError(f"{source}: architecture {arch} is not supported (supported: "
                              f"{list(SUPPORTED_ARCHITECTURES)})")
    return known[0]


def _check_fields(hf_config: dict, family: str, source: str) -> None:
    fixed = {**_FIXED, **_FAMILY_FIXED[family]}
    for name, value in hf_config.items():
        if name in fixed:
            ok, allowed = fixed[name]
            if not ok(value):
                raise ConversionError(f"{source}: {name}={value!r} is not supported (the allam-jax decoder "
                                      f"computes {allowed})")
        elif name not in _NEUTRAL:
            raise ConversionError(f"{source}: field {name!r} is not known to the {family} converter; refusing "
                                  "rather than converting a different model")


def _rope(hf_config: dict, source: str) -> dict:
    """ModelConfig's RoPE fields from either spelling: transformers-5 ``rope_parameters`` or ``rope_scaling``."""
    spelling = "rope_parameters" if hf_config.get("rope_parameters") else "rope_scaling"
    params = dict(hf_config.get(spelling) or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise ConversionError(f"{source}: {spelling} per layer type is not supported (one RoPE for every layer)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConversionError(f"{source}: {spelling}.rope_type={rope_type!r} is not supported (supported: "
                              f"{list(SUPPORTED_ROPE_TYPES)})")
    extra = sorted(set(params) - _ROPE_KEYS[rope_type])
    if extra:
        raise ConversionError(f"{source}: {spelling}.{extra[0]} is not supported with rope_type={rope_type!r}")
    theta = hf_config.get("rope_theta") or params.get("rope_theta") or 10000.0
    out: dict = {"rope_theta": float(theta)}
    if rope_type == "llama3":
        original = hf_config.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
        try:
            out.update(rope_scaling="llama3", rope_factor=float(params["factor"]),
                       rope_low_freq_factor=float(params["low_freq_factor"]),
                       rope_high_freq_factor=float(params["high_freq_factor"]),
                       rope_original_max_len=int(original or hf_config["max_position_embeddings"]))
        except KeyError as e:
            raise ConversionError(f"{source}: {spelling} of rope_type 'llama3' has no {e.args[0]!r}") from None
    return out


def config_from_hf(hf_config: dict, source: str = "config.json", scan_layers: bool = True) -> ModelConfig:
    """ModelConfig for a Hugging Face ``config.json``; unsupported features are errors, not guesses."""
    family = family_of(hf_config, source)
    _check_fields(hf_config, family, source)
    try:
        d, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
        head_dim = hf_config.get("head_dim")
        return ModelConfig(
            vocab_size=int(hf_config["vocab_size"]),
            d_model=d,
            num_layers=int(hf_config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
            mlp_dim=int(hf_config["intermediate_size"]),
            max_seq_len=int(hf_config.get("max_position_embeddings", 4096)),
            head_dim=None if head_dim is None or (d % heads == 0 and head_dim == d // heads) else int(head_dim),
            norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2",
            qk_norm=family == "qwen3",
            scan_layers=scan_layers,
            **_rope(hf_config, source),
        )
    except KeyError as e:
        raise ConversionError(f"{source}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{source}: {e}") from None


def export_family(cfg: ModelConfig) -> str:
    """The Hugging Face family whose model computes ``cfg``'s function."""
    if cfg.qkv_bias and cfg.qk_norm:
        raise ConversionError("ModelConfig with both qkv_bias and qk_norm matches no Hugging Face family")
    if cfg.qkv_bias:
        if cfg.kv_head_dim * cfg.num_heads != cfg.d_model:
            raise ConversionError(f"ModelConfig.qkv_bias with head_dim={cfg.kv_head_dim} != d_model / num_heads "
                                  "has no Qwen2 equivalent (Qwen2 derives head_dim)")
        return "qwen2"
    return "qwen3" if cfg.qk_norm else "llama"


def hf_config_from(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
    """A ``config.json`` that transformers loads as the model ``cfg`` computes (Llama, Qwen2 or Qwen3).
    Llama-3 scaling is written in the ``rope_scaling`` spelling, which transformers 4.43+ and 5 both read."""
    family = export_family(cfg)
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family]
    out = {
        "architectures": [arch],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "torch_dtype": torch_dtype,
    }
    if family != "qwen2":
        out.update(head_dim=cfg.kv_head_dim, attention_bias=False)
    if family == "llama":
        out.update(mlp_bias=False, bos_token_id=1, eos_token_id=2)
    else:
        out.update(use_sliding_window=False, sliding_window=None)
    if cfg.rope_scaling == "llama3":
        out["rope_scaling"] = {"rope_type": "llama3", "factor": cfg.rope_factor,
                               "low_freq_factor": cfg.rope_low_freq_factor,
                               "high_freq_factor": cfg.rope_high_freq_factor,
                               "original_max_position_embeddings": cfg.rope_original_max_len}
    return out


_GIN_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "mlp_dim", "max_seq_len",
               "head_dim", "rope_theta", "norm_eps", "tie_embeddings", "scan_layers")
_GIN_VARIANT_FIELDS = ("rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                       "rope_original_max_len", "qkv_bias", "qk_norm")


def model_gin(cfg: ModelConfig) -> str:
    """The gin lines that rebuild ``cfg`` (written beside a converted checkpoint); the family variants only where
    they differ from the plain Llama decoder, so a Llama-2 conversion writes what it always wrote."""
    plain = ModelConfig()
    fields = list(_GIN_FIELDS)
    if cfg.rope_scaling != "none":
        fields += _GIN_VARIANT_FIELDS[:5]
    fields += [f for f in _GIN_VARIANT_FIELDS[5:] if getattr(cfg, f) != getattr(plain, f)]
    return "".join(f"ModelConfig.{f} = {getattr(cfg, f)!r}\n" for f in fields)
