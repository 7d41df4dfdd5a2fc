"""TrainerConfig.trainable: only the selected parameters (and vocabulary rows) move, for the first N steps."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import corpus_files, experiment, write_gin
from allam_jax import gin_setup
from allam_jax.core.errors import ConfigError
from allam_jax.train.experiment import TrainerConfig
from allam_jax.train.loop import train
from allam_jax.train.optimizer import OptimizerConfig, make_optimizer
from allam_jax.train.trainable import TrainableSpec, restrict

V, D, R = 12, 4, 9  # vocabulary, width, first new row


def _tree(rng):
    return {"embed": {"embedding": rng.normal(size=(V, D))}, "lm_head": {"kernel": rng.normal(size=(D, V))},
            "layers": {"mlp": {"kernel": rng.normal(size=(2, D, D))}, "norm": {"scale": rng.normal(size=(2, D))}}}


def _adamw_first_step(params, grads, mask, cfg):
    """Float64 NumPy: one AdamW step (bias-corrected, so m/sqrt(v) = g/|g|) on the masked gradient, clipped by
    its global norm; the update of a frozen value is zero (no weight decay either)."""
    g = {k: grads[k] * mask[k] for k in grads}
    norm = np.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
    scale = min(1.0, cfg.clip_norm / norm)
    out = {}
    for k in g:
        gk = g[k] * scale
        decay = 0.0 if k.endswith("scale") else cfg.weight_decay
        step = -cfg.learning_rate * (gk / (np.abs(gk) + cfg.eps) + decay * params[k])
        out[k] = np.where(mask[k], step, 0.0)
    return out


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_only_selected_rows_move_then_everything_after_n_steps():
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree(rng))
    cfg = OptimizerConfig(learning_rate=0.1, warmup_steps=0, schedule="constant", weight_decay=0.1, clip_norm=0.5)
    spec = TrainableSpec(("embed", "lm_head"), rows_from=R, steps=2)
    tx = restrict(make_optimizer(cfg), spec)
    state = tx.init(params)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(3)]

    updates, state = tx.update(grads[0], state, params)
    rows = np.arange(V) >= R
    mask = {"['embed']['embedding']": np.broadcast_to(rows[:, None], (V, D)),
            "['lm_head']['kernel']": np.broadcast_to(rows[None, :], (D, V)),
            "['layers']['mlp']['kernel']": np.zeros((2, D, D), bool), "['layers']['norm']['scale']": np.zeros((2, D), bool)}
    want = _adamw_first_step(_flat(params), _flat(grads[0]), mask, cfg)
    got = _flat(updates)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)
        assert not np.any(got[k][~mask[k]]), k  # exactly zero where frozen
    new = jax.tree.map(lambda p, u: p + u, params, updates)
    for k, v in _flat(new).items():
        np.testing.assert_array_equal(v[~mask[k]], _flat(params)[k][~mask[k]])  # bit-identical

    updates, state = tx.update(grads[1], state, new)
    assert not np.any(_flat(updates)["['layers']['mlp']['kernel']"])
    updates, state = tx.update(grads[2], state, new)  # step 3: the restriction has lifted
    assert all(np.all(u != 0) for u in _flat(updates).values())


def test_trainable_from_gin_and_its_errors(tmp_path):
    files = [str(tmp_path / "x.txt")]
    gin = write_gin(tmp_path / "t.gin", files, **{"TrainerConfig.trainable": "['embed', 'lm_head']",
                                                 "TrainerConfig.trainable_rows_from": 300,
                                                 "TrainerConfig.trainable_steps": 5})
    gin_setup.parse([str(gin)])
    trainer = gin_setup.build_experiment().trainer
    assert trainer.trainable_spec == TrainableSpec(("embed", "lm_head"), 300, 5)
    with pytest.raises(ConfigError, match=r"TrainerConfig.trainable: '\(' is not a regular expression"):
        TrainerConfig(trainable=["("])
    with pytest.raises(ConfigError, match="need TrainerConfig.trainable"):
        TrainerConfig(trainable_rows_from=5)
    with pytest.raises(ConfigError, match="trainable_steps must be a non-negative integer"):
        TrainerConfig(trainable=["embed"], trainable_steps=-1)
    params = jax.tree.map(jnp.asarray, _tree(np.random.default_rng(0)))
    with pytest.raises(ConfigError, match="'embedding_rows' matches no parameter; parameters: embed/embedding"):
        TrainableSpec(("embedding_rows",)).check(params)
    with pytest.raises(ConfigError, match=f"trainable_rows_from = {V} leaves no row of embed/embedding"):
        TrainableSpec(("embed",), rows_from=V).check(params)
    with pytest.raises(ConfigError, match="no vocabulary table"):
        TrainableSpec(("layers",), rows_from=3).check(params)


@pytest.mark.slow
def test_embeddings_first_run_leaves_the_frozen_weights_bit_identical(tmp_path):
    files = corpus_files(tmp_path / "corpus", en_docs=100, ar_docs=300)
    train(experiment(files, num_steps=2), str(tmp_path / "base"))
    base = ocp.StandardCheckpointer().restore(tmp_path / "base/checkpoints/2/state")["params"]
    rows_from = 300
    train(experiment(files, num_steps=3, init_from=str(tmp_path / "base/checkpoints"), trainable=["embed", "lm_head"],
                     trainable_rows_from=rows_from), str(tmp_path / "emb"))
    after = ocp.StandardCheckpointer().restore(tmp_path / "emb/checkpoints/3/state")["params"]
    for path, a in jax.tree_util.tree_leaves_with_path(after):
        b = base
        for k in path:
            b = b[k.key]
        name = jax.tree_util.keystr(path)
        if name == "['embed']['embedding']":
            np.testing.assert_array_equal(a[:rows_from], b[:rows_from])
            assert np.any(a[rows_from:] != b[rows_from:])
        elif name == "['lm_head']['kernel']":
            np.testing.assert_array_equal(a[:, :rows_from], b[:, :rows_from])
            assert np.any(a[:, rows_from:] != b[:, rows_from:])
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
