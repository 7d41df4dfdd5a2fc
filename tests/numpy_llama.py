"""An independent float64 NumPy Llama forward pass (Hugging Face formulas), used as the test reference."""

from __future__ import annotations

import numpy as np


def rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def rotate_half(x):
    d = x.shape[-1] // 2
    return np.concatenate([-x[..., d:], x[..., :d]], axis=-1)


def apply_rope(x, positions, theta):
    """x [b, t, h, d]; the HF LlamaRotaryEmbedding + apply_rotary_pos_emb formulas."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    freqs = positions[..., None].astype(np.float64) * inv_freq
    emb = np.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return x * np.cos(emb) + rotate_half(x) * np.sin(emb)


def attention(q, k, v, segment_ids=None, causal=True):
    """Naive softmax attention; k/v heads repeated explicitly (HF repeat_kv)."""
    groups = q.shape[2] // k.shape[2]
    k = np.repeat(k, groups, axis=2)
    v = np.repeat(v, groups, axis=2)
    t, s = q.shape[1], k.shape[1]
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    mask = np.ones((q.shape[0], 1, t, s), bool)
    if causal:
        mask &= (np.arange(t)[:, None] + (s - t) >= np.arange(s)[None, :])[None, None]
    if segment_ids is not None:
        mask &= (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(params, tokens, cfg, positions=None, segment_ids=None, return_hidden=False):
    """Logits [b, t, vocab] in float64 from our parameter tree (scanned or per-layer); the final normed hidden
    states [b, t, d] with ``return_hidden``."""
    p = _to64(params)
    if positions is None:
        positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    x = p["embed"]["embedding"][tokens]
    for layer in _layers(p, cfg.num_layers):
        h = rms_norm(x, layer["attention_norm"]["scale"], cfg.norm_eps)
        a = layer["attention"]
        q = apply_rope(np.einsum("btd,dhk->bthk", h, a["query"]["kernel"]), positions, cfg.rope_theta)
        k = apply_rope(np.einsum("btd,dhk->bthk", h, a["key"]["kernel"]), positions, cfg.rope_theta)
        v = np.einsum("btd,dhk->bthk", h, a["value"]["kernel"])
        o = attention(q, k, v, segment_ids)
        x = x + np.einsum("bthk,hkd->btd", o, a["out"]["kernel"])
        h = rms_norm(x, layer["mlp_norm"]["scale"], cfg.norm_eps)
        m = layer["mlp"]
        x = x + (silu(h @ m["gate"]["kernel"]) * (h @ m["up"]["kernel"])) @ m["down"]["kernel"]
    x = rms_norm(x, p["final_norm"]["scale"], cfg.norm_eps)
    if return_hidden:
        return x
    if cfg.tie_embeddings:
        return x @ p["embed"]["embedding"].T
    return x @ p["lm_head"]["kernel"]


def _to64(tree):
    if isinstance(tree, dict):
        return {k: _to64(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float64)


def _layers(p, n):
    if "layers" in p:
        return [_index(p["layers"], i) for i in range(n)]
    return [p[f"layer_{i}"] for i in range(n)]


def _index(tree, i):
    if isinstance(tree, dict):
        return {k: _index(v, i) for k, v in tree.items()}
    return tree[i]


def cross_entropy(logits, targets, weights):
    logits = logits - logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits).sum(-1))
    tgt = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float(((logz - tgt) * weights).sum() / weights.sum())
