"""Hugging Face interop: random tiny LlamaForCausalLM models -> allam-jax -> back, logits compared."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import torch  # the hf extra, installed by setup.sh
import transformers

from allam_jax.convert.checkpoints import export_to_hf, import_from_hf, restore_for_export
from allam_jax.convert.hf_llama import ConversionError, config_from_hf
from allam_jax.core.errors import ConfigError
from allam_jax.model import Decoder
from helpers import allam, bundled_dir

VOCAB = 320


def _hf_model(tmp: Path, heads: int, kv_heads: int, tied: bool, seed: int = 0, vocab: int = VOCAB) -> Path:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5,
                                   tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1: randomise them so a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    out = tmp / f"hf_{heads}_{kv_heads}_{tied}"
    model.save_pretrained(out, safe_serialization=True)
    return out


def _hf_logits(path: Path, tokens: np.ndarray) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


def _our_logits(ckpt: Path, cfg, tokens: np.ndarray) -> np.ndarray:
    cfg = cfg.replace(compute_dtype="float32")
    params = restore_for_export(str(ckpt), cfg)
    return np.asarray(Decoder(cfg).apply({"params": params}, tokens))


def _tokens(seed=0, vocab=VOCAB):
    return np.random.default_rng(seed).integers(0, vocab, (2, 24)).astype(np.int32)


@pytest.mark.slow
@pytest.mark.parametrize("heads,kv_heads,tied", [(4, 4, False), (4, 2, False), (8, 2, True)])
def test_import_then_export_keeps_logits(tmp_path, heads, kv_heads, tied):
    hf_dir = _hf_model(tmp_path, heads, kv_heads, tied)
    cfg = config_from_hf(json.loads((hf_dir / "config.json").read_text()))
    tokens = _tokens()
    want = _hf_logits(hf_dir, tokens)

    ckpt = tmp_path / "ckpt"
    import_from_hf(str(hf_dir), str(ckpt), progress=False)
    assert (ckpt / "model.gin").is_file()
    np.testing.assert_allclose(_our_logits(ckpt, cfg, tokens), want, atol=1e-4, rtol=1e-4)

    back = tmp_path / "back"
    export_to_hf(str(ckpt), cfg, str(back))
    np.testing.assert_allclose(_hf_logits(back, tokens), want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_unscanned_layout_and_sharded_safetensors(tmp_path):
    hf_dir = _hf_model(tmp_path, 4, 2, False, seed=1)
    cfg = config_from_hf(json.loads((hf_dir / "config.json").read_text()), scan_layers=False)
    ckpt = tmp_path / "ckpt"
    import_from_hf(str(hf_dir), str(ckpt), scan_layers=False, progress=False)
    back = tmp_path / "sharded"
    export_to_hf(str(ckpt), cfg, str(back), max_shard_bytes=40_000)
    assert (back / "model.safetensors.index.json").is_file() and len(list(back.glob("model-*.safetensors"))) > 2
    again = tmp_path / "again"
    import_from_hf(str(back), str(again), progress=False)  # reads the sharded index back
    tokens = _tokens(1)
    want = _hf_logits(hf_dir, tokens)
    np.testing.assert_allclose(_hf_logits(back, tokens), want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(_our_logits(again, cfg.replace(scan_layers=True), tokens), want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_expanded_vocabulary_exports_and_loads_in_transformers(tmp_path):
    """Llama-style base tokenizer + merged Arabic pieces: expand the imported checkpoint, export with the
    merged tokenizer; transformers loads model and tokenizer and gives our logits; base rows unchanged."""
    from allam_jax.tokenizer.expand import expand_checkpoint
    from allam_jax.tokenizer.merge import merge_tokenizers
    from allam_jax.tokenizer.train import train_tokenizer

    data = bundled_dir()
    base_spm, ar_spm, merged_spm = (str(tmp_path / n) for n in ("base.model", "ar.model", "merged.model"))
    train_tokenizer([str(data / "en.txt")], 500, base_spm, max_sentences=2000)
    train_tokenizer([str(data / "ar.txt")], 600, ar_spm, max_sentences=3000)
    report = merge_tokenizers(base_spm, ar_spm, merged_spm)

    hf_dir = _hf_model(tmp_path, 4, 2, False, seed=2, vocab=500)
    ckpt = tmp_path / "ckpt"
    import_from_hf(str(hf_dir), str(ckpt), progress=False)
    expanded = tmp_path / "expanded"
    expand_checkpoint(str(ckpt), base_spm, merged_spm, str(expanded))
    cfg = config_from_hf(json.loads((hf_dir / "config.json").read_text())).replace(vocab_size=report.merged_size)
    out = tmp_path / "hf_expanded"
    with pytest.raises(ConfigError, match=r"merged.model has \d+ ids but the model has ModelConfig.vocab_size=500"):
        export_to_hf(str(ckpt), cfg.replace(vocab_size=500), str(out), tokenizer=merged_spm)  # the unexpanded model
    assert not out.exists()
    export_to_hf(str(expanded), cfg, str(out), tokenizer=merged_spm)

    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "The school is open. والمدرسة مفتوحة"
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=merged_spm)
    ids = tok(text)["input_ids"]
    assert ids == [sp.bos_id()] + sp.encode(text)
    tokens = np.array([ids], np.int32)
    np.testing.assert_allclose(_hf_logits(out, tokens), _our_logits(expanded, cfg, tokens), atol=1e-4, rtol=1e-4)
    english = np.array([[1] + sp.encode("The school is open.")], np.int32)
    assert english.max() < 500  # English keeps base ids: the base model's logits over base rows are unchanged
    np.testing.assert_allclose(_hf_logits(out, english)[..., :500], _hf_logits(hf_dir, english), atol=1e-4,
                               rtol=1e-4)


def test_bad_inputs_name_the_problem(tmp_path):
    hf_dir = _hf_model(tmp_path, 4, 2, False, seed=3)
    bad = tmp_path / "bad"
    shutil.copytree(hf_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConversionError, match="architecture .*GPT2LMHeadModel.* is not supported"):
        import_from_hf(str(bad), str(tmp_path / "o1"), progress=False)
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 128}))
    with pytest.raises(ConversionError, match=r"tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape "
                                              r"\(96, 64\), the config implies \(128, 64\)"):
        import_from_hf(str(bad), str(tmp_path / "o2"), progress=False)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ConversionError, match=r"missing \['model\.layers\.2\."):
        import_from_hf(str(bad), str(tmp_path / "o3"), progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    assert not list(tmp_path.glob("o*.tmp*")), "nothing half-written"
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="no model.safetensors"):
        import_from_hf(str(only_config), str(tmp_path / "o4"), progress=False)
    truncated = tmp_path / "truncated"
    shutil.copytree(hf_dir, truncated)
    (truncated / "config.json").write_text(json.dumps(cfg))
    weights = next(truncated.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConversionError, match=rf"{weights.name}: (not a readable safetensors file|cannot read tensor)"):
        import_from_hf(str(truncated), str(tmp_path / "o5"), progress=False)
    assert not (tmp_path / "o5").exists()


@pytest.mark.slow
def test_converted_model_continues_training_with_allam_train(tmp_path):
    hf_dir = _hf_model(tmp_path, 4, 2, False, seed=4, vocab=384)
    ckpt = tmp_path / "ckpt"
    r = allam("convert", "from-hf", f"--hf_dir={hf_dir}", f"--out={ckpt}")
    assert r.returncode == 0, r.stderr[-2000:]
    data = bundled_dir()
    gin = tmp_path / "continue.gin"
    gin.write_text("\n".join([
        "include 'runs/tiny_cpu.gin'",
        (ckpt / "model.gin").read_text(),
        f"TrainerConfig.init_from = '{ckpt}'",
        "TrainerConfig.num_steps = 6", "TrainerConfig.log_every = 1", "TrainerConfig.seq_len = 64",
        "TrainerConfig.batch_size = 4", "TrainerConfig.progress_bar = False", "TrainerConfig.tensorboard = False",
        "OptimizerConfig.warmup_steps = 2", "OptimizerConfig.learning_rate = 1e-3",
        f"CorpusPaths.ar = ['{data / 'ar.txt'}']", f"CorpusPaths.en = ['{data / 'en.txt'}']",
        f"CorpusPaths.parallel = ['{data / 'parallel.jsonl'}']", "SeqioData.shuffle_buffer = 2000",
    ]) + "\n")
    r = allam("train", f"--gin_file={gin}", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert all(np.isfinite(row["loss"]) for row in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_continued_pretraining_recipe_configs_build():
    """The ALLaM-13B recipe parses into a 13B model with init_from, the merged vocabulary and a constant
    3e-5 learning rate; the re-warm-up schedule is one include away."""
    from allam_jax import gin_setup
    from allam_jax.train.optimizer import learning_rate_schedule

    gin_setup.parse(["runs/continue_llama2_13b_ar.gin"])
    exp = gin_setup.build_experiment()
    assert exp.model.vocab_size == 64000 and exp.model.num_layers == 40
    assert exp.trainer.init_from and exp.data.vocabulary == "merged.model"
    schedule = learning_rate_schedule(exp.optimizer)
    assert float(schedule(5000)) == pytest.approx(3e-5)
    gin_setup.parse(["runs/continue_llama2_13b_ar.gin", "schedules/rewarmup_cosine.gin"])
    schedule = learning_rate_schedule(gin_setup.build_experiment().optimizer)
    assert float(schedule(1000)) < float(schedule(2000)) == pytest.approx(1.5e-4)
    assert float(schedule(100000)) == pytest.approx(1.5e-5, rel=1e-3)


_EXPORT_RSS = """
import json, sys
from allam_jax.convert.checkpoints import export_to_hf
from allam_jax.core.params import abstract_params
from allam_jax.model import Decoder, ModelConfig

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

cfg = ModelConfig(**json.loads(sys.argv[3]))
abstract_params(Decoder(cfg))  # the JAX backend and the imports, before the measurement
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS")
export_to_hf(sys.argv[1], cfg, sys.argv[2], max_shard_bytes=64 * 2**20)
print(json.dumps({"growth_mib": status("VmHWM") - before}))
"""


@pytest.mark.slow
def test_export_streams_tensors_with_memory_independent_of_model_size(tmp_path):
    """``to-hf`` of a 4x larger model (272 MiB vs 80 MiB, scanned layers) raises the exporting process's peak
    RSS by about the same amount, a fraction of either model: tensors stream from storage to the safetensors
    shards one at a time (the old export restored the whole model onto one device, then copied it to host)."""
    import subprocess
    import sys

    import jax
    from safetensors import safe_open

    from allam_jax.checkpoint.params_io import write_params_checkpoint
    from allam_jax.core.params import abstract_params
    from allam_jax.model import ModelConfig

    growth, sizes = {}, {}
    for layers in (4, 16):
        shape = dict(vocab_size=4096, d_model=512, num_layers=layers, num_heads=8, num_kv_heads=8, mlp_dim=2048,
                     max_seq_len=128)
        rng = np.random.default_rng(layers)
        params = jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape, dtype=np.float32),
                                        abstract_params(Decoder(ModelConfig(**shape))))
        sizes[layers] = sum(x.nbytes for x in jax.tree_util.tree_leaves(params)) / 2**20
        write_params_checkpoint(str(tmp_path / f"ckpt{layers}"), params)
        r = subprocess.run([sys.executable, "-c", _EXPORT_RSS, str(tmp_path / f"ckpt{layers}"),
                            str(tmp_path / f"hf{layers}"), json.dumps(shape)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        growth[layers] = json.loads(r.stdout.strip().splitlines()[-1])["growth_mib"]
        index = json.loads((tmp_path / f"hf{layers}" / "model.safetensors.index.json").read_text())
        last = f"model.layers.{layers - 1}.mlp.down_proj.weight"
        with safe_open(str(tmp_path / f"hf{layers}" / index["weight_map"][last]), framework="numpy") as f:
            np.testing.assert_array_equal(f.get_tensor(last), params["layers"]["mlp"]["down"]["kernel"][-1].T)
    assert sizes[16] > 3 * sizes[4] and sizes[16] - sizes[4] > 180
    assert growth[16] - growth[4] < 32, (growth, sizes)  # 192 MiB more model, nearly no more memory
    assert 0 < growth[16] < sizes[16] / 3, (growth, sizes)
