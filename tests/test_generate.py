"""KV-cache decoding against recomputing the whole forward pass at every step."""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from allam_jax.data.vocabularies import ByteVocabulary
from allam_jax.inference.generate import Generator, SamplingConfig, filter_logits
from allam_jax.model import Decoder, ModelConfig

CFG = ModelConfig(vocab_size=384, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=64,
                  compute_dtype="float32")


@pytest.fixture(scope="module", params=[True, False], ids=["scan", "unscanned"])
def setup(request):
    cfg = CFG.replace(scan_layers=request.param)
    params = Decoder(cfg).init(jax.random.PRNGKey(3), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda x: x * 4.0, params)  # sharper distributions: greedy paths differ
    return cfg, params, Generator(cfg, params, ByteVocabulary(), bos_id=1)


def full_forward_logits(cfg: ModelConfig, params, prompts: Sequence[Sequence[int]], continuation: np.ndarray
                        ) -> np.ndarray:
    """The reference: next-token logits recomputed from scratch (no cache) for left-padded prompts
    followed by ``continuation [batch, n]``; returns the logits at the last position."""
    b, p_len = len(prompts), max(len(p) for p in prompts)
    n = continuation.shape[1]
    tokens = np.zeros((b, p_len + n), np.int32)
    segments = np.zeros((b, p_len + n), np.int32)
    positions = np.zeros((b, p_len + n), np.int32)
    for i, p in enumerate(prompts):
        pad = p_len - len(p)
        tokens[i, pad:p_len] = p
        tokens[i, p_len:] = continuation[i]
        segments[i, pad:] = 1
        positions[i, pad:] = np.arange(len(p) + n)
    logits = Decoder(cfg).apply({"params": params}, tokens, positions, segments)
    return np.asarray(logits[:, -1])


@pytest.mark.slow
def test_cached_decoding_equals_full_recompute(setup):
    cfg, params, gen = setup
    prompts = [gen.encode("مرحبا بكم"), gen.encode("Hi"), gen.encode("The quick brown fox")]  # different lengths
    steps = []
    results = gen.generate(prompts, SamplingConfig(max_new_tokens=10), on_logits=lambda i, l: steps.append(l))
    generated = np.zeros((3, 0), np.int32)
    for i, cached in enumerate(steps):
        want = full_forward_logits(cfg, params, prompts, generated)
        np.testing.assert_allclose(cached, want, atol=2e-4, rtol=2e-4, err_msg=f"step {i}")
        generated = np.concatenate([generated, np.argmax(want, -1)[:, None].astype(np.int32)], axis=1)
    for r, row in zip(results, generated):
        if r.finish_reason == "length":
            assert r.tokens == row.tolist()
    # each row decodes as it would alone (left padding is invisible)
    alone = gen.generate([prompts[1]], SamplingConfig(max_new_tokens=10))[0]
    assert alone.tokens == results[1].tokens


@pytest.mark.slow
def test_sampling_filters_and_stop_strings(setup):
    _, _, gen = setup
    logits = jnp.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    assert np.isfinite(np.asarray(filter_logits(logits, 2, 1.0))).tolist() == [[False, False, False, True, True]]
    probs = np.asarray(jax.nn.softmax(logits))[0]  # top-p keeps the best tokens until their mass reaches p
    kept = np.isfinite(np.asarray(filter_logits(logits, 0, float(probs[4] + probs[3] * 0.5))))[0]
    assert kept.tolist() == [False, False, False, True, True]
    prompt = [gen.encode("abc")]
    a = gen.generate(prompt, SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20, seed=1))[0]
    b = gen.generate(prompt, SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20, seed=1))[0]
    assert a.tokens == b.tokens, "seeded sampling is reproducible"
    greedy = gen.generate(prompt, SamplingConfig(max_new_tokens=12))[0]
    if len(greedy.text) >= 3:
        stop = greedy.text[1:3]
        cut = gen.generate(prompt, SamplingConfig(max_new_tokens=12, stop=(stop,)))[0]
        assert cut.finish_reason == "stop" and cut.text == greedy.text[: greedy.text.index(stop)]


@pytest.mark.slow
def test_generate_and_chat_commands(tmp_path):
    from allam_jax import gin_setup
    from allam_jax.checkpoint.params_io import write_params_checkpoint
    from helpers import allam

    gin_setup.parse(["models/tiny.gin"])
    cfg = gin_setup.model_config()
    from allam_jax.core.trees import strip_boxes

    params = strip_boxes(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    write_params_checkpoint(str(tmp_path / "ckpt"), params)
    common = ["--gin_file=models/tiny.gin", f"--ckpt={tmp_path / 'ckpt'}", "--max_new_tokens=5"]
    r = allam("generate", *common, "--prompt=hello", "--prompt=مرحبا", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [__import__("json").loads(line) for line in r.stdout.splitlines()]
    assert [row["prompt"] for row in rows] == ["hello", "مرحبا"] and all(row["tokens"] <= 5 for row in rows)
    r = allam("chat", *common, input="Translate: cat\n\n")
    assert r.returncode == 0 and r.stdout.count("allam> ") == 1, r.stderr[-2000:]
    r = allam("generate", *common)
    assert r.returncode == 2 and "no prompt" in r.stderr
    # a tokenizer with more ids than the checkpoint's 384 rows: one line, exit 2, for generate and eval alike
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"word{i} token{i * 7} piece{i * 13}" for i in range(3000)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "big"), vocab_size=1000,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    big = f"--vocabulary={tmp_path / 'big.model'}"
    for args in (["generate", "--prompt=hello", "--max_new_tokens=5"], ["eval", f"--perplexity=en:{corpus}"]):
        r = allam(*args, *common[:2], big)
        assert r.returncode == 2, r.stderr[-2000:]
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("allam: error:")]
        assert len(errors) == 1 and "1,000 ids but the model has ModelConfig.vocab_size=384" in errors[0], errors


@pytest.mark.slow
def test_prompt_past_the_trained_length_warns(setup, caplog):
    import logging

    cfg, _, gen = setup
    with caplog.at_level(logging.WARNING):
        gen.generate([gen.encode("short")], SamplingConfig(max_new_tokens=4))
    assert "max_seq_len" not in caplog.text
    with caplog.at_level(logging.WARNING):
        gen.generate([gen.encode("x" * (cfg.max_seq_len - 2))], SamplingConfig(max_new_tokens=4))
    assert f"past ModelConfig.max_seq_len={cfg.max_seq_len}" in caplog.text
