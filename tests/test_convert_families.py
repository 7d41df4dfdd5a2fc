"""Today's bases through `convert from-hf` / `to-hf`: Llama-3 (RoPE scaling, both config spellings), Mistral,
Qwen2 (q/k/v bias) and Qwen3 (q/k norm, head_dim apart from d_model / heads), each against transformers' own
PyTorch model on the same random weights; refusals name the field."""

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import torch  # the hf extra, installed by setup.sh
import transformers

from allam_jax.convert.checkpoints import export_to_hf, import_from_hf
from allam_jax.convert.hf_config import config_from_hf
from allam_jax.core.errors import ConversionError
from allam_jax.checkpoint.params_io import stored_params
from allam_jax.core.params import abstract_params
from allam_jax.model import Decoder
from helpers import allam
from test_convert_hf import _hf_logits, _our_logits

VOCAB = 256
SEQ = 96  # past original_max_position_embeddings (32) below: the scaled frequencies are exercised
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def _config(family: str, tied: bool, **extra):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                  tie_word_embeddings=tied, **extra)
    if family == "llama3":
        return transformers.LlamaConfig(rope_parameters=dict(LLAMA3_ROPE), **common)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=None, rope_theta=10000.0, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(rope_theta=1e6, **common)
    if family == "qwen3":  # head_dim 32 with 4 heads of a 64-wide model: q is 128 wide
        return transformers.Qwen3Config(head_dim=32, rope_theta=1e6, **common)
    raise ValueError(family)


def _hf_model(tmp: Path, family: str, tied: bool, seed: int = 0, **extra) -> Path:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_config(family, tied, **extra)).eval()
    with torch.no_grad():  # HF initialises norms to 1 and biases to 0: randomise them so a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    out = tmp / f"hf_{family}_{tied}"
    model.save_pretrained(out, safe_serialization=True)
    return out


def _tokens(seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (2, SEQ)).astype(np.int32)


def _params(ckpt: Path, cfg):
    return jax.tree_util.tree_map(np.asarray, stored_params(str(ckpt), abstract_params(Decoder(cfg))))


@pytest.mark.slow
@pytest.mark.parametrize("family,tied", [("llama3", False), ("llama3", True), ("mistral", False),
                                         ("qwen2", True), ("qwen2", False), ("qwen3", False), ("qwen3", True)])
def test_family_matches_transformers_and_round_trips_bit_exact(tmp_path, family, tied):
    hf_dir = _hf_model(tmp_path, family, tied)
    cfg = config_from_hf(json.loads((hf_dir / "config.json").read_text()))
    assert cfg.qkv_bias == (family == "qwen2") and cfg.qk_norm == (family == "qwen3")
    assert cfg.rope_scaling == ("llama3" if family == "llama3" else "none")
    assert cfg.tie_embeddings == tied and cfg.num_kv_heads == 2
    if family != "mistral":  # the tiny CPU gin of the family describes exactly this model
        from allam_jax import gin_setup

        gin_setup.parse([f"models/tiny_{family}.gin"], [f"ModelConfig.tie_embeddings = {tied}"])
        assert gin_setup.model_config() == cfg
    tokens = _tokens()
    want = _hf_logits(hf_dir, tokens)

    ckpt = tmp_path / "ckpt"
    import_from_hf(str(hf_dir), str(ckpt), progress=False)
    np.testing.assert_allclose(_our_logits(ckpt, cfg, tokens), want, atol=1e-4, rtol=1e-4)

    back = tmp_path / "back"
    export_to_hf(str(ckpt), cfg, str(back))
    assert json.loads((back / "config.json").read_text())["architectures"][0] == (
        {"llama3": "LlamaForCausalLM", "mistral": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
         "qwen3": "Qwen3ForCausalLM"}[family])
    np.testing.assert_allclose(_hf_logits(back, tokens), want, atol=1e-4, rtol=1e-4)
    again = tmp_path / "again"
    import_from_hf(str(back), str(again), progress=False)
    assert config_from_hf(json.loads((back / "config.json").read_text())) == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, _params(again, cfg), _params(ckpt, cfg))


@pytest.mark.slow
def test_llama3_scaling_is_kept_in_either_spelling_and_in_model_gin(tmp_path):
    """The case that used to convert silently into another model: a transformers-5 `rope_parameters` with
    rope_type llama3 (and its older `rope_scaling` spelling) becomes ModelConfig.rope_scaling='llama3', and the
    checkpoint's model.gin says so; the scaling matters (plain RoPE gives other logits past position 32)."""
    hf_dir = _hf_model(tmp_path, "llama3", False, seed=1)
    on_disk = json.loads((hf_dir / "config.json").read_text())
    assert on_disk["rope_parameters"]["rope_type"] == "llama3"  # what transformers 5 writes
    old = {k: v for k, v in on_disk.items() if k != "rope_parameters"}
    old.update(rope_theta=10000.0, rope_scaling={k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"})
    assert config_from_hf(old) == config_from_hf(on_disk)
    r = allam("convert", "from-hf", f"--hf_dir={hf_dir}", f"--out={tmp_path / 'ckpt'}")
    assert r.returncode == 0, r.stderr[-2000:]
    gin = (tmp_path / "ckpt" / "model.gin").read_text()
    assert "ModelConfig.rope_scaling = 'llama3'" in gin and "ModelConfig.rope_original_max_len = 32" in gin
    assert json.loads((tmp_path / "ckpt" / "conversion.json").read_text())["family"] == "llama"
    cfg = config_from_hf(on_disk)
    tokens = _tokens(1)
    plain = _our_logits(tmp_path / "ckpt", cfg.replace(rope_scaling="none"), tokens)
    assert np.abs(plain - _hf_logits(hf_dir, tokens)).max() > 10 * 1e-4  # 10x the parity tolerance


@pytest.mark.slow
@pytest.mark.parametrize("edit,message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     r"rope_parameters\.rope_type='yarn' is not supported"),
    ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     r"rope_scaling\.rope_type='dynamic' is not supported"),
    ({"rope_parameters": dict(LLAMA3_ROPE, mscale=2.0)}, r"rope_parameters\.mscale is not supported"),
    ({"attention_bias": True}, r"attention_bias=True is not supported"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ({"partial_rotary_factor": 0.5}, r"partial_rotary_factor=0.5 is not supported"),
    ({"quantization_config": {"quant_method": "gptq"}}, r"field 'quantization_config' is not known"),
    ({"architectures": ["Qwen3MoeForCausalLM"]}, r"architecture \['Qwen3MoeForCausalLM'\] is not supported"),
])
def test_llama_fields_that_change_the_function_are_refused(tmp_path, edit, message):
    hf_dir = _hf_model(tmp_path, "llama3", False, seed=2)
    cfg = json.loads((hf_dir / "config.json").read_text())
    bad = tmp_path / "bad"
    shutil.copytree(hf_dir, bad)
    (bad / "config.json").write_text(json.dumps({**cfg, **edit}))
    r = allam("convert", "from-hf", f"--hf_dir={bad}", f"--out={tmp_path / 'out'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and f"{bad / 'config.json'}" in r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("family,edit,message", [
    ("mistral", {"sliding_window": 4096}, r"sliding_window=4096 is not supported"),
    ("qwen2", {"use_sliding_window": True}, r"use_sliding_window=True is not supported"),
    ("qwen3", {"layer_types": ["full_attention", "sliding_attention"]}, r"layer_types=.* is not supported"),
    ("qwen3", {"attention_bias": True}, r"attention_bias=True is not supported"),
])
def test_sliding_windows_and_other_family_fields_are_refused(tmp_path, family, edit, message):
    _config(family, False).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(architectures=[{"mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                               "qwen3": "Qwen3ForCausalLM"}[family]])
    config_from_hf(cfg)  # the family's own config converts
    with pytest.raises(ConversionError, match=message):
        config_from_hf({**cfg, **edit}, "x/config.json")


@pytest.mark.parametrize("field,value,message", [
    ("rope_scaling", "yarn", r"ModelConfig\.rope_scaling must be one of \('none', 'llama3'\), got 'yarn'"),
    ("rope_factor", 0.0, r"ModelConfig\.rope_factor must be a positive number"),
    ("rope_high_freq_factor", 0.5, r"rope_high_freq_factor=0.5 must exceed rope_low_freq_factor=1.0"),
    ("qk_norm", "yes", r"ModelConfig\.qk_norm must be True or False, got 'yes'"),
])
def test_model_config_variant_fields_are_checked(field, value, message):
    from allam_jax.core.errors import ConfigError
    from allam_jax.model import ModelConfig

    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{field: value, "rope_scaling": "llama3" if field != "rope_scaling" else value})
