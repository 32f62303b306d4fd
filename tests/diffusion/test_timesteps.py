"""Uniform and loss-second-moment timestep sampling against improved DDPM's resampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import timesteps


class ReferenceResampler:
    """improved DDPM's LossSecondMomentResampler in plain numpy (float64), as a reference."""

    def __init__(self, T, history=10, uniform_prob=1e-3):
        self.T, self.history, self.uniform_prob = T, history, uniform_prob
        self.losses = np.zeros((T, history))
        self.counts = np.zeros(T, dtype=np.int64)

    def weights(self):
        if not (self.counts == self.history).all():
            return np.ones(self.T) / self.T
        w = np.sqrt(np.mean(self.losses**2, axis=-1))
        w /= w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def update(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self.counts[t] == self.history:
                self.losses[t, :-1] = self.losses[t, 1:]
                self.losses[t, -1] = loss
            else:
                self.losses[t, self.counts[t]] = loss
                self.counts[t] += 1


def test_uniform():
    sampler = timesteps.make_timestep_sampler("uniform", 50)
    t, w = jax.jit(sampler.sample, static_argnums=2)(sampler.init(), jax.random.PRNGKey(0), 20000)
    assert t.dtype == jnp.int32 and t.shape == (20000,)
    assert int(t.min()) == 0 and int(t.max()) == 49
    counts = np.bincount(np.asarray(t), minlength=50)
    assert counts.min() > 300 and counts.max() < 500
    np.testing.assert_array_equal(w, 1.0)


def test_loss_second_moment_matches_reference_update_and_weights():
    T, H = 7, 3
    sampler = timesteps.loss_second_moment_sampler(T, history_per_term=H)
    reference = ReferenceResampler(T, H)
    state = sampler.init()
    update = jax.jit(sampler.update)
    rng = np.random.default_rng(0)
    for round_ in range(12):
        # batches with repeated t, as a real batch has
        ts = rng.integers(0, T, 8)
        batch_losses = rng.uniform(0.1, 2.0, 8) * (1 + ts)
        state = update(state, jnp.asarray(ts, jnp.int32), jnp.asarray(batch_losses, jnp.float32))
        reference.update(ts, batch_losses)
        np.testing.assert_array_equal(state.counts, reference.counts)
        np.testing.assert_allclose(state.history, reference.losses, rtol=1e-6)
        np.testing.assert_allclose(timesteps.loss_second_moment_weights(state, 1e-3), reference.weights(), rtol=1e-5)
    assert (reference.counts == H).all()  # warmed up: weights no longer uniform
    assert not np.allclose(reference.weights(), 1 / T)


def test_uniform_until_warm_and_importance_weights_are_unbiased():
    T = 5
    sampler = timesteps.loss_second_moment_sampler(T, history_per_term=2)
    state = sampler.init()
    t, w = sampler.sample(state, jax.random.PRNGKey(0), 10)
    np.testing.assert_allclose(w, 1.0)
    per_t_loss = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    for _ in range(2):
        state = sampler.update(state, jnp.arange(T, dtype=jnp.int32), jnp.asarray(per_t_loss, jnp.float32))
    probs = np.asarray(timesteps.loss_second_moment_weights(state, 1e-3))
    expected = per_t_loss / per_t_loss.sum() * (1 - 1e-3) + 1e-3 / T
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    t, w = jax.jit(sampler.sample, static_argnums=2)(state, jax.random.PRNGKey(1), 200000)
    np.testing.assert_allclose(w, 1.0 / (T * probs[np.asarray(t)]), rtol=1e-6)
    # E_p[w L_t] = mean_t L_t: the importance-weighted loss is unbiased.
    estimate = float(np.mean(np.asarray(w) * per_t_loss[np.asarray(t)]))
    assert abs(estimate - per_t_loss.mean()) < 0.02 * per_t_loss.mean()
    freq = np.bincount(np.asarray(t), minlength=T) / t.shape[0]
    np.testing.assert_allclose(freq, probs, atol=5e-3)


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timestep sampler 'importance'"):
        timesteps.make_timestep_sampler("importance", 10)
