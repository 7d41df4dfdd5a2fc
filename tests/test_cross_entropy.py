"""The cross-entropy's hand-written gradient against float64 NumPy and against autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from allam_jax.objectives.cross_entropy import token_cross_entropy


def _numpy_reference(logits: np.ndarray, targets: np.ndarray, w_ce: np.ndarray, w_z: np.ndarray):
    """Objective sum(w_ce * ce + w_z * log_z^2) and its gradient, in float64."""
    m = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    ce = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    probs = np.exp(logits - log_z[..., None])
    onehot = np.eye(logits.shape[-1])[targets]
    grad = probs * (w_ce + 2 * w_z * log_z)[..., None] - onehot * w_ce[..., None]
    return ce, log_z, grad


@pytest.mark.slow
def test_values_and_gradient_match_float64():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 7, 50))
    targets = rng.integers(0, 50, (3, 7))
    w_ce, w_z = rng.uniform(0, 1, (3, 7)), rng.uniform(0, 1e-2, (3, 7))
    want_ce, want_lz, want_grad = _numpy_reference(logits, targets, w_ce, w_z)

    def objective(x):
        ce, log_z = token_cross_entropy(x, jnp.asarray(targets, jnp.int32))
        return jnp.sum(ce * w_ce + w_z * jnp.square(log_z)), (ce, log_z)

    grad, (ce, log_z) = jax.grad(objective, has_aux=True)(jnp.asarray(logits, jnp.float32))
    np.testing.assert_allclose(np.asarray(ce), want_ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(log_z), want_lz, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-6)


def test_gradient_matches_autodiff_of_the_plain_formula_under_jit():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(0, 5, (2, 16, 300)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 300, (2, 16)), jnp.int32)

    def plain(x):
        log_z = jax.nn.logsumexp(x, axis=-1)
        ce = log_z - jnp.take_along_axis(x, targets[..., None], axis=-1)[..., 0]
        return jnp.mean(ce) + 1e-3 * jnp.mean(jnp.square(log_z))

    def custom(x):
        ce, log_z = token_cross_entropy(x, targets)
        return jnp.mean(ce) + 1e-3 * jnp.mean(jnp.square(log_z))

    v1, g1 = jax.jit(jax.value_and_grad(plain))(logits)
    v2, g2 = jax.jit(jax.value_and_grad(custom))(logits)
    np.testing.assert_allclose(float(v2), float(v1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g1), rtol=1e-4, atol=1e-8)
