"""Naive diffusion (pixel replacement, one-step objective, iterative sampler), under jit.

The closed-form checks use data that is one fixed image x* (a delta distribution), whose
optimal one-step predictor is known: E[x_{k-1} | x_k] = x_k where x_k == x*, and
(1/k) x* + (1 - 1/k) x_k elsewhere.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import naive

X_STAR = jax.random.uniform(jax.random.PRNGKey(42), (1, 4, 4, 2), minval=-1.0, maxval=1.0)


def oracle(num_levels, coefficient=1.0):
    """The optimal one-step predictor for data == X_STAR (``coefficient`` != 1 perturbs it)."""

    def predict(x_k, time):
        k = jnp.round(time * num_levels / naive.TIME_SCALE).reshape((-1,) + (1,) * (x_k.ndim - 1))
        cleaned = (coefficient / k) * X_STAR + (1.0 - coefficient / k) * x_k
        return jnp.where(x_k == X_STAR, x_k, cleaned)

    return predict


def test_fraction_replaced_nesting_and_end_levels():
    K = 10
    shape = (1, 100, 100, 2)  # 20k elements per level, 220k in all
    u, noise = naive.draw_corruption(jax.random.PRNGKey(0), shape)
    x0 = jnp.full(shape, 2.0)  # outside the noise's range: replaced <=> x_k != 2
    levels = jnp.arange(K + 1, dtype=jnp.int32)

    @jax.jit
    def all_levels(x0, u, noise):
        tile = lambda a: jnp.broadcast_to(a, (K + 1,) + shape[1:])  # noqa: E731  same (u, n) at every level
        return naive.corrupt(tile(x0), levels, tile(u), tile(noise), K)

    x = np.asarray(all_levels(x0, u, noise))
    replaced = x != 2.0
    n = replaced[0].size
    fractions = replaced.reshape(K + 1, -1).mean(axis=1)
    expected = np.arange(K + 1) / K
    standard_error = np.sqrt(np.maximum(expected * (1 - expected), 1.0 / n) / n)
    assert np.all(np.abs(fractions - expected) < 5 * standard_error), (fractions, expected)
    assert np.all(replaced[:-1] <= replaced[1:])  # nested: replaced at k-1 => replaced at k
    np.testing.assert_array_equal(x[0], np.asarray(x0[0]))
    np.testing.assert_array_equal(x[K], np.asarray(noise[0]))
    np.testing.assert_array_equal(x[replaced], np.broadcast_to(np.asarray(noise), x.shape)[replaced])
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.var()) - 1 / 3) < 0.01
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0 and float(noise.min()) >= -1.0 and float(noise.max()) < 1.0


@pytest.mark.slow
def test_oracle_minimises_the_loss_and_matches_its_closed_form():
    K, B = 10, 20000
    x0 = jnp.broadcast_to(X_STAR, (B,) + X_STAR.shape[1:])
    key = jax.random.PRNGKey(1)

    @functools.partial(jax.jit, static_argnums=0)
    def losses(coefficient, key):
        return naive.naive_loss(oracle(K, coefficient), x0, key, K)

    best = losses(1.0, key)
    level = np.asarray(best["level"])
    assert level.shape == (B,) and level.min() == 1 and level.max() == K
    assert set(level.tolist()) == set(range(1, K + 1))
    # E[loss | k] = (k/K) (1/k)(1 - 1/k) E[(n - x*)^2], E[(n - x*)^2] = 1/3 + x*^2, averaged over elements.
    spread = 1 / 3 + float(jnp.mean(jnp.square(X_STAR)))
    k = level.astype(np.float64)
    residual = np.asarray(best["loss"], np.float64) - (1 - 1 / k) / K * spread
    assert abs(residual.mean()) < 4 * residual.std() / np.sqrt(B), residual.mean()
    for coefficient in (1.2, 0.8):
        worse = np.asarray(losses(coefficient, key)["loss"], np.float64)
        assert worse.mean() > np.asarray(best["loss"]).mean()
        # the excess is (k/K) ((c - 1)/k)^2 E[(n - x*)^2] per example (same key: paired draws)
        excess = worse - np.asarray(best["loss"], np.float64) - (coefficient - 1) ** 2 / (k * K) * spread
        assert abs(excess.mean()) < 4 * excess.std() / np.sqrt(B), (coefficient, excess.mean())


def test_oracle_sampler_reaches_the_image_and_strided_sampler_does_not():
    K, shape = 100, (3,) + X_STAR.shape[1:]
    x_K = jax.random.uniform(jax.random.PRNGKey(2), shape, minval=-1.0, maxval=1.0)
    sample = jax.jit(lambda x_K: naive.naive_sample(oracle(K), None, shape, K, x_K=x_K))
    np.testing.assert_allclose(sample(x_K), np.broadcast_to(X_STAR, shape), rtol=0, atol=1e-6)
    # 10 calls of the one-step oracle at k = 100, 90, ..., 10 keep prod (1 - 1/k) of x_K's offset.
    strided = jax.jit(lambda x_K: naive.naive_sample(oracle(K), None, shape, K, x_K=x_K, num_steps=10))
    kept = np.prod(1 - 1 / np.arange(10, K + 1, 10))
    expected = np.asarray(X_STAR) + kept * (np.asarray(x_K) - np.asarray(X_STAR))
    np.testing.assert_allclose(strided(x_K), expected, rtol=1e-5, atol=1e-6)
    assert kept > 0.5


def test_sampler_compiles_once_and_validates_num_steps():
    K, shape = 50, (2, 3, 3, 1)
    traces = []

    def predict(x_k, time):
        traces.append(time.shape)
        return 0.9 * x_k + 1e-3 * time.reshape((-1, 1, 1, 1))

    draw = jax.jit(lambda key: naive.naive_sample(predict, key, shape, K))
    first, second = draw(jax.random.PRNGKey(0)), draw(jax.random.PRNGKey(1))
    assert draw._cache_size() == 1 and traces == [(2,)]
    assert first.shape == shape and np.abs(np.asarray(first) - np.asarray(second)).max() > 1e-6
    # K calls in order K, K-1, ..., 1: x_0 = 0.9^K x_K + 1e-3 sum_j 0.9^(k-1) (1000 k / K)
    x_K = jax.random.uniform(jax.random.PRNGKey(0), shape, minval=-1.0, maxval=1.0)
    offset = sum(0.9 ** (k - 1) * 1e-3 * 1000 * k / K for k in range(1, K + 1))
    np.testing.assert_allclose(first, 0.9**K * np.asarray(x_K) + offset, rtol=1e-5, atol=1e-6)
    for bad in (3, 0, -5, 2.5):
        with pytest.raises(ValueError, match="divisor"):
            naive.naive_sample(predict, jax.random.PRNGKey(0), shape, K, num_steps=bad)
    with pytest.raises(ValueError, match="key or x_K"):
        naive.naive_sample(predict, None, shape, K)
    with pytest.raises(ValueError, match="num_levels"):
        naive.naive_sample(predict, jax.random.PRNGKey(0), shape, 0)


def test_shape_checks():
    K = 4
    x0 = jnp.zeros((2, 3, 3, 1))
    level = jnp.array([1, 3], jnp.int32)
    u, noise = naive.draw_corruption(jax.random.PRNGKey(0), x0.shape)
    with pytest.raises(AssertionError):
        naive.corrupt(x0, level, u[:, :2], noise, K)
    with pytest.raises(AssertionError):
        naive.corrupt(x0, level, u, noise[..., None], K)
    with pytest.raises(ValueError, match="batch"):
        naive.corrupt(x0, jnp.array([1, 2, 3], jnp.int32), u, noise, K)
    with pytest.raises(AssertionError):
        naive.corrupt(x0, level.astype(jnp.float32), u, noise, K)
    with pytest.raises(AssertionError):
        naive.naive_sample(lambda x, t: x, None, x0.shape, K, x_K=x0[:1])
    with pytest.raises(AssertionError):
        naive.naive_loss(lambda x, t: x[:, :2], x0, jax.random.PRNGKey(0), K)
    np.testing.assert_allclose(naive.network_time(jnp.array([0, 2, 4]), K), [0.0, 500.0, 1000.0])
