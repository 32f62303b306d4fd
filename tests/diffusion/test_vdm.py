"""Variational diffusion models (Kingma et al. 2021): schedules, the bound and its estimators.

* The bound's four terms against a float64 NumPy derivation written in the paper's x-hat/SNR form
  (eqs. 13, 15, 17 and the appendix decoder), not in the eps/gamma form of diffjax.diffusion.vdm.
* Gaussian data x ~ N(mu, s^2) per dimension with the exact eps-hat: the diffusion + prior terms
  against the exact continuous likelihood (see ``test_gaussian_data...``), and a wrong eps-hat's
  excess against its closed form.
* L_T -> L_inf at rate 1/T, from exact expectations (Gauss-Hermite in eps, every step in t).
* Low-discrepancy times: the same mean as i.i.d. times and a lower variance.
* The monotone-network schedule: strictly increasing, exact ends before and after training.
* The variance gradient: d E[L^2] for the schedule's shape, d E[L] for everything else.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss
from scipy.special import logsumexp
from scipy.stats import norm

from diffjax.diffusion import vdm
from diffjax.models.noise_schedule import LinearSchedule, MonotoneSchedule
from tests.support.subprocesses import DEFAULT_OPTIMISATION

G0, G1 = -13.3, 5.0


# ----------------------------------------------------------------------------- float64 references


def np_alpha_sigma(gamma):
    """From SNR = exp(-gamma) and alpha^2 + sigma^2 = 1: sigma^2 = 1 / (1 + SNR)."""
    snr = np.exp(-gamma)
    return np.sqrt(snr / (1 + snr)), np.sqrt(1 / (1 + snr))


def np_grid(grid):
    k = np.arange(256.0)
    return k / 127.5 - 1 if grid == "diffjax" else (k + 0.5) / 128 - 1


def wiggly_gamma_np(t):
    """A nonlinear increasing schedule and its derivative, (gamma, gamma')."""
    return (G0 + (G1 - G0) * (t + 0.15 * np.sin(2 * np.pi * t) / (2 * np.pi)),
            (G1 - G0) * (1 + 0.15 * np.cos(2 * np.pi * t)))


def wiggly_gamma(t):
    return G0 + (G1 - G0) * (t + 0.15 * jnp.sin(2 * jnp.pi * t) / (2 * jnp.pi))


def eps_model_np(z, t, gamma):
    shape = (-1,) + (1,) * (z.ndim - 1)
    return np.tanh(0.8 * z) * (1 + 0.02 * gamma.reshape(shape)) + 0.3 * t.reshape(shape)


def eps_model(z, t, gamma):
    shape = (-1,) + (1,) * (z.ndim - 1)
    return jnp.tanh(0.8 * z) * (1 + 0.02 * gamma.reshape(shape)) + 0.3 * t.reshape(shape)


def reference_bound(x, t, eps, eps_0, num_steps, grid):
    """Per-example terms in bits/dim from the paper (float64 NumPy, x-hat form)."""
    batch = x.shape[0]
    dims = x[0].size
    to_bpd = 1 / (dims * math.log(2))
    flat = lambda a: a.reshape(batch, -1)
    col = lambda a: a.reshape(batch, 1)
    if num_steps is not None:
        t = np.maximum(np.ceil(t * num_steps), 1) / num_steps
    gamma_t, dgamma_t = wiggly_gamma_np(t)
    alpha_t, sigma_t = np_alpha_sigma(gamma_t)
    z_t = col(alpha_t) * flat(x) + col(sigma_t) * flat(eps)
    eps_hat = eps_model_np(z_t, t, gamma_t)
    x_hat = (z_t - col(sigma_t) * eps_hat) / col(alpha_t)
    err = np.sum((flat(x) - x_hat) ** 2, axis=1)
    snr = lambda g: np.exp(-g)
    if num_steps is None:
        # eq. 17: L_inf = -(1/2) E[SNR'(t) ||x - x_hat||^2], SNR' = -gamma' SNR.
        diffusion = -0.5 * (-dgamma_t * snr(gamma_t)) * err
    else:
        # eq. 15: L_T = (T/2) E[(SNR(s) - SNR(t)) ||x - x_hat||^2], s = t - 1/T.
        gamma_s, _ = wiggly_gamma_np(t - 1 / num_steps)
        diffusion = 0.5 * num_steps * (snr(gamma_s) - snr(gamma_t)) * err
    (gamma_0, _), (gamma_1, _) = wiggly_gamma_np(np.array(0.0)), wiggly_gamma_np(np.array(1.0))
    a1, s1 = np_alpha_sigma(gamma_1)
    # KL(N(a1 x, s1^2) || N(0, 1)) per dimension.
    prior = np.sum(np.log(1 / s1) + (s1**2 + a1**2 * flat(x) ** 2) / 2 - 0.5, axis=1)
    # p(x_i = v | z_0,i) = q(z_0,i | v) / sum_v' q(z_0,i | v'), q(z_0 | v) = N(a0 v, s0^2).
    a0, s0 = np_alpha_sigma(gamma_0)
    z_0 = a0 * flat(x) + s0 * flat(eps_0)
    log_q = norm.logpdf(z_0[..., None], a0 * np_grid(grid), s0)  # [B, D, 256]
    index = np.abs(flat(x)[..., None] - np_grid(grid)).argmin(-1)
    log_p = np.take_along_axis(log_q, index[..., None], -1)[..., 0] - logsumexp(log_q, axis=-1)
    reconstruction = -np.sum(log_p, axis=1)
    terms = dict(diffusion=diffusion, prior=prior, reconstruction=reconstruction)
    terms = {k: v * to_bpd for k, v in terms.items()}
    terms["total"] = sum(terms.values())
    return terms


@pytest.mark.parametrize("grid", vdm.GRIDS)
@pytest.mark.parametrize("num_steps", [None, 10])
def test_bound_matches_float64_reference(num_steps, grid):
    rng = np.random.default_rng(0)
    x = np_grid(grid)[rng.integers(0, 256, (6, 4, 3, 2))]
    t = rng.uniform(size=6)
    t[0] = 0.0  # goes to step 1 of L_T
    eps, eps_0 = rng.normal(size=(2,) + x.shape)
    expected = reference_bound(x, t, eps, eps_0, num_steps, grid)
    with jax.enable_x64(True):
        loss = jax.jit(lambda x, t, eps, eps_0: vdm.vdm_loss(eps_model, wiggly_gamma, x, None, num_steps=num_steps,
                                                             grid=grid, t=t, eps=eps, eps_0=eps_0))
        actual = loss(*(jnp.asarray(a) for a in (x, t, eps, eps_0)))
        actual = {k: np.asarray(v) for k, v in actual.items()}
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-9, atol=1e-12, err_msg=name)
    # the terms are of sizes that make the check meaningful
    assert expected["reconstruction"].max() > 1e-3 and expected["diffusion"].min() > 0.01


def test_decoder_normalises_and_grids_map():
    with jax.enable_x64(True):
        z = jnp.asarray(np.random.default_rng(1).uniform(-1.1, 1.1, (3, 5)))
        for grid in vdm.GRIDS:
            total = jax.jit(lambda z, g, grid=grid: jnp.exp(vdm.decoder_log_probs(z, g, grid)).sum(-1))
            for gamma_0 in (-13.3, -6.0, 0.0):
                np.testing.assert_allclose(total(z, gamma_0), 1.0, rtol=1e-12)
        np.testing.assert_allclose(vdm.to_vdm_grid(vdm.grid_values("diffjax")), vdm.grid_values("vdm"), atol=1e-15)
    with pytest.raises(ValueError, match="unknown grid"):
        vdm.grid_values("uint8")


# ----------------------------------------------------------------------------- Gaussian data

MU, STD = 0.1, 0.4


def gaussian_terms(x, gamma):
    """alpha, sigma, v = alpha^2 s^2 + sigma^2 (the marginal variance of z) at gamma."""
    alpha, sigma = np_alpha_sigma(gamma)
    return alpha, sigma, alpha**2 * STD**2 + sigma**2


def np_kl(m1, v1, m2, v2):
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def optimal_eps(mu):
    """E[eps | z_t] for x ~ N(mu, s^2): sigma (z - alpha mu) / v (JAX, for the code under test)."""
    def eps_fn(z, t, gamma):
        alpha, sigma = vdm.alpha_sigma(gamma[:, None])
        return sigma * (z - alpha * mu) / (alpha**2 * STD**2 + sigma**2)
    return eps_fn


def continuous_terms(eps_fn, x, key):
    """(L_inf, prior) per row of x in nats from one draw of i.i.d. t and eps each, linear gamma:
    ``vdm_loss``'s diffusion and prior terms without its 8-bit decoder."""
    dims = x.shape[1]
    key_t, key_eps = jax.random.split(key)
    t = vdm.sample_times(key_t, x.shape[0], antithetic=False)
    eps = jax.random.normal(key_eps, x.shape, x.dtype)
    gamma, dgamma = vdm.gamma_and_derivative(lambda s: vdm.linear_gamma(s, G0, G1), t)
    diffusion = vdm.continuous_diffusion_loss(eps, eps_fn(vdm.diffuse(x, gamma, eps), t, gamma), dgamma)
    to_nats = dims * math.log(2)
    return diffusion * to_nats, vdm.prior_loss(x, G1) * to_nats


def test_gaussian_data_bound_is_exact_with_the_optimal_denoiser():
    """x ~ N(mu, s^2) i.i.d. over D dims, continuous (no 8-bit quantisation), linear gamma.

    With the exact eps-hat the reverse model's transitions are q's, so the path KL given x is
    KL(q(z_0|x) || q(z_0)) and, the prior p(z_1) being N(0, I) rather than q(z_1),

        L_inf(x) = KL(q(z_0|x) || q(z_0)) - KL(q(z_1|x) || q(z_1))            (exact, per x)

    Hence with the continuous decoder q(x|z_0) (the exact posterior) in place of the 8-bit one:

        prior(x) + L_inf(x) + E_q(z_0|x)[-log q(x|z_0)]
            = -log N(x; mu, s^2) + KL(q(z_1|x) || N(0,I)) - KL(q(z_1|x) || q(z_1)),

    the exact NLL plus the prior's mismatch (small: SNR(1) = e^-5; its mean over x is
    KL(q(z_1) || N(0, I)) >= 0). Checked: the code's prior + L_inf (Monte Carlo, i.i.d. t and eps)
    against the right side minus the closed-form continuous reconstruction term, per x; the
    8-bit reconstruction/discretisation is not part of this check.

    A wrong eps-hat (the exact one for mean mu + d) adds, per x,
    (1/2) int gamma' sigma^2 alpha^2 / v^2 (d^2 - 2 d (x - mu)) dt per dimension (not positive for
    every x: the wrong mean can suit an x near mu + d), and on average over the data
    (1/2) int gamma' sigma^2 alpha^2 d^2 / v^2 dt > 0: the bound then lies above -log p(x) by
    that much more, checked over fresh data draws.
    """
    rng = np.random.default_rng(2)
    dims, examples, draws, shift = 3, 4, 32768, 0.3
    x = rng.normal(MU, STD, (examples, dims))

    def exact(x):
        """Per example (nats): NLL, prior mismatch, continuous reconstruction, L_inf, excess."""
        a0, s0, v0 = gaussian_terms(x, G0)
        a1, s1, v1 = gaussian_terms(x, G1)
        nll = -norm.logpdf(x, MU, STD).sum(1)
        mismatch = (np_kl(a1 * x, s1**2, 0, 1) - np_kl(a1 * x, s1**2, a1 * MU, v1)).sum(1)
        posterior_var = STD**2 * s0**2 / v0
        recon = (0.5 * np.log(2 * np.pi * posterior_var)
                 + 0.5 * ((x - MU) ** 2 * s0**2 / (v0 * STD**2) + a0**2 * STD**2 / v0)).sum(1)
        diffusion = (np_kl(a0 * x, s0**2, a0 * MU, v0) - np_kl(a1 * x, s1**2, a1 * MU, v1)).sum(1)
        weight = (0.5 * (G1 - G0) * sq**2 * aq**2 / vq**2 * wq).sum()  # (1/2) int gamma' s^2 a^2 / v^2
        excess = weight * (dims * shift**2 - 2 * shift * (x - MU).sum(1))
        return nll, mismatch, recon, diffusion, excess

    # the theory itself: (1/2) int gamma' E||eps - eps_hat*||^2 dt by quadrature (per-dimension
    # E||.||^2 = (1 - sigma^2/v)^2 + sigma^2 alpha^2 (x - mu)^2 / v^2)
    nodes, weights = leggauss(400)
    tq, wq = (nodes + 1) / 2, weights / 2
    aq, sq, vq = gaussian_terms(None, vdm.linear_gamma(tq, G0, G1))
    nll, mismatch, recon, expected_diffusion, excess = exact(x)
    f = (1 - sq**2 / vq) ** 2 + sq**2 * aq**2 * (x[..., None] - MU) ** 2 / vq**2
    np.testing.assert_allclose((0.5 * (G1 - G0) * f * wq).sum((-1, -2)), expected_diffusion, rtol=1e-9)

    with jax.enable_x64(True):
        run = jax.jit(lambda mu, x, key: continuous_terms(optimal_eps(mu), x, key))
        xb = jnp.asarray(np.tile(x, (draws, 1)))  # row j is example j % examples
        per_draw = {name: np.asarray(run(mu, xb, jax.random.PRNGKey(0))[0]).reshape(draws, examples)
                    for name, mu in [("optimal", MU), ("wrong", MU + shift)]}
        prior = np.asarray(run(MU, xb, jax.random.PRNGKey(0))[1][:examples])
        # fresh data draws for the data average
        x_fresh = rng.normal(MU, STD, (draws * examples, dims))
        fresh = {name: [np.asarray(a) for a in run(mu, jnp.asarray(x_fresh), jax.random.PRNGKey(1))]
                 for name, mu in [("optimal", MU), ("wrong", MU + shift)]}
    diffusion = per_draw["optimal"].mean(0)
    stderr = per_draw["optimal"].std(0) / math.sqrt(draws)
    print("\nL_inf MC", diffusion, "+-", stderr, "exact", expected_diffusion, "prior mismatch", mismatch)
    np.testing.assert_allclose(prior + diffusion + recon, nll + mismatch, atol=4 * stderr.max())
    assert np.all(np.abs(diffusion - expected_diffusion) < 4 * stderr)
    # the wrong denoiser per x: the same draws, so the difference has a small error bar
    diff = per_draw["wrong"] - per_draw["optimal"]
    diff_err = diff.std(0) / math.sqrt(draws)
    print("excess MC", diff.mean(0), "+-", diff_err, "exact", excess)
    assert np.all(np.abs(diff.mean(0) - excess) < 4 * diff_err)
    # over the data: bound - NLL = KL(q(z_1) || N(0, I)) (+ the mean excess for the wrong one)
    nll_f, _, recon_f, _, _ = exact(x_fresh)
    a1, _, v1 = gaussian_terms(None, G1)
    prior_gap = dims * np_kl(a1 * MU, v1, 0, 1)  # KL(q(z_1) || N(0, I))
    mean_excess = float((0.5 * (G1 - G0) * sq**2 * aq**2 / vq**2 * wq).sum() * dims * shift**2)
    gaps = {}
    for name, expected_gap in [("optimal", prior_gap), ("wrong", prior_gap + mean_excess)]:
        diffusion_f, prior_f = fresh[name]
        gaps[name] = diffusion_f + prior_f + recon_f - nll_f
        gap_err = gaps[name].std() / math.sqrt(gaps[name].size)
        print(name, "mean bound - NLL (nats)", gaps[name].mean(), "+-", gap_err, "exact", expected_gap)
        assert abs(gaps[name].mean() - expected_gap) < 4 * gap_err
    # the same draws for both: the wrong denoiser's bound is higher by many error bars
    paired = gaps["wrong"] - gaps["optimal"]
    assert mean_excess > 0 and prior_gap > 0
    assert paired.mean() > 10 * paired.std() / math.sqrt(paired.size)


def test_discrete_loss_converges_to_continuous_at_rate_one_over_T():
    """Exact expectations: eps by Gauss-Hermite (the integrand is quadratic in eps for the
    linear optimal eps-hat), t over every step of L_T and by Gauss-Legendre for L_inf."""
    x = np.array([[-0.5], [0.1], [0.9]])
    hermite_nodes, hermite_weights = hermegauss(3)  # exact up to degree 5
    hermite_weights = hermite_weights / math.sqrt(2 * math.pi)

    @functools.partial(jax.jit, static_argnums=3)
    def losses(t, eps, xx, num_steps):
        gamma_fn = lambda s: vdm.linear_gamma(s, G0, G1)
        if num_steps is None:
            gamma, dgamma = vdm.gamma_and_derivative(gamma_fn, t)
            loss = vdm.continuous_diffusion_loss(eps, optimal_eps(MU)(vdm.diffuse(xx, gamma, eps), t, gamma), dgamma)
        else:
            t = vdm.discretise_times(t, num_steps)
            gamma, gamma_s = gamma_fn(t), gamma_fn(t - 1 / num_steps)
            eps_hat = optimal_eps(MU)(vdm.diffuse(xx, gamma, eps), t, gamma)
            loss = vdm.discrete_diffusion_loss(eps, eps_hat, gamma, gamma_s, num_steps)
        return loss

    def expectation(t, weights_t, num_steps):
        """sum_t w_t sum_j w_j loss(t, eps_j), per example [3], in nats."""
        nt, ne, nx = len(t), len(hermite_nodes), len(x)
        t = jnp.asarray(np.repeat(t, ne * nx))
        eps = jnp.asarray(np.tile(np.repeat(hermite_nodes, nx), nt)[:, None])
        xx = jnp.asarray(np.tile(x, (nt * ne, 1)))
        loss = np.asarray(losses(t, eps, xx, num_steps)).reshape(nt, ne, nx) * math.log(2)
        return np.einsum("t,e,tex->x", weights_t, hermite_weights, loss)

    with jax.enable_x64(True):
        nodes, weights = leggauss(300)
        l_inf = expectation((nodes + 1) / 2, weights / 2, None)
        a0, s0, v0 = gaussian_terms(x, G0)
        a1, s1, v1 = gaussian_terms(x, G1)
        expected_inf = (np_kl(a0 * x, s0**2, a0 * MU, v0) - np_kl(a1 * x, s1**2, a1 * MU, v1)).sum(1)
        np.testing.assert_allclose(l_inf, expected_inf, rtol=1e-9)
        steps = [256, 512, 1024, 2048, 4096]
        gaps = []
        for num_steps in steps:
            centres = (np.arange(1, num_steps + 1) - 0.5) / num_steps  # discretised to i/T
            gaps.append(expectation(centres, np.full(num_steps, 1 / num_steps), num_steps) - l_inf)
    gaps = np.array(gaps)  # [len(steps), 3]
    slopes = np.polyfit(np.log(steps), np.log(gaps), 1)[0]
    print("L_inf (nats)", l_inf, "\nT (L_T - L_inf)", gaps * np.array(steps)[:, None], "\nslopes", slopes)
    assert np.all(gaps > 0) and np.all(np.diff(gaps, axis=0) < 0)
    np.testing.assert_allclose(slopes, -1.0, atol=0.02)


def test_antithetic_times_same_mean_lower_variance():
    """The batch mean of f(t) = (1/2) gamma' E||eps - eps_hat*||^2 (the Gaussian case's L_inf
    integrand, one dimension at x = 0.9) over B times, repeated R times."""
    def f(t):
        alpha, sigma, v = gaussian_terms(None, vdm.linear_gamma(t, G0, G1))
        return 0.5 * (G1 - G0) * ((1 - sigma**2 / v) ** 2 + sigma**2 * alpha**2 * (0.9 - MU) ** 2 / v**2)

    nodes, weights = leggauss(400)
    exact = float((f((nodes + 1) / 2) * weights / 2).sum())
    batch, repeats = 64, 4000
    keys = jax.random.split(jax.random.PRNGKey(3), repeats)
    with jax.enable_x64(True):
        draws = {a: np.asarray(jax.jit(jax.vmap(lambda k, a=a: vdm.sample_times(k, batch, antithetic=a)))(keys))
                 for a in (True, False)}
    assert all(d.min() >= 0 and d.max() < 1 for d in draws.values())
    means = {a: f(d).mean(1) for a, d in draws.items()}
    variance = {a: m.var(ddof=1) for a, m in means.items()}
    f_var = float((f((nodes + 1) / 2) ** 2 * weights / 2).sum()) - exact**2
    print("exact", exact, "means", {a: m.mean() for a, m in means.items()}, "variances", variance,
          "Var f / B", f_var / batch)
    for a, m in means.items():
        assert abs(m.mean() - exact) < 4 * math.sqrt(variance[a] / repeats)
    np.testing.assert_allclose(variance[False], f_var / batch, rtol=0.15)
    assert variance[True] < 0.05 * variance[False]
    # every antithetic batch is an evenly spaced grid of step 1/B
    np.testing.assert_allclose(np.diff(np.sort(draws[True], axis=1), axis=1), 1 / batch, atol=1e-12)


# ----------------------------------------------------------------------------- schedules


def random_params(params, key, scale=2.0):
    """Every leaf replaced by scale * N(0, 1) (sharp sigmoids, steep and flat stretches)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [scale * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


@pytest.mark.parametrize("learn_endpoints", [False, True])
@pytest.mark.slow
def test_monotone_schedule_is_increasing_with_exact_ends(learn_endpoints):
    schedule = MonotoneSchedule(hidden=1024, learn_endpoints=learn_endpoints)
    t = jnp.linspace(0.0, 1.0, 10001)
    params = schedule.init(jax.random.PRNGKey(0), t[:2])
    # The exact ends rest on XLA rounding the rows for t = 0 and 1 as it rounds g(0) and g(1); at
    # -O0 (the tests' FAST_COMPILE_FLAGS) its dot rounds rows by position, so compile as users do.
    slope_fn = jax.jit(lambda p, t: vdm.gamma_and_derivative(lambda s: schedule.apply(p, s), t))

    def with_slope(p, t):
        return slope_fn.lower(p, t).compile(compiler_options=DEFAULT_OPTIMISATION)(p, t)

    grad = jax.jit(jax.vmap(jax.grad(lambda s, p: schedule.apply(p, s)), in_axes=(0, None)))
    apply = jax.jit(schedule.apply)
    shape_fn = jax.jit(lambda p, t: schedule.apply(p, t, method=MonotoneSchedule.shape))

    def shape_of(p, t):
        return shape_fn.lower(p, t).compile(compiler_options=DEFAULT_OPTIMISATION)(p, t)

    for seed in range(3):
        p = params if seed == 0 else random_params(params, jax.random.PRNGKey(seed))
        if learn_endpoints and seed:
            p["params"]["gamma_0"], p["params"]["gamma_1"] = jnp.float32(-10.0 - seed), jnp.float32(3.0 + seed)
        gamma, dgamma = (np.asarray(a) for a in with_slope(p, t))
        ends = (p["params"]["gamma_0"], p["params"]["gamma_1"]) if learn_endpoints else (np.float32(G0), np.float32(G1))
        assert gamma[0] == ends[0] and gamma[-1] == ends[1]
        assert jnp.all(dgamma > 0), float(dgamma.min())
        # the jvp against reverse mode at a few points
        np.testing.assert_allclose(grad(t[::1000], p), dgamma[::1000], rtol=1e-4)
        assert np.all(np.diff(gamma) >= 0)
        with jax.enable_x64(True):
            p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), p)
            t64 = jnp.linspace(0.0, 1.0, 10001, dtype=jnp.float64)
            gamma64, dgamma64 = (np.asarray(a) for a in with_slope(p64, t64))
            assert np.all(np.diff(gamma64) > 0)
            h = 1e-6
            inner = t64[1:-1:500]
            central = (np.asarray(apply(p64, inner + h)) - np.asarray(apply(p64, inner - h))) / (2 * h)
            np.testing.assert_allclose(central, dgamma64[1:-1:500], rtol=1e-6)
        # the shape is s(t) in [0, 1], exact at the ends
        shape = np.asarray(shape_of(p, t))
        assert shape[0] == 0.0 and shape[-1] == 1.0 and np.all(np.diff(shape) >= 0)


@pytest.mark.parametrize("learn_endpoints", [False, True])
@pytest.mark.slow
def test_monotone_schedule_ends_stay_exact_after_training(learn_endpoints):
    """Five Adam steps pulling gamma towards a curved target (and the ends towards other values):
    the interior moves, the ends stay exactly at gamma_0, gamma_1 (fixed or the learned values)."""
    schedule = MonotoneSchedule(hidden=1024, learn_endpoints=learn_endpoints)
    t = jnp.concatenate([jnp.array([0.0, 1.0]), jax.random.uniform(jax.random.PRNGKey(1), (254,))])
    target = -12.0 + 15.0 * t**2
    params = schedule.init(jax.random.PRNGKey(0), t)
    optimizer = optax.adam(0.1)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((schedule.apply(p, t) - target) ** 2))(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    before = schedule.apply(params, t)
    losses = []
    for _ in range(5):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    after = schedule.apply(params, t)
    assert losses[-1] < losses[0]
    # the interior moved far beyond rounding (float32's spacing near |gamma| = 16 is 2e-6)
    assert float(jnp.max(jnp.abs(after[2:] - before[2:]))) > 0.01
    if learn_endpoints:
        ends = params["params"]["gamma_0"], params["params"]["gamma_1"]
        assert ends[0] != np.float32(G0) and ends[1] != np.float32(G1)  # the ends were trained
    else:
        ends = np.float32(G0), np.float32(G1)
    assert after[0] == ends[0] and after[1] == ends[1]
    assert jnp.all(vdm.gamma_and_derivative(lambda s: schedule.apply(params, s), jnp.linspace(0, 1, 1001))[1] > 0)


def test_linear_schedules():
    t = jnp.linspace(0.0, 1.0, 11)
    gamma, dgamma = vdm.gamma_and_derivative(lambda s: vdm.linear_gamma(s, G0, G1), t)
    assert gamma[0] == np.float32(G0) and gamma[-1] == np.float32(G1)
    np.testing.assert_allclose(dgamma, G1 - G0, rtol=1e-6)
    schedule = LinearSchedule(gamma_0=-10.0, gamma_1=4.0)
    params = schedule.init(jax.random.PRNGKey(0), t)
    params = {"params": {"gamma_0": jnp.float32(-9.5), "gamma_1": jnp.float32(6.25)}}
    gamma = schedule.apply(params, t)
    assert gamma[0] == -9.5 and gamma[-1] == 6.25
    grads = jax.grad(lambda p: schedule.apply(p, jnp.array(0.25)))(params)["params"]
    np.testing.assert_allclose([grads["gamma_0"], grads["gamma_1"]], [0.75, 0.25])
    # rescale_to_endpoints is exact at the ends for any increasing g
    g = jnp.array([0.3, 1.7, 2.9])
    out = vdm.rescale_to_endpoints(g, g[0], g[2], -13.3, 5.0)
    assert out[0] == np.float32(-13.3) and out[2] == np.float32(5.0)


@pytest.mark.slow
def test_variance_gradient():
    """Shape parameters get d mean(L^2), the denoiser and the learned ends d mean(L)."""
    schedule = MonotoneSchedule(hidden=8, learn_endpoints=True)
    rng = np.random.default_rng(4)
    batch, dims = 16, 4
    with jax.enable_x64(True):
        x = jnp.asarray(rng.integers(0, 256, (batch, dims)) / 127.5 - 1)
        eps = jnp.asarray(rng.normal(size=(batch, dims)))
        t = jnp.asarray(rng.uniform(size=batch))
        assert t.dtype == jnp.float64
        sched = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                       random_params(schedule.init(jax.random.PRNGKey(0), t), jax.random.PRNGKey(5), 1.0))
        sched["params"]["gamma_0"], sched["params"]["gamma_1"] = jnp.float64(-11.0), jnp.float64(4.0)
        theta = {"a": jnp.asarray(rng.normal(size=dims)), "b": jnp.asarray(rng.normal(size=dims))}
        ends_of = lambda s: {k: s["params"][k] for k in ("gamma_0", "gamma_1")}
        net_of = lambda s: {"params": {"network": s["params"]["network"]}}

        def loss_fn(values, args):
            s, ds = values
            theta, ends = args
            gamma = vdm.linear_gamma(s, ends["gamma_0"], ends["gamma_1"])
            dgamma = (ends["gamma_1"] - ends["gamma_0"]) * ds
            z = vdm.diffuse(x, gamma, eps)
            eps_hat = theta["a"] * jnp.tanh(z) + theta["b"] * z * gamma[:, None] / 10
            return vdm.continuous_diffusion_loss(eps, eps_hat, dgamma)

        def shape_values(net, ends):
            p = {"params": {**net["params"], **ends}}
            return jax.jvp(lambda s: schedule.apply(p, s, method=MonotoneSchedule.shape), (t,), (jnp.ones_like(t),))

        def objective(net, theta, ends):
            f = vdm.with_variance_gradient(loss_fn)
            return jnp.mean(f(shape_values(net, ends), (theta, ends)))

        net, ends = net_of(sched), ends_of(sched)
        value, grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))(net, theta, ends)
        plain = lambda net, theta, ends: loss_fn(shape_values(net, ends), (theta, ends))

        @jax.jit
        def expected(net, theta, ends):
            mean = jnp.mean(plain(net, theta, ends))
            want_net = jax.grad(lambda n: jnp.mean(plain(n, theta, ends) ** 2))(net)
            want_theta, want_ends = jax.grad(lambda th, e: jnp.mean(plain(net, th, e)), argnums=(0, 1))(theta, ends)
            ordinary = jax.grad(lambda n: jnp.mean(plain(n, theta, ends)))(net)
            return mean, want_net, want_theta, want_ends, ordinary

        mean, want_net, want_theta, want_ends, ordinary = expected(net, theta, ends)
        np.testing.assert_allclose(value, mean, rtol=1e-12)
        for got, want in [(grads[0], want_net), (grads[1], want_theta), (grads[2], want_ends)]:
            for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
        # and the shape's gradient is not simply that of the mean loss
        assert not np.allclose(ordinary["params"]["network"]["l1"]["kernel"], want_net["params"]["network"]["l1"]["kernel"])


# ----------------------------------------------------------------------------- features


def test_fourier_features():
    zn = np.random.default_rng(6).uniform(-1, 1, (2, 3, 3, 4))
    with jax.enable_x64(True):
        z = jnp.asarray(zn)
        out = vdm.fourier_features(z, 6, 8)
        only = vdm.fourier_features(z, 7, 7, include_input=False)
    assert out.shape == (2, 3, 3, 4 * 7)
    expected = np.concatenate([zn] + [np.sin(2.0**n * np.pi * zn) for n in (6, 7, 8)]
                              + [np.cos(2.0**n * np.pi * zn) for n in (6, 7, 8)], axis=-1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(only, np.concatenate([np.sin(128 * np.pi * zn), np.cos(128 * np.pi * zn)], -1),
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        vdm.fourier_features(z, 8, 7)
