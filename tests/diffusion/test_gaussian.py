"""Forward process, posterior and parameterisations, under jit, against float64 references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import gaussian, parameterization, schedules
from diffjax.diffusion.parameterization import DiffusionSpec

T = 1000


@pytest.fixture(scope="module")
def schedule():
    return schedules.named_schedule("linear", T)


@pytest.fixture(scope="module")
def alpha_bar64():
    return np.cumprod(1 - schedules.get_betas("linear", T))


def batch(key, shape=(6, 4, 4, 3)):
    k1, k2, k3 = jax.random.split(key, 3)
    x0 = jax.random.uniform(k1, shape, minval=-1, maxval=1)
    noise = jax.random.normal(k2, shape)
    t = jnp.array([0, 1, 2, 500, 998, 999], jnp.int32)[: shape[0]]
    return x0, noise, t


@pytest.mark.slow
def test_q_sample_and_moments(schedule, alpha_bar64):
    x0, noise, t = batch(jax.random.PRNGKey(0))
    x_t = jax.jit(gaussian.q_sample)(schedule, x0, t, noise)
    a = alpha_bar64[np.asarray(t)][:, None, None, None]
    expected = np.sqrt(a) * np.asarray(x0, np.float64) + np.sqrt(1 - a) * np.asarray(noise, np.float64)
    np.testing.assert_allclose(x_t, expected, rtol=1e-5, atol=1e-6)
    mean, var, log_var = jax.jit(gaussian.q_mean_variance)(schedule, x0, t)
    np.testing.assert_allclose(mean, np.sqrt(a) * np.asarray(x0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(var, 1 - a, rtol=1e-5)
    np.testing.assert_allclose(log_var, np.log(1 - a), rtol=1e-5)


def test_q_sample_monte_carlo_moments(schedule):
    x0 = jnp.full((20000, 1), 0.7)
    t = jnp.full((20000,), 300, jnp.int32)
    x_t = gaussian.q_sample(schedule, x0, t, jax.random.normal(jax.random.PRNGKey(1), x0.shape))
    a = float(schedule.alphas_cumprod[300])
    assert abs(float(x_t.mean()) - np.sqrt(a) * 0.7) < 4 * np.sqrt((1 - a) / 20000)
    assert abs(float(x_t.var()) - (1 - a)) < 0.03 * (1 - a)


@pytest.mark.parametrize("step", [0, 1, 17, 500, 999])
def test_posterior_is_gaussian_conditional_of_the_joint(schedule, step):
    """q(x_{t-1} | x_t, x_0) from the joint of (x_{t-1}, x_t) given x_0, by Gaussian conditioning."""
    betas = schedules.get_betas("linear", T)
    alpha_bar = np.cumprod(1 - betas)
    a_prev = 1.0 if step == 0 else alpha_bar[step - 1]
    # x_{t-1} = sqrt(a_prev) x0 + sqrt(1-a_prev) e1; x_t = sqrt(1-beta) x_{t-1} + sqrt(beta) e2
    var_prev = 1 - a_prev
    cov = np.sqrt(1 - betas[step]) * var_prev
    var_t = (1 - betas[step]) * var_prev + betas[step]
    x0 = np.array([0.3, -0.9]).reshape(2, 1)
    x_t = np.array([1.1, 0.2]).reshape(2, 1)
    mean_prev, mean_t = np.sqrt(a_prev) * x0, np.sqrt(alpha_bar[step]) * x0
    cond_mean = mean_prev + cov / var_t * (x_t - mean_t)
    cond_var = var_prev - cov**2 / var_t
    t = jnp.full((2,), step, jnp.int32)
    mean, var, log_var = jax.jit(gaussian.q_posterior_mean_variance)(schedule, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), t)
    np.testing.assert_allclose(mean, cond_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, np.full((2, 1), cond_var), rtol=1e-5, atol=1e-12)
    expected_log_var = np.log(cond_var) if step > 0 else np.log(float(schedule.posterior_variance[1]))
    np.testing.assert_allclose(log_var, np.full((2, 1), expected_log_var), rtol=1e-5)


def test_conversions_round_trip(schedule):
    x0, noise, t = batch(jax.random.PRNGKey(2))
    x_t = gaussian.q_sample(schedule, x0, t, noise)
    f = jax.jit
    np.testing.assert_allclose(f(parameterization.predict_x0_from_eps)(schedule, x_t, t, noise), x0, atol=2e-3 * 0 + 5e-4)
    np.testing.assert_allclose(f(parameterization.predict_eps_from_x0)(schedule, x_t, t, x0), noise, atol=5e-4, rtol=1e-3)
    v = f(parameterization.predict_v)(schedule, x0, t, noise)
    np.testing.assert_allclose(f(parameterization.predict_x0_from_v)(schedule, x_t, t, v), x0, atol=1e-5)
    np.testing.assert_allclose(f(parameterization.predict_eps_from_v)(schedule, x_t, t, v), noise, atol=1e-5)


def reference_p_mean_variance(spec, betas, output, x_t, t, clip):
    """float64 numpy p_mean_variance, written from improved DDPM's definitions."""
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    C = x_t.shape[-1]
    pred, vals = output[..., :C], output[..., C:]
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    a, a_prev, b = ab[t].reshape(shape), ab_prev[t].reshape(shape), betas[t].reshape(shape)
    if spec.mean_type == "eps":
        x0 = (x_t - np.sqrt(1 - a) * pred) / np.sqrt(a)
    elif spec.mean_type == "x0":
        x0 = pred
    else:
        x0 = np.sqrt(a) * x_t - np.sqrt(1 - a) * pred
    if clip:
        x0 = np.clip(x0, -1, 1)
    mean = b * np.sqrt(a_prev) / (1 - a) * x0 + (1 - a_prev) * np.sqrt(1 - b) / (1 - a) * x_t
    if spec.var_type == "fixed_small":
        log_var = np.broadcast_to(post_log_var[t].reshape(shape), x_t.shape)
    elif spec.var_type == "fixed_large":
        log_var = np.broadcast_to(np.log(np.append(post_var[1], betas[1:]))[t].reshape(shape), x_t.shape)
    elif spec.var_type == "learned":
        log_var = vals
    else:
        frac = (vals + 1) / 2
        log_var = frac * np.log(b) + (1 - frac) * post_log_var[t].reshape(shape)
    return mean, log_var, x0


@pytest.mark.parametrize(
    "mean_type,var_type,clip",
    list(itertools.product(parameterization.MEAN_TYPES, parameterization.VAR_TYPES, [False, True])),
)
def test_p_mean_variance_matches_reference(schedule, mean_type, var_type, clip):
    spec = DiffusionSpec(mean_type, var_type)
    x0, noise, t = batch(jax.random.PRNGKey(3))
    x_t = gaussian.q_sample(schedule, x0, t, noise)
    output = jax.random.normal(jax.random.PRNGKey(4), x_t.shape[:-1] + (spec.output_channels(3),)) * 1.5
    out = jax.jit(gaussian.p_mean_variance, static_argnums=(0, 5))(spec, schedule, output, x_t, t, clip)
    mean, log_var, x0_hat = reference_p_mean_variance(
        spec, schedules.get_betas("linear", T), np.asarray(output, np.float64), np.asarray(x_t, np.float64), np.asarray(t), clip
    )
    # eps -> x0 at t = 999 divides by sqrt(alpha_bar) = 0.006: compare x0 relative to its size.
    np.testing.assert_allclose(out["pred_x0"], x0_hat, rtol=1e-5, atol=1e-5 * np.abs(x0_hat).max())
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.broadcast_to(out["log_variance"], x_t.shape), log_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.broadcast_to(out["variance"], x_t.shape), np.exp(log_var), rtol=2e-5)
    # eps-hat is consistent with x0-hat
    recon = parameterization.predict_x0_from_eps(schedule, x_t, t, out["pred_eps"])
    np.testing.assert_allclose(recon, out["pred_x0"], rtol=1e-4, atol=1e-3)


def test_fixed_large_convention(schedule):
    spec = DiffusionSpec("eps", "fixed_large")
    x_t = jnp.zeros((3, 2))
    t = jnp.array([0, 1, 999], jnp.int32)
    out = gaussian.p_mean_variance(spec, schedule, jnp.zeros((3, 2)), x_t, t)
    np.testing.assert_allclose(out["variance"][:, 0], [float(schedule.posterior_variance[1]), float(schedule.betas[1]), 0.02], rtol=1e-5)


def test_perfect_denoiser_gives_the_data(schedule):
    x0, noise, t = batch(jax.random.PRNGKey(5))
    x_t = gaussian.q_sample(schedule, x0, t, noise)
    for mean_type, output in [("eps", noise), ("x0", x0), ("v", parameterization.predict_v(schedule, x0, t, noise))]:
        out = gaussian.p_mean_variance(DiffusionSpec(mean_type), schedule, output, x_t, t)
        np.testing.assert_allclose(out["pred_x0"], x0, atol=1e-3 if mean_type == "eps" else 1e-5)
        true_mean, _, _ = gaussian.q_posterior_mean_variance(schedule, x0, x_t, t)
        np.testing.assert_allclose(out["mean"], true_mean, atol=1e-4)


def test_bad_inputs_are_clear_errors(schedule):
    with pytest.raises(ValueError, match="unknown mean_type 'noise'"):
        DiffusionSpec("noise", "fixed_small")
    with pytest.raises(ValueError, match="unknown var_type"):
        DiffusionSpec("eps", "small")
    spec = DiffusionSpec("eps", "learned_range")
    x_t = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"denoiser output has shape \(2, 4, 4, 3\).*expects \(2, 4, 4, 6\)"):
        gaussian.p_mean_variance(spec, schedule, x_t, x_t, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="batch"):
        gaussian.q_sample(schedule, x_t, jnp.zeros((3,), jnp.int32), x_t)
