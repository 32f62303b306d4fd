"""``diffusion.ode_likelihood``: the probability-flow ODE's log-density against closed forms.

With the exact data prediction of Gaussian (mixture) data, the PF-ODE carries the data's noisy
marginals exactly, so the log-density it gives at t_min is the marginal's closed form,
N(alpha mu, alpha^2 s^2 + sigma^2) per component, up to the solver's error. The mixture tests
give the exact marginal at t_max as the prior, so what is compared is the solver alone; the
Gaussian test uses the default prior and adds its known pointwise error; ``prior_kl`` is checked
separately. Everything runs in float64, the ODE solves under ``jit``.

Tolerances are fixed before running: a global error within ten times the local tolerance,
10 (atol + rtol |delta log p|) (the controller keeps each step's error below atol + rtol |y|);
Monte-Carlo comparisons within 4 standard errors computed from the samples themselves.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp
from scipy.special import ndtr

from diffjax.diffusion import ode_likelihood, processes

TOL = 1e-8


# ---------------------------------------------------------------- exact Gaussian-mixture models


class MixtureModel:
    """Data x_0 ~ sum_k w_k N(m_k, s_k^2 I): its exact data prediction D(x, t) under ``process``
    and the closed-form log-density of its marginal at t (hashable by identity)."""

    def __init__(self, process, means, stds, weights, count_calls=None):
        self.process = process
        self.means = np.asarray(means, np.float64)  # [K, D]
        self.variances = np.square(np.asarray(stds, np.float64))  # [K]
        self.log_weights = np.log(np.asarray(weights, np.float64))  # [K]
        self.count_calls = count_calls

    def _components(self, x, t):
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        component_var = alpha**2 * self.variances + sigma**2  # [K]
        residual = x[:, None, :] - alpha * self.means[None]  # [B, K, D]
        dim = self.means.shape[1]
        log_density = (
            self.log_weights
            - 0.5 * jnp.sum(residual**2, axis=-1) / component_var
            - 0.5 * dim * jnp.log(2.0 * jnp.pi * component_var)
        )  # [B, K]
        return alpha, component_var, residual, log_density

    def __call__(self, x, t):
        if self.count_calls is not None:
            jax.debug.callback(self.count_calls)
        alpha, component_var, residual, log_density = self._components(x, t)
        responsibility = jax.nn.softmax(log_density, axis=1)
        given_k = self.means[None] + (alpha * self.variances / component_var)[None, :, None] * residual
        return jnp.sum(responsibility[:, :, None] * given_k, axis=1)

    def log_marginal(self, x, t):
        """log q_t(x) [B] of x [B, D]."""
        return logsumexp(self._components(x, t)[3], axis=1)


def solve(process, model, x, **options):
    """``log_likelihood`` under ``jit`` (as an evaluator runs it; an eager call is slower)."""
    return jax.jit(lambda data: ode_likelihood.log_likelihood(process, model, data, **options))(x)


def within_solver_tolerance(result, exact, rtol=TOL, atol=TOL):
    allowed = 10.0 * (atol + rtol * np.abs(np.asarray(result.delta_log_p)))
    error = np.abs(np.asarray(result.log_p) - np.asarray(exact))
    return bool(np.all(error <= allowed)), float(np.max(error / allowed))


# ------------------------------------------------------------------------------ (1) Gaussian


def gaussian_latent(process, x, mu=0.3, s=0.5):
    """The exact PF-ODE map of N(mu, s^2 I) data from t_min to t_max: the affine map that keeps the
    marginal's standardised coordinate."""
    alpha0, sigma0 = process.alpha(process.t_min), process.sigma(process.t_min)
    alpha1, sigma1 = process.alpha(process.t_max), process.sigma(process.t_max)
    z = (x - alpha0 * mu) / jnp.sqrt(alpha0**2 * s**2 + sigma0**2)
    return alpha1 * mu + jnp.sqrt(alpha1**2 * s**2 + sigma1**2) * z


@pytest.mark.parametrize("process_name", ["vp_linear", "edm"])
@pytest.mark.slow
def test_gaussian_log_density_equals_closed_form(process_name):
    """N(0.3, 0.25 I) in dimensions 1, 3 and 4 (2-D is the mixture test's: a Gaussian is its
    one-component case), exact trace, the default prior: the ODE's log p(x)
    is the marginal N(alpha mu, alpha^2 s^2 + sigma^2)'s at t_min plus the prior's known
    pointwise error log pi(x_T) - log q_T(x_T) at the exact latent x_T, to 10x the solver's
    tolerance, for points from the bulk to 3 standard deviations out; the latent is x_T to the
    same allowance, 10 (atol + rtol |x_T|); the NFE is 1 + 6 x steps and every call of D.
    Measured (max error / allowance of log p, then of x_T, d = 1, 3, 4): VP-linear 0.04 0.02,
    0.01 0.02, 0.08 0.02; EDM 0.01 0.03, 0.01 0.05, 0.02 0.05."""
    with jax.enable_x64(True):
        process = processes.named_process(process_name)
        rng = np.random.default_rng(1)
        for dim in (1, 3, 4):
            calls = []
            model = MixtureModel(process, np.full((1, dim), 0.3), [0.5], [1.0], count_calls=lambda: calls.append(1))
            x = jnp.asarray(0.3 + 0.5 * np.clip(rng.normal(size=(6, dim)), -3, 3))
            result = solve(process, model, x, divergence="exact", rtol=TOL, atol=TOL)
            latent = gaussian_latent(process, x)
            latent_ratio = float(np.max(np.abs(result.x_end - latent) / (10 * TOL * (1 + np.abs(latent)))))
            prior_error = ode_likelihood.gaussian_prior_log_prob(process, latent) - model.log_marginal(latent, process.t_max)
            ok, ratio = within_solver_tolerance(result, model.log_marginal(x, process.t_min) + prior_error)
            assert bool(result.successful) and ok and latent_ratio <= 1, (dim, ratio, latent_ratio)
            assert int(result.nfe) == len(calls) == 1 + 6 * int(result.num_steps)


def test_prior_kl():
    """``prior_kl`` is the mean of log q_T - log pi(x_T) (``gaussian_prior_log_prob``) over
    x_T ~ q_T (Monte Carlo, 4 standard errors), at t = 0.3 on VP-linear (alpha = 0.63, KL 0.0456
    nats; measured mean 0.0427, standard error 0.0041) where it is large; and the sizes the
    module docstring gives at t_max for data in [-1, 1]: below 2.2e-5 nats per dimension on
    VP-linear (2.16e-5 at m = 1, s = 0), below 1e-4 on EDM (7.8e-5)."""
    with jax.enable_x64(True):
        process = processes.VPLinear()
        alpha, sigma = process.alpha(0.3), process.sigma(0.3)
        std = jnp.sqrt(alpha**2 * 0.25 + sigma**2)
        x_T = alpha * 0.3 + std * jax.random.normal(jax.random.PRNGKey(0), (4096, 1))
        log_q = -0.5 * ((x_T[:, 0] - alpha * 0.3) / std) ** 2 - jnp.log(jnp.sqrt(2 * jnp.pi) * std)
        gap = np.asarray(log_q - ode_likelihood.gaussian_prior_log_prob(process, x_T, t_end=0.3))
        kl = float(ode_likelihood.prior_kl(process, 0.3, 0.25, t_end=0.3))
        assert kl > 0.04
        assert abs(gap.mean() - kl) < 4 * gap.std(ddof=1) / math.sqrt(gap.size), (gap.mean(), kl)
        worst = max(float(ode_likelihood.prior_kl(process, m, v)) for m in (-1.0, 0.0, 1.0) for v in (0.0, 1.0))
        assert worst < 2.2e-5
        assert float(ode_likelihood.prior_kl(processes.EDM(), 1.0, 0.0)) < 1e-4
        assert float(ode_likelihood.prior_variance(process)) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------ (2) Gaussian mixture

MEANS = np.array([[-0.7, 0.2], [0.5, -0.4], [0.1, 0.6]])
STDS = np.array([0.2, 0.35, 0.1])
WEIGHTS = np.array([0.5, 0.3, 0.2])


@pytest.mark.parametrize("process_name, solver", [("vp_linear", "tsit5"), ("edm", "dopri5")])
@pytest.mark.slow
def test_mixture_log_density_equals_marginal(process_name, solver):
    """A 2-D three-component mixture with its exact D and exact trace: the ODE's log-density at
    t_min is the mixture marginal's to 10x the tolerance, at points near each mean and between
    them (Tsit5 on VP-linear, Dopri5 on EDM; the NFE is 1 + 6 x steps, every call of D).
    Measured (max error / allowance, NFE): VP-linear 0.06, 397; EDM 0.27, 565."""
    with jax.enable_x64(True):
        process = processes.named_process(process_name)
        calls = []
        model = MixtureModel(process, MEANS, STDS, WEIGHTS, count_calls=lambda: calls.append(1))
        x = jnp.asarray([[-0.7, 0.2], [0.5, -0.4], [0.1, 0.6], [-0.1, -0.1], [0.3, 0.2], [-1.0, 0.9]])
        result = solve(
            process, model, x, divergence="exact", rtol=TOL, atol=TOL, solver=solver,
            prior=lambda z: model.log_marginal(z, process.t_max),
        )
        ok, ratio = within_solver_tolerance(result, model.log_marginal(x, process.t_min))
        assert bool(result.successful) and ok, ratio
        assert int(result.nfe) == len(calls) == 1 + 6 * int(result.num_steps)


# ------------------------------------------------------------------------------ (3) divergence


def nonlinear_map(x):
    """A per-example map R^5 -> R^5 with a dense, non-symmetric Jacobian."""
    w = jnp.asarray(np.random.default_rng(3).normal(size=(5, 5)), x.dtype)
    return jnp.tanh(x @ w) + 0.3 * x**2


def test_exact_divergence_is_the_jacobian_trace():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 5)))
        value, trace = jax.jit(ode_likelihood.exact_divergence, static_argnums=0)(nonlinear_map, x)
        jacobians = jax.jit(jax.vmap(jax.jacfwd(lambda v: nonlinear_map(v[None])[0])))(x)
        np.testing.assert_allclose(value, nonlinear_map(x), rtol=1e-14)
        np.testing.assert_allclose(trace, jnp.trace(jacobians, axis1=1, axis2=2), rtol=1e-12)
        # images: per-example trace over [B, H, W, C]
        images = jnp.asarray(np.random.default_rng(5).normal(size=(2, 2, 2, 3)))
        scale = jnp.arange(12.0).reshape(2, 2, 3)
        _, trace = jax.jit(lambda z: ode_likelihood.exact_divergence(lambda y: scale * y**2, z))(images)
        np.testing.assert_allclose(trace, jnp.sum(2.0 * scale * images, axis=(1, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """Over 4000 probes the mean of v^T J v is the exact trace within 4 standard errors (their
    sample standard deviation / sqrt(P)), for each of three examples; the estimates really vary
    (a probe of all ones would not)."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(6).normal(size=(3, 5)))
        _, exact = jax.jit(ode_likelihood.exact_divergence, static_argnums=0)(nonlinear_map, x)
        probes = ode_likelihood.draw_probes(jax.random.PRNGKey(7), probe, (4000, 3, 5), jnp.float64)
        _, estimates = jax.jit(ode_likelihood.hutchinson_estimates, static_argnums=0)(nonlinear_map, x, probes)
        mean, sd = np.mean(estimates, axis=0), np.std(estimates, axis=0, ddof=1)
        assert np.all(sd > 0.1), sd
        assert np.all(np.abs(mean - exact) < 4 * sd / math.sqrt(4000)), (mean, exact, sd)
        _, averaged = ode_likelihood.hutchinson_divergence(nonlinear_map, x, probes)
        np.testing.assert_allclose(averaged, mean, rtol=1e-12)


# ------------------------------------------------- (5) probes: unbiased in the ODE; NFE counted


@pytest.mark.slow
def test_log_density_is_unbiased_in_the_number_of_probes_and_nfe_is_counted():
    """64 copies of each of two points of the 2-D mixture, each copy with its own probes: the mean
    over the copies of the Hutchinson log p(x) is the exact log p(x) (the marginal's closed
    form; the solver's error, ~1e-6, is far below the standard errors) within 4 standard errors
    for 1 and 4 probes, and 4 probes divide the variance by 4 (the ratio within [0.14, 0.45], the 99.9%
    range of F(63, 63) times 1/4, for normal estimates; the Rademacher ones here are lighter-tailed,
    so the range is conservative). Measured: means - exact -0.062 +- 0.25 and 0.0000003 +- 0.28
    (1 probe), 0.015 +- 0.11 and 0.205 +- 0.14 (4 probes), variance ratios 0.21 and 0.25. The NFE is 1 + (6 for Tsit5, the 1-probe run; 3 for Bosh3,
    the 4-probe run) x steps and is every call of the denoiser."""
    calls = []
    with jax.enable_x64(True):
        process = processes.VPLinear()
        model = MixtureModel(process, MEANS, STDS, WEIGHTS)
        points = jnp.asarray([[-0.1, -0.1], [0.3, 0.2]])
        exact = np.asarray(model.log_marginal(points, process.t_min))
        x = jnp.repeat(points, 64, axis=0)
        variances = {}
        for num_probes in (1, 4):
            counting = MixtureModel(process, MEANS, STDS, WEIGHTS, count_calls=lambda: calls.append(1))
            calls.clear()
            solver, stages = ("tsit5", 6) if num_probes == 1 else ("bosh3", 3)
            result = solve(
                process, counting, x, key=jax.random.PRNGKey(num_probes), num_probes=num_probes,
                rtol=1e-6, atol=1e-6, prior=lambda z: model.log_marginal(z, process.t_max), solver=solver,
            )
            jax.block_until_ready(result)
            assert int(result.nfe) == len(calls) == 1 + stages * int(result.num_steps) > 0
            assert int(result.num_steps) == int(result.num_accepted_steps) + int(result.num_rejected_steps)
            log_p = np.asarray(result.log_p).reshape(2, 64)
            mean, sd = log_p.mean(axis=1), log_p.std(axis=1, ddof=1)
            assert np.all(sd > 0), sd
            assert np.all(np.abs(mean - exact) < 4 * sd / 8), (num_probes, mean, exact, sd)
            variances[num_probes] = sd**2
        ratio = variances[4] / variances[1]
        assert np.all((0.14 < ratio) & (ratio < 0.45)), ratio


# -------------------------------------------------------------------------- (4) 8-bit images

PIXELS = np.array([60, 61, 62, 128, 200])
PROBABILITIES = np.array([0.3, 0.1, 0.2, 0.25, 0.15])
CELL = 2.0 / 255.0


def pixel_model(process, pixel_std, pixels=PIXELS, probabilities=PROBABILITIES):
    """Two independent pixels, each a mixture of N(k/127.5 - 1, pixel_std^2) with weights P(k):
    an isotropic K^2-component mixture whose density factorises over the pixels."""
    values = pixels / 127.5 - 1.0
    means = np.stack(np.meshgrid(values, values, indexing="ij"), -1).reshape(-1, 2)
    weights = np.outer(probabilities, probabilities).reshape(-1)
    return MixtureModel(process, means, np.full(weights.size, pixel_std), weights)


def pixel_density(y, process, pixel_std, pixels=PIXELS, probabilities=PROBABILITIES):
    """One pixel's marginal density at t_min (NumPy, float64), y any shape."""
    alpha, sigma = float(process.alpha(process.t_min)), float(process.sigma(process.t_min))
    std = math.sqrt(alpha**2 * pixel_std**2 + sigma**2)
    centres = alpha * (pixels / 127.5 - 1.0)
    z = (np.asarray(y)[..., None] - centres) / std
    return np.sum(probabilities * np.exp(-0.5 * z**2), axis=-1) / (math.sqrt(2 * math.pi) * std)


def test_dequantised_bits_per_dim_bounds_the_discrete_nll():
    """8-bit pairs of pixels, each pixel iid from P (entropy H = 2.228 bits), under the pixel
    mixture model through EDM's ODE (with the exact prior: the default one's pointwise error,
    ~alpha_T m x_T / v, is 0.008 nats here, see ``ode_likelihood``). Per dimension, in bits, deterministic and exact:
    H <= CE (the cross-entropy of the discrete model the density induces on the 'centred'
    cells) <= the expected dequantised bound (by quadrature over u). The ODE's bits/dim of
    512 dequantised samples: finite, positive, equal per example to the closed-form density at
    the same dequantised points plus the offset log2(127.5), and their mean equal to the
    quadrature's bound within 4 standard errors (a wrong cell map or offset misses it).
    Measured: H 2.228, CE 2.689, bound 2.699; ODE mean 2.686 (standard error 0.012), min 2.13,
    per-example difference from the closed form 5e-8 bits, 631 NFE."""
    pixel_std = 0.5 * CELL
    with jax.enable_x64(True):
        process = processes.EDM()
        entropy = -float(np.sum(PROBABILITIES * np.log2(PROBABILITIES)))
        # CE of the induced discrete model: Q(k) = mass of the cell [k - 1/2, k + 1/2) 2/255 - 1
        alpha, sigma = float(process.alpha(process.t_min)), float(process.sigma(process.t_min))
        std = math.sqrt(alpha**2 * pixel_std**2 + sigma**2)
        centres = alpha * (PIXELS / 127.5 - 1.0)
        lower, upper = (PIXELS - 0.5) * CELL - 1.0, (PIXELS + 0.5) * CELL - 1.0
        cell_mass = np.array([
            np.sum(PROBABILITIES * (ndtr((hi - centres) / std) - ndtr((lo - centres) / std)))
            for lo, hi in zip(lower, upper)
        ])
        cross_entropy = -float(np.sum(PROBABILITIES * np.log2(cell_mass)))
        nodes, quad_weights = np.polynomial.legendre.leggauss(64)
        u = 0.5 * (nodes + 1.0)
        y = (PIXELS[:, None] + u[None] - 0.5) * CELL - 1.0  # [5, 64]
        per_pixel = -0.5 * np.sum(quad_weights * np.log2(pixel_density(y, process, pixel_std)), axis=1)
        bound = float(np.sum(PROBABILITIES * per_pixel)) + math.log2(127.5)
        assert entropy <= cross_entropy <= bound, (entropy, cross_entropy, bound)
        assert bound - entropy < 1.0

        images = np.random.default_rng(8).choice(PIXELS, p=PROBABILITIES, size=(512, 2)).astype(np.uint8)
        model = pixel_model(process, pixel_std)
        out = jax.jit(lambda data: ode_likelihood.bits_per_dim(
            process, model, data, jax.random.PRNGKey(9), dtype=jnp.float64, divergence="exact", rtol=TOL,
            atol=TOL, prior=lambda z: model.log_marginal(z, process.t_max),
        ))(jnp.asarray(images))
        bpd = np.asarray(out.bpd)
        assert np.all(np.isfinite(bpd)) and np.all(bpd > 0), bpd.min()
        assert float(out.offset) == pytest.approx(math.log2(127.5), abs=1e-12)
        cells = np.floor((np.asarray(out.x) + 1.0) / CELL + 0.5)
        assert np.array_equal(cells, images), "each dequantised value lies in its own pixel's cell"
        closed_form = -np.sum(np.log2(pixel_density(np.asarray(out.x), process, pixel_std)), axis=1) / 2 + math.log2(127.5)
        np.testing.assert_allclose(bpd, closed_form, rtol=0, atol=1e-6)
        standard_error = bpd.std(ddof=1) / math.sqrt(bpd.size)
        assert abs(bpd.mean() - bound) < 4 * standard_error, (bpd.mean(), bound, standard_error)
        assert bpd.mean() > entropy


def test_score_sde_dequantization_map():
    """score_sde's cells: y = 2 (k + u)/256 - 1, offset 7 bits; the 'centred' map's values lie in
    their own cells around k/127.5 - 1; both Jacobian terms are d log c."""
    images = jnp.asarray([[0, 255, 128]], jnp.uint8)
    with jax.enable_x64(True):
        y, log_jacobian = ode_likelihood.dequantize(images, jax.random.PRNGKey(0), dequantization="score_sde",
                                                    dtype=jnp.float64)
        k = np.asarray(images, np.float64)
        assert np.all((y >= k / 128 - 1) & (y < (k + 1) / 128 - 1))
        assert float(log_jacobian[0]) == pytest.approx(3 * math.log(1 / 128))
        y, log_jacobian = ode_likelihood.dequantize(images, jax.random.PRNGKey(0), dtype=jnp.float64)
        assert np.all(np.abs(y - (k / 127.5 - 1)) <= 1 / 255)
        assert float(log_jacobian[0]) == pytest.approx(3 * math.log(2 / 255))


def test_discrete_data_without_dequantisation_is_refused():
    """The score_sde #24 pitfall: data that is always pixel value 128 (entropy 0), a model
    N(0.0039, (0.1 cell)^2) per pixel, seen at EDM's t_min (std 0.26 cell). Its density at the
    lattice point itself gives -0.54 'bits/dim' (with the same offset): negative, not a bound on
    anything. Dequantised, the expected bits/dim (quadrature over the cell) is +0.26 >= 0.
    ``bits_per_dim`` takes only integer images and dequantises them; ``log_likelihood`` refuses
    integer images."""
    pixel_std, pixels, probabilities = 0.1 * CELL, np.array([128]), np.array([1.0])
    process = processes.EDM()
    images = np.full((1, 2), 128, np.uint8)
    with jax.enable_x64(True):
        density = lambda y: pixel_density(y, process, pixel_std, pixels, probabilities)
        lattice = images / 127.5 - 1.0
        on_lattice = -np.sum(np.log2(density(lattice))) / 2 + math.log2(127.5)
        nodes, quad_weights = np.polynomial.legendre.leggauss(64)
        y = (128 + 0.5 * (nodes + 1.0) - 0.5) * CELL - 1.0
        dequantised = -0.5 * np.sum(quad_weights * np.log2(density(y))) + math.log2(127.5)
        assert on_lattice < -0.5 and dequantised > 0.2, (on_lattice, dequantised)
        model = pixel_model(process, pixel_std, pixels, probabilities)
        with pytest.raises(TypeError, match="integer"):
            ode_likelihood.bits_per_dim(process, model, jnp.asarray(lattice), jax.random.PRNGKey(0))
        with pytest.raises(TypeError, match="dequantise"):
            ode_likelihood.log_likelihood(process, model, jnp.asarray(images), divergence="exact")


# ------------------------------------------------------------------------------ direction


def test_wrong_direction_is_refused():
    """The consistency_models #12 pitfall (a PF-ODE run from the noise end): the likelihood ODE
    only runs from t_start up to t_end, and both ends must lie in [t_min, t_max]."""
    process = processes.VPLinear()
    model = MixtureModel(process, np.zeros((1, 1)), [0.5], [1.0])
    x = jnp.zeros((2, 1))
    with pytest.raises(ValueError, match="t_start < t_end"):
        ode_likelihood.log_likelihood(process, model, x, divergence="exact", t_start=1.0, t_end=1e-3)
    with pytest.raises(ValueError, match="t_start < t_end"):
        ode_likelihood.log_likelihood(process, model, x, divergence="exact", t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match="must lie in"):
        ode_likelihood.log_likelihood(process, model, x, divergence="exact", t_start=0.0)
    with pytest.raises(ValueError, match="needs a key"):
        ode_likelihood.log_likelihood(process, model, x)
