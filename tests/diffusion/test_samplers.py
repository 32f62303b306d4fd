"""Samplers and the likelihood end to end with the exact denoiser of a Gaussian mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import analytic, likelihood, parameterization, samplers, schedules
from diffjax.diffusion.parameterization import DiffusionSpec

MEANS = np.array([[-0.6, 0.0], [0.6, 0.4], [0.0, -0.6]])
STDS = np.array([0.15, 0.10, 0.20])
WEIGHTS = np.array([0.5, 0.3, 0.2])
N = 4000


@pytest.fixture(scope="module")
def schedule():
    return schedules.named_schedule("linear", 1000)


@pytest.fixture(scope="module")
def exact(schedule):
    return analytic.gaussian_mixture_denoiser(schedule, MEANS, STDS, WEIGHTS)


def mixture_stats(x):
    """Per component (by nearest mean): frequency [3], mean [3, 2], variance [3] (mean over axes)."""
    x = np.asarray(x, np.float64)
    component = np.argmin(((x[:, None, :] - MEANS[None]) ** 2).sum(-1), axis=1)
    freq = np.bincount(component, minlength=3) / len(x)
    means = np.stack([x[component == k].mean(0) for k in range(3)])
    variances = np.array([x[component == k].var(0).mean() for k in range(3)])
    return freq, means, variances


def true_stats():
    """The same statistics of exact mixture samples (the nearest-mean split truncates tails)."""
    rng = np.random.default_rng(0)
    k = rng.choice(3, 400_000, p=WEIGHTS)
    return mixture_stats(MEANS[k] + STDS[k, None] * rng.normal(size=(len(k), 2)))


TRUE = true_stats()


def assert_is_the_mixture(x, variance_rtol):
    """Weights and means within Monte-Carlo error (4 sigma); variances within variance_rtol.

    Fixed-variance reverse steps are an approximation (the true reverse variance lies
    between beta~ and beta), and few-step samplers add discretisation error: both show
    in the variances, not in the weights or means.
    """
    assert np.isfinite(np.asarray(x)).all()
    freq, means, variances = mixture_stats(x)
    true_freq, true_means, true_variances = TRUE
    assert np.all(np.abs(freq - true_freq) < 4 * np.sqrt(true_freq * (1 - true_freq) / len(x))), freq
    n_k = freq * len(x)
    assert np.all(np.abs(means - true_means) < 4 * STDS[:, None] / np.sqrt(n_k[:, None]) + 2e-3), means
    np.testing.assert_allclose(variances, true_variances, rtol=variance_rtol)
    return variances / true_variances


def run(exact, schedule, method, key=0, **kwargs):
    fn = jax.jit(
        lambda key: samplers.sample(exact, None, schedule, DiffusionSpec(), key, (N, 2), method=method, clip_denoised=False, **kwargs)
    )
    return fn(jax.random.PRNGKey(key))


def test_ddpm_ancestral_1000_steps_reproduces_the_mixture(exact, schedule):
    small = assert_is_the_mixture(run(exact, schedule, "ddpm"), variance_rtol=0.12)
    large = assert_is_the_mixture(
        jax.jit(lambda key: samplers.sample(exact, None, schedule, DiffusionSpec("eps", "fixed_large"), key, (N, 2), clip_denoised=False))(jax.random.PRNGKey(0)),
        variance_rtol=0.12,
    )
    # beta~ (fixed_small) under-disperses and beta (fixed_large) over-disperses (DDPM sec. 3.2)
    assert np.all(small < large)


@pytest.mark.slow
def test_ddim_eta0_respaced_reproduces_the_mixture_and_converges(exact, schedule):
    ratios = {}
    for spacing in ["50", "ddim100", "1000"]:
        respaced, _ = schedules.respace(schedule, spacing)
        ratios[spacing] = assert_is_the_mixture(run(exact, respaced, "ddim", eta=0.0), variance_rtol=0.25)
    # the discretisation error of the variance shrinks with more steps
    errors = [np.abs(1 - ratios[s]).mean() for s in ["50", "ddim100", "1000"]]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.06, errors


def test_ddim_eta1_and_strided_ddpm_respaced_reproduce_the_mixture(exact, schedule):
    respaced, _ = schedules.respace(schedule, "100")
    eta1 = run(exact, respaced, "ddim", eta=1.0)
    assert_is_the_mixture(eta1, variance_rtol=0.35)
    # eta = 1 on a chain is the ancestral sampler with beta~ on that chain: same draws.
    np.testing.assert_allclose(eta1, run(exact, respaced, "ddpm"), atol=1e-4)


def test_ddim_eta1_step_is_the_ddpm_posterior_step(schedule):
    """With eta = 1 DDIM's step has DDPM's mean and variance beta~ (DDIM section 4.1)."""
    key = jax.random.PRNGKey(3)
    x_t = jax.random.normal(key, (5, 4, 4, 3))
    output = jax.random.normal(jax.random.PRNGKey(4), x_t.shape)
    t = jnp.array([1, 2, 100, 500, 999], jnp.int32)
    spec = DiffusionSpec("eps", "fixed_small")
    ddpm, _ = samplers.ddpm_step(spec, schedule, output, x_t, t, key, clip_denoised=False)
    ddim, _ = samplers.ddim_step(spec, schedule, output, x_t, t, key, clip_denoised=False, eta=1.0)
    np.testing.assert_allclose(ddim, ddpm, atol=2e-5, rtol=1e-4)


def ddim_coefficients_float64(betas, t, eta):
    """DDIM eq. 12 and 16 as written, in float64: the eps_hat coefficient sqrt(1 - a_{t-1} - sigma^2)
    and sigma = eta sqrt((1 - a_{t-1})/(1 - a_t)) sqrt(1 - a_t/a_{t-1}), each [len(t)]; a = alpha_bar."""
    alpha_bar = np.cumprod(1 - np.asarray(betas, np.float64))
    a, a_prev = alpha_bar[t], np.append(1.0, alpha_bar[:-1])[t]
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a)) * np.sqrt(1 - a / a_prev)
    return np.sqrt(1 - a_prev - sigma**2), sigma, a


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_ddim_step_coefficients_match_float64(schedule_name, eta):
    """DDIM's eps_hat coefficient and sigma to float32 precision, also near t = T-1 where
    1 - a_{t-1} - sigma^2 cancels at eta = 1 (cosine: 1e-3 out of 1) and near t = 0."""
    t = np.array([1, 2, 10, 500, 990, 995, 997, 998, 999])
    direction, sigma, alpha_bar = ddim_coefficients_float64(schedules.get_betas(schedule_name, 1000), t, eta)
    schedule = schedules.named_schedule(schedule_name, 1000)
    # x0_hat = 0 (x0 prediction, no clipping) makes eps_hat = x_t / sqrt(1 - a_t) and
    # x_{t-1} = direction eps_hat + sigma z: unit x_t (z = 0) and unit z (x_t = 0) read off each.
    spec = DiffusionSpec("x0", "fixed_small")
    step = jax.jit(
        lambda x_t, z: samplers.ddim_step(spec, schedule, jnp.zeros_like(x_t), x_t, jnp.asarray(t), None, False, eta, noise=z)[0]
    )
    ones, zeros = jnp.ones((len(t), 1)), jnp.zeros((len(t), 1))
    np.testing.assert_allclose(step(ones, zeros)[:, 0], direction / np.sqrt(1 - alpha_bar), rtol=2e-6)
    np.testing.assert_allclose(step(zeros, ones)[:, 0], sigma, rtol=2e-6)


@pytest.mark.slow
def test_ddim_is_deterministic_and_keys_reproduce(exact, schedule):
    respaced, _ = schedules.respace(schedule, "ddim20")
    a = run(exact, respaced, "ddim", key=0)
    b = run(exact, respaced, "ddim", key=0)
    c = run(exact, respaced, "ddim", key=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    x_T = jax.random.normal(jax.random.PRNGKey(7), (N, 2))
    d = samplers.sample(exact, None, respaced, DiffusionSpec(), jax.random.PRNGKey(0), (N, 2), method="ddim", clip_denoised=False, x_T=x_T)
    e = samplers.sample(exact, None, respaced, DiffusionSpec(), jax.random.PRNGKey(5), (N, 2), method="ddim", clip_denoised=False, x_T=x_T)
    np.testing.assert_allclose(d, e, atol=1e-6)  # eta = 0: a function of x_T alone


def test_respaced_sampler_calls_the_denoiser_with_original_steps(schedule):
    respaced, timestep_map = schedules.respace(schedule, "ddim10")
    seen = []

    def recording(params, x_t, t, cond):
        jax.debug.callback(lambda t: seen.append(int(t[0])), t)
        return jnp.zeros_like(x_t)

    x0, trajectory = jax.jit(
        lambda key: samplers.sample(recording, None, respaced, DiffusionSpec(), key, (3, 2), method="ddim", return_trajectory=True)
    )(jax.random.PRNGKey(0))
    jax.effects_barrier()
    assert seen == list(timestep_map[::-1])
    assert trajectory["x"].shape == (10, 3, 2) and trajectory["pred_x0"].shape == (10, 3, 2)


def test_unknown_method_is_a_clear_error(exact, schedule):
    with pytest.raises(ValueError, match="unknown sampling method 'euler'"):
        samplers.sample(exact, None, schedule, DiffusionSpec(), jax.random.PRNGKey(0), (2, 2), method="euler")


def conditional_denoiser(params, x_t, t, cond):
    """A toy conditional eps-denoiser: its output depends on the label, 3 is the null class."""
    offset = jnp.where(cond == 3, 0.0, cond.astype(jnp.float32) + 1.0)
    return 0.5 * x_t + offset[:, None] * (1.0 + t[:, None] / 1000.0)


def test_classifier_free_guidance_formula():
    x_t = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    t = jnp.array([0, 10, 500, 999], jnp.int32)
    labels = jnp.array([0, 1, 2, 0])
    null = jnp.full((4,), 3)
    w = 2.5
    guided = jax.jit(samplers.classifier_free_guidance(conditional_denoiser, w, null))(None, x_t, t, labels)
    expected = (1 + w) * conditional_denoiser(None, x_t, t, labels) - w * conditional_denoiser(None, x_t, t, null)
    np.testing.assert_allclose(guided, expected, rtol=1e-6)
    plain = samplers.classifier_free_guidance(conditional_denoiser, 0.0, null)(None, x_t, t, labels)
    np.testing.assert_allclose(plain, conditional_denoiser(None, x_t, t, labels), rtol=1e-6)


def test_guidance_is_the_same_on_x0_and_v_outputs(schedule):
    """Guiding an x0- or v-model equals guiding its eps and converting (affine invariance)."""
    x_t = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    t = jnp.array([0, 10, 500, 999], jnp.int32)
    labels, null, w = jnp.array([0, 1, 2, 0]), jnp.full((4,), 3), 1.7
    eps_guided = samplers.classifier_free_guidance(conditional_denoiser, w, null)(None, x_t, t, labels)
    x0_from_eps = lambda x, tt, e: parameterization.predict_x0_from_eps(schedule, x, tt, e)
    for to_model, from_model in [
        (x0_from_eps, lambda x, tt, p: parameterization.predict_eps_from_x0(schedule, x, tt, p)),
        (lambda x, tt, e: parameterization.predict_v(schedule, x0_from_eps(x, tt, e), tt, e), lambda x, tt, p: parameterization.predict_eps_from_v(schedule, x, tt, p)),
    ]:
        model = lambda params, x, tt, c: to_model(x, tt, conditional_denoiser(params, x, tt, c))
        guided = samplers.classifier_free_guidance(model, w, null)(None, x_t, t, labels)
        np.testing.assert_allclose(from_model(x_t, t, guided), eps_guided, rtol=1e-3, atol=1e-3)


def test_guidance_keeps_the_conditional_variance_channels():
    def learned(params, x_t, t, cond):
        eps = conditional_denoiser(params, x_t, t, cond)
        return jnp.concatenate([eps, eps * 0 + cond[:, None].astype(jnp.float32)], -1)

    x_t = jnp.ones((2, 2))
    out = samplers.classifier_free_guidance(learned, 3.0, jnp.full((2,), 3))(None, x_t, jnp.array([5, 6]), jnp.array([1, 2]))
    np.testing.assert_allclose(out[:, 2:], [[1, 1], [2, 2]])


# ---------------------------------------------------------------------- likelihood


def grid_data(n, key=0):
    """Mixture samples rounded to the 8-bit grid in [-1, 1]."""
    rng = np.random.default_rng(key)
    k = rng.choice(3, n, p=WEIGHTS)
    x = MEANS[k] + STDS[k, None] * rng.normal(size=(n, 2))
    return jnp.asarray(np.clip(np.round((x + 1) * 127.5), 0, 255) / 127.5 - 1, jnp.float32)


@pytest.mark.slow
def test_bpd_exact_denoiser_beats_a_wrong_one(schedule, exact):
    small = schedules.respace(schedule, "100")[0]  # a 100-step chain keeps the test fast
    x0 = grid_data(64)
    wrong = analytic.gaussian_mixture_denoiser(schedule, MEANS + 0.3, STDS, WEIGHTS)
    # fixed_large: on a 100-step chain beta~ is far too small for the early KL terms
    spec = DiffusionSpec("eps", "fixed_large")
    bpd = jax.jit(lambda d, keys: likelihood.bpd(d, None, small, spec, x0, keys), static_argnums=0)
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    good, bad = bpd(exact, keys), bpd(wrong, keys)
    assert good["vb"].shape == (64, 100) and good["total"].shape == (64,)
    np.testing.assert_allclose(good["total"], good["vb"].sum(1) + good["prior"], rtol=1e-6)
    assert np.isfinite(good["total"]).all()
    assert float(good["total"].mean()) < 8.0
    assert float(good["total"].mean()) + 0.5 < float(bad["total"].mean())


@pytest.mark.slow
def test_bpd_is_the_same_in_one_batch_or_several(schedule, exact):
    small = schedules.respace(schedule, "ddim50")[0]
    x0 = grid_data(12, key=1)
    keys = jax.vmap(lambda n: jax.random.fold_in(jax.random.PRNGKey(0), n))(jnp.arange(12))
    bpd = jax.jit(lambda x, k: likelihood.bpd(exact, None, small, DiffusionSpec("eps", "fixed_large"), x, k)["total"])
    whole = np.asarray(bpd(x0, keys))
    halves = np.concatenate([bpd(x0[:5], keys[:5]), bpd(x0[5:], keys[5:])])
    np.testing.assert_allclose(whole, halves, rtol=1e-6)
    with pytest.raises(ValueError, match="one key per example"):
        likelihood.bpd(exact, None, small, DiffusionSpec(), x0, keys[:3])
