"""KL, decoder likelihood, VLB terms and objectives against closed forms and float64 numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from diffjax import gaussian, losses, parameterization, schedules
from diffjax.diffusion.losses import Objective
from diffjax.diffusion.parameterization import DiffusionSpec

T = 1000


@pytest.fixture(scope="module")
def schedule():
    return schedules.named_schedule("linear", T)


def test_kl_of_equal_gaussians_is_zero():
    mean = jnp.linspace(-3, 3, 7)
    logvar = jnp.linspace(-5, 2, 7)
    np.testing.assert_allclose(jax.jit(losses.normal_kl)(mean, logvar, mean, logvar), 0.0, atol=1e-7)


def test_kl_matches_closed_form_and_monte_carlo():
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.4, math.log(2.0)
    closed = math.log(math.sqrt(2.0) / math.sqrt(0.5)) + (0.5 + 0.7**2) / (2 * 2.0) - 0.5
    np.testing.assert_allclose(float(losses.normal_kl(m1, lv1, m2, lv2)), closed, rtol=1e-6)
    x = np.random.default_rng(0).normal(m1, math.sqrt(0.5), 400_000)
    log_ratio = -0.5 * ((x - m1) ** 2 / 0.5 + lv1) + 0.5 * ((x - m2) ** 2 / 2.0 + lv2)
    assert abs(log_ratio.mean() - closed) < 4 * log_ratio.std() / math.sqrt(x.size)


def test_decoder_likelihood_sums_to_one_over_the_bins():
    bins = jnp.arange(256, dtype=jnp.float32) / 127.5 - 1.0
    for mean, log_scale in [(0.0, -3.0), (0.91, -5.5), (-1.2, -1.0), (0.5, 0.5)]:
        logp = jax.jit(losses.discretized_gaussian_log_likelihood)(bins, jnp.full(256, mean), jnp.full(256, log_scale))
        np.testing.assert_allclose(float(jnp.exp(logp).sum()), 1.0, rtol=1e-5)


def test_decoder_likelihood_matches_float64_reference():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, 500) / 127.5 - 1.0
    means = np.clip(x + rng.normal(0, 0.02, 500), -1.2, 1.2)
    log_scales = rng.uniform(-6, -2, 500)
    # the reference sees exactly the float32 inputs the implementation sees
    x, means, log_scales = (np.float32(a).astype(np.float64) for a in (x, means, log_scales))

    def cdf(v):  # the tanh approximation, as in the DDPM code
        return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))

    plus = cdf((x - means + 1 / 255) / np.exp(log_scales))
    minus = cdf((x - means - 1 / 255) / np.exp(log_scales))
    with np.errstate(divide="ignore"):
        expected = np.where(x < -0.999, np.log(plus), np.where(x > 0.999, np.log(1 - minus), np.log(np.maximum(plus - minus, 1e-12))))
    actual = losses.discretized_gaussian_log_likelihood(*(jnp.asarray(a, jnp.float32) for a in (x, means, log_scales)))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    # and it is close to the exact normal CDF's bin mass
    exact = lambda v: 0.5 * (1 + special.erf(v / np.sqrt(2)))
    p_exact = np.where(x < -0.999, exact((x - means + 1 / 255) / np.exp(log_scales)),
                       np.where(x > 0.999, 1 - exact((x - means - 1 / 255) / np.exp(log_scales)),
                                exact((x - means + 1 / 255) / np.exp(log_scales)) - exact((x - means - 1 / 255) / np.exp(log_scales))))
    mask = p_exact > 1e-3
    # the tanh approximation is within 2e-4 of the exact CDF
    np.testing.assert_allclose(np.exp(actual)[mask], p_exact[mask], rtol=0, atol=5e-4)


def test_prior_bpd_known_values(schedule):
    x0 = jnp.zeros((1, 4, 4, 3))
    np.testing.assert_allclose(float(losses.prior_bpd(schedule, x0)[0]), 5.9e-10, rtol=0.2, atol=0)
    np.testing.assert_allclose(float(losses.prior_bpd(schedule, jnp.ones((1, 2)))[0]), 2.9e-5, rtol=0.05)


# ------------------------------------------------ decoder floor (DDPM / improved DDPM)

LOG_PROB_FLOOR = math.log(1e-12)
"""Both papers' code floors every bin's probability at 1e-12: -log p(pixel) <= 27.63 nats."""


def papers_decoder_log_likelihood(x, means, log_scales):
    """float64 numpy log p(x) of the papers' discretised decoder, every bin floored at 1e-12.

    Written from DDPM's / improved DDPM's ``discretized_gaussian_log_likelihood``: the tanh
    CDF approximation F, the bin [x - 1/255, x + 1/255] with the edge bins open to -inf
    (x = -1) and +inf (x = +1), and log(max(p, 1e-12)) for every bin. Shapes broadcast.
    """
    cdf = lambda v: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))
    inv_std = np.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv_std * (x - means + 1 / 255)), cdf(inv_std * (x - means - 1 / 255))
    floored_log = lambda p: np.log(np.maximum(p, 1e-12))
    return np.where(
        x < -0.999, floored_log(cdf_plus), np.where(x > 0.999, floored_log(1 - cdf_min), floored_log(cdf_plus - cdf_min))
    )


def vb_reference(spec, betas, output, x0, x_t, t):
    """float64 numpy VLB term in bits/dim."""
    from tests.diffusion.test_gaussian import reference_p_mean_variance

    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    shape = (-1,) + (1,) * (x0.ndim - 1)
    c1 = (betas * np.sqrt(ab_prev) / (1 - ab))[t].reshape(shape)
    c2 = ((1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab))[t].reshape(shape)
    true_mean, true_lv = c1 * x0 + c2 * x_t, post_log_var[t].reshape(shape)
    mean, lv, _ = reference_p_mean_variance(spec, betas, output, x_t, t, False)
    kl = 0.5 * (-1 + lv - true_lv + np.exp(true_lv - lv) + (true_mean - mean) ** 2 * np.exp(-lv))
    kl = kl.reshape(len(t), -1).mean(1) / np.log(2)
    logp = papers_decoder_log_likelihood(x0, mean, 0.5 * lv)
    nll = -logp.reshape(len(t), -1).mean(1) / np.log(2)
    return np.where(t == 0, nll, kl)


@pytest.mark.parametrize("spec", [DiffusionSpec("eps", "fixed_small"), DiffusionSpec("eps", "learned_range"), DiffusionSpec("x0", "fixed_large"), DiffusionSpec("v", "learned")])
def test_vb_terms_match_reference(schedule, spec):
    key = jax.random.PRNGKey(0)
    x0 = jnp.round((jax.random.uniform(key, (6, 4, 4, 3), minval=-1, maxval=1) + 1) * 127.5) / 127.5 - 1
    noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    t = jnp.array([0, 0, 1, 10, 500, 999], jnp.int32)
    x_t = gaussian.q_sample(schedule, x0, t, noise)
    # a good-ish prediction so the decoder term is not at its floor
    pred = {"eps": noise, "x0": x0, "v": parameterization.predict_v(schedule, x0, t, noise)}[spec.mean_type]
    pred = pred + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x0.shape)
    if spec.learns_variance:
        extra = 0.3 * jax.random.normal(jax.random.PRNGKey(3), x0.shape)
        if spec.var_type == "learned":
            extra = extra + jnp.log(schedule.posterior_variance[t] + 1e-4)[:, None, None, None]
        pred = jnp.concatenate([pred, extra], -1)
    vb = jax.jit(losses.vb_terms_bpd, static_argnums=0)(spec, schedule, pred, x0, x_t, t)["vb"]
    f64 = lambda a: np.asarray(a, np.float64)
    expected = vb_reference(spec, schedules.get_betas("linear", T), f64(pred), f64(x0), f64(x_t), np.asarray(t))
    # terms near 0 are differences of O(1) numbers: absolute float32 roundoff ~1e-7
    np.testing.assert_allclose(vb, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(vb) >= 0)


def edge_pixels_and_means(log_scales, sigmas_inside):
    """x = -1 and +1 pixels with means ``k`` decoder std devs inside [-1, 1] for every k.

    Args:
      log_scales: [S] log standard deviations.
      sigmas_inside: [K] distances k, in standard deviations.

    Returns:
      (x, means, log_scales), each float32 [2, S, K].
    """
    x = np.array([-1.0, 1.0])[:, None, None]
    log_scales = np.asarray(log_scales, np.float64)[None, :, None]
    means = x - np.sign(x) * np.asarray(sigmas_inside)[None, None, :] * np.exp(log_scales)
    x, means, log_scales = np.broadcast_arrays(x, means, log_scales)
    return tuple(np.float32(a) for a in (x, means, log_scales))


def test_decoder_edge_bins_are_floored_like_the_papers():
    """Means 0..70 sigma inside the +-1 edge bins: the papers' values, never below log 1e-12."""
    sigmas_inside = np.linspace(0.0, 70.0, 141)
    x, means, log_scales = edge_pixels_and_means([-7.0, -4.9, -3.0], sigmas_inside)
    log_likelihood = jax.jit(losses.discretized_gaussian_log_likelihood)(x, means, log_scales)
    f64 = lambda a: np.asarray(a, np.float64)
    expected = papers_decoder_log_likelihood(f64(x), f64(means), f64(log_scales))
    np.testing.assert_allclose(log_likelihood, expected, rtol=1e-5, atol=1e-5)
    assert np.all(-np.asarray(log_likelihood) <= -LOG_PROB_FLOOR * (1 + 1e-6))

    grad = jax.jit(jax.grad(lambda m: losses.discretized_gaussian_log_likelihood(x, m, log_scales).sum()))(means)
    assert np.all(np.isfinite(grad))
    floored = expected == np.float64(LOG_PROB_FLOOR)
    assert floored[..., -1].all() and not floored[..., 0].any()
    np.testing.assert_array_equal(np.asarray(grad)[floored], 0.0)


def far_decoder_batch(spec, betas, sigmas_inside=70.0):
    """A t = 0 batch of +-1 pixels whose decoder mean lies ``sigmas_inside`` std devs inside [-1, 1].

    The denoiser output is solved (in float64) from the wanted decoder mean for ``spec``'s
    mean type; learned variances are random (variances in [1e-5, 1e-4] for ``learned``,
    v in [-1, 1] for ``learned_range``).

    Returns:
      (output [B, H, W, C or 2C], x0 [B, H, W, C], x_t [B, H, W, C], t [B]), float64 numpy
      arrays (t int32).
    """
    from tests.diffusion.test_gaussian import reference_p_mean_variance

    rng = np.random.default_rng(7)
    shape = (4, 4, 4, 3)
    x0 = rng.choice([-1.0, 1.0], shape)
    t = np.zeros(shape[0], np.int32)
    alpha_bar = np.cumprod(1 - betas)[0]
    x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * rng.normal(size=shape)
    if spec.var_type == "learned":
        var_values = rng.uniform(math.log(1e-5), math.log(1e-4), shape)
    else:
        var_values = rng.uniform(-1.0, 1.0, shape)
    placeholder = np.concatenate([np.zeros(shape), var_values], -1) if spec.learns_variance else np.zeros(shape)
    _, log_variance, _ = reference_p_mean_variance(spec, betas, placeholder, x_t, t, False)
    # At t = 0 the decoder mean is x0_hat itself (posterior coefficients 1 and 0).
    x0_hat = x0 - np.sign(x0) * sigmas_inside * np.exp(0.5 * log_variance)
    prediction = {
        "eps": (x_t - np.sqrt(alpha_bar) * x0_hat) / np.sqrt(1 - alpha_bar),
        "x0": x0_hat,
        "v": (np.sqrt(alpha_bar) * x_t - x0_hat) / np.sqrt(1 - alpha_bar),
    }[spec.mean_type]
    output = np.concatenate([prediction, var_values], -1) if spec.learns_variance else prediction
    return output, x0, x_t, t


@pytest.mark.parametrize("mean_type", parameterization.MEAN_TYPES)
@pytest.mark.parametrize("var_type", parameterization.VAR_TYPES)
@pytest.mark.slow
def test_decoder_term_far_from_edge_pixels_is_floored(schedule, mean_type, var_type):
    """L_0 with decoder means 70 sigma inside +-1 pixels: every pixel at the papers' floor,
    -log 1e-12 nats, and no gradient (zero, not NaN) through the floor."""
    spec = DiffusionSpec(mean_type, var_type)
    betas = schedules.get_betas("linear", T)
    output, x0, x_t, t = far_decoder_batch(spec, betas)
    expected = vb_reference(spec, betas, output, x0, x_t, t)
    output, x0, x_t = (jnp.asarray(a, jnp.float32) for a in (output, x0, x_t))
    t = jnp.asarray(t)

    vb_of_output = lambda out: losses.vb_terms_bpd(spec, schedule, out, x0, x_t, t)["vb"]
    vb = jax.jit(vb_of_output)(output)
    grad_output = jax.jit(jax.grad(lambda out: vb_of_output(out).sum()))(output)
    np.testing.assert_allclose(vb, expected, rtol=1e-5)
    np.testing.assert_allclose(expected, -LOG_PROB_FLOOR / math.log(2.0), rtol=1e-12)
    assert np.all(np.isfinite(grad_output))
    np.testing.assert_array_equal(grad_output, 0.0)

    model = gaussian.p_mean_variance(spec, schedule, output, x_t, t)
    log_scales = 0.5 * model["log_variance"]
    pixel_nll = lambda mean: -losses.discretized_gaussian_log_likelihood(x0, mean, log_scales)
    assert np.all(np.asarray(pixel_nll(model["mean"])) <= -LOG_PROB_FLOOR * (1 + 1e-6))
    grad_mean = jax.grad(lambda mean: pixel_nll(mean).sum())(model["mean"])
    assert np.all(np.isfinite(grad_mean))
    np.testing.assert_array_equal(grad_mean, 0.0)


def make_batch(schedule, spec, key=0, channels=3):
    keys = jax.random.split(jax.random.PRNGKey(key), 4)
    x0 = jnp.round((jax.random.uniform(keys[0], (4, 4, 4, channels), minval=-1, maxval=1) + 1) * 127.5) / 127.5 - 1
    noise = jax.random.normal(keys[1], x0.shape)
    t = jnp.array([0, 5, 400, 999], jnp.int32)
    x_t = gaussian.q_sample(schedule, x0, t, noise)
    output = jax.random.normal(keys[2], x0.shape[:-1] + (spec.output_channels(channels),))
    return output, x0, x_t, t, noise


def test_simple_objective_is_eps_mse(schedule):
    spec = DiffusionSpec()
    output, x0, x_t, t, noise = make_batch(schedule, spec)
    terms = jax.jit(losses.training_losses, static_argnums=(0, 1))(spec, Objective("simple"), schedule, output, x0, x_t, t, noise)
    expected = np.mean((np.asarray(output) - np.asarray(noise)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(terms["mse"], expected, rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], expected, rtol=1e-6)
    assert "vb" not in terms


@pytest.mark.parametrize("mean_type", ["x0", "v"])
def test_simple_objective_targets(schedule, mean_type):
    spec = DiffusionSpec(mean_type)
    output, x0, x_t, t, noise = make_batch(schedule, spec)
    target = x0 if mean_type == "x0" else parameterization.predict_v(schedule, x0, t, noise)
    terms = losses.training_losses(spec, Objective("simple"), schedule, output, x0, x_t, t, noise)
    np.testing.assert_allclose(terms["mse"], np.mean((np.asarray(output) - np.asarray(target)) ** 2, axis=(1, 2, 3)), rtol=1e-6)


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.slow
def test_hybrid_objective(schedule, rescale):
    spec = DiffusionSpec("eps", "learned_range")
    output, x0, x_t, t, noise = make_batch(schedule, spec)
    objective = Objective("hybrid", rescale_vlb=rescale)
    terms = jax.jit(losses.training_losses, static_argnums=(0, 1))(spec, objective, schedule, output, x0, x_t, t, noise)
    vb = losses.vb_terms_bpd(spec, schedule, output, x0, x_t, t)["vb"]
    np.testing.assert_allclose(terms["vb"], vb, rtol=1e-6)
    weight = T / 1000 if rescale else 1.0
    np.testing.assert_allclose(terms["loss"], terms["mse"] + weight * vb, rtol=1e-6)

    # The VLB term trains only the variance: its gradient on the mean channels is zero.
    def vb_only(out):
        return losses.training_losses(spec, objective, schedule, out, x0, x_t, t, noise)["vb"].sum()

    grad = jax.grad(vb_only)(output)
    assert np.all(np.asarray(grad[..., :3]) == 0)
    assert np.any(np.asarray(grad[..., 3:]) != 0)


def test_hybrid_with_rescaled_T4000_weights_vb_by_four():
    schedule = schedules.named_schedule("cosine", 4000)
    spec = DiffusionSpec("eps", "learned_range")
    output, x0, x_t, t, noise = make_batch(schedule, spec)
    terms = losses.training_losses(spec, Objective("hybrid"), schedule, output, x0, x_t, t, noise)
    np.testing.assert_allclose(terms["loss"], terms["mse"] + 4.0 * terms["vb"], rtol=1e-6)


def test_hybrid_needs_learned_variance(schedule):
    spec = DiffusionSpec()
    output, x0, x_t, t, noise = make_batch(schedule, spec)
    with pytest.raises(ValueError, match="hybrid objective needs a learned variance"):
        losses.training_losses(spec, Objective("hybrid"), schedule, output, x0, x_t, t, noise)


@pytest.mark.parametrize("rescale", [True, False])
def test_vlb_objective(schedule, rescale):
    spec = DiffusionSpec("eps", "learned_range")
    output, x0, x_t, t, noise = make_batch(schedule, spec)
    terms = losses.training_losses(spec, Objective("vlb", rescale_vlb=rescale), schedule, output, x0, x_t, t, noise)
    vb = losses.vb_terms_bpd(spec, schedule, output, x0, x_t, t)["vb"]
    np.testing.assert_allclose(terms["loss"], vb * (T if rescale else 1), rtol=1e-6)
    assert set(terms) == {"vb", "loss"}


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_min_snr_weighting_is_the_same_x0_weight_in_every_parameterisation(schedule, mean_type):
    """min-SNR weights make the loss equal min(SNR, 5) * ||x0_hat - x0||^2 for eps, x0 and v."""
    spec = DiffusionSpec(mean_type)
    _, x0, x_t, t, noise = make_batch(schedule, spec)
    x0_hat = x0 + 0.1 * jax.random.normal(jax.random.PRNGKey(9), x0.shape)
    eps_hat = parameterization.predict_eps_from_x0(schedule, x_t, t, x0_hat)
    output = {"eps": eps_hat, "x0": x0_hat, "v": parameterization.predict_v(schedule, x0_hat, t, eps_hat)}[mean_type]
    terms = losses.training_losses(spec, Objective("simple", weighting="min_snr", snr_gamma=5.0), schedule, output, x0, x_t, t, noise)
    ab = np.cumprod(1 - schedules.get_betas("linear", T))[np.asarray(t)]
    snr = ab / (1 - ab)
    expected = np.minimum(snr, 5.0) * np.mean((np.asarray(x0_hat, np.float64) - np.asarray(x0)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(terms["loss"], expected, rtol=2e-3)


def test_unknown_objective_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown objective 'l2'"):
        Objective("l2")
    with pytest.raises(ValueError, match="unknown loss weighting"):
        Objective("simple", weighting="p2")
