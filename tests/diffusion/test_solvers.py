"""The deterministic solvers of ``diffusion.solvers``: order of convergence against the closed-form
probability-flow ODE of Gaussian data, trajectories against float64 NumPy re-derivations of the
papers' algorithms, DDIM against ``samplers.sample``, and compilation once per grid length."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import analytic, parameterization, processes, samplers, schedules, solvers, time_grids
from diffjax.diffusion.parameterization import DiffusionSpec
from tests.support.mixtures import mixture_posterior_mean

ORDERS = {"euler": 1, "ddim": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3}


@functools.partial(jax.jit, static_argnames=("name", "denoise_x0", "denoise_to_zero", "return_trajectory"))
def run(name, process, denoise_x0, x_T, grid, denoise_to_zero=False, return_trajectory=False):
    return solvers.solve(
        solvers.SOLVERS[name].step, process, denoise_x0, x_T, grid,
        denoise_to_zero=denoise_to_zero, return_trajectory=return_trajectory,
    )


# ------------------------------------------------------- order against a closed form
#
# Data N(mu, s^2 I): D(x, t) = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x - alpha mu), and the
# probability-flow ODE maps x_T to x_t = alpha_t mu + sqrt(alpha_t^2 s^2 + sigma_t^2) z with
# z = (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2) (the affine map that keeps the
# marginal's standardised coordinate). Errors in float64, so rounding is far below them.

MU, S = 0.3, 0.5


class GaussianX0:
    """The exact data prediction of N(MU, S^2 I) under ``process`` (hashable: a static argument)."""

    def __init__(self, process):
        self.process = process

    def __call__(self, x, t):
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        return MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * MU)


def closed_form_error(name, process, grid_fn, num_steps):
    grid = grid_fn(process, num_steps).astype(jnp.float64)
    t_T, t_0 = grid[0], grid[-1]
    scale_T = jnp.sqrt(process.alpha(t_T) ** 2 * S**2 + process.sigma(t_T) ** 2)
    z = jnp.linspace(-2.0, 2.0, 5, dtype=jnp.float64)[:, None]
    x_T = process.alpha(t_T) * MU + scale_T * z
    exact = process.alpha(t_0) * MU + jnp.sqrt(process.alpha(t_0) ** 2 * S**2 + process.sigma(t_0) ** 2) * z
    return float(jnp.max(jnp.abs(run(name, process, GaussianX0(process), x_T, grid) - exact)))


ASYMPTOTIC = (16, 32, 64)
CASES = [
    ("euler", "vp_linear", "uniform_log_snr"),
    ("ddim", "vp_linear", "uniform_log_snr"),
    ("heun", "vp_linear", "uniform_log_snr"),
    ("dpmpp_2m", "vp_linear", "uniform_log_snr"),
    ("ddim", "edm", "karras"),
    ("heun", "edm", "karras"),
    ("dpmpp_2m", "edm", "karras"),
    ("dpmpp_3m", "edm", "karras"),
    ("dpmpp_3m", "vp_linear", "karras"),
]
# DPM-Solver++(3M) reaches its asymptotic range later (its error changes sign near K = 16):
# measured successive slopes K = 8..256, EDM/Karras 5.19 0.87 3.10 3.05 3.02, VP-linear/Karras
# -5.18 4.84 2.72 2.90 2.89. On VP-linear uniform in log-SNR it converges faster than its
# order (4.46 4.27 4.26 5.26 on equal steps in lambda, down to float64 noise at K = 256), so
# the slope is asserted on Karras grids, whose steps in lambda are unequal. With the second-
# derivative term at half its exact weight (phi_2/h - 1/2) the same runs give 1.02 1.71 1.88
# (EDM) and 1.91 1.77 1.88 (VP-linear) at K = 32..256: second order, which this test catches.
RANGES = {"dpmpp_3m": (32, 64, 128)}


@pytest.mark.parametrize("name, process_name, grid_name", CASES)
def test_order_of_convergence_on_gaussian_data(name, process_name, grid_name):
    """The fitted log-log slope of the error against the step count over K = 16, 32, 64 (NFE
    = K, 2K for Heun) is the solver's order within 0.3. Measured (VP-linear, uniform in
    log-SNR, K = 4..64, successive slopes): Euler 0.89 1.28 1.17 1.10, DDIM 0.88 0.90 0.95
    0.97, Heun 2.29 2.26 2.12 2.06, DPM-Solver++(2M) 8.45 -4.24 1.77 1.96 (its error changes
    sign near K = 8, so the pre-asymptotic slopes say nothing). The tolerance: the
    asymptotic slopes approach the order from 0.1 to 0.2 away at K = 16..64 (the next term of
    the error expansion), and a wrong order (a first-order 2M, a Heun without its
    correction) is off by a whole 1. DDIM is not exact here: D is affine in x but not constant
    along the path, and the first-order update freezes it over a step (errors 0.48 .. 0.037).
    Euler in t is not tested on EDM, whose t is log sigma: it is first order only from K ~ 64.
    """
    step_counts = RANGES.get(name, ASYMPTOTIC)  # each K compiles anew: only the fitted ones run
    with jax.enable_x64(True):
        process = processes.named_process(process_name)
        errors = np.array([
            closed_form_error(name, process, time_grids.GRIDS[grid_name], k) for k in step_counts
        ])
    assert np.all(np.isfinite(errors)) and errors[-1] < errors[0]
    k = np.array(step_counts, np.float64)
    asymptotic = errors
    slope = -np.polyfit(np.log(k), np.log(asymptotic), 1)[0]
    assert abs(slope - ORDERS[name]) < 0.3, (slope, errors)


# -------------------------------------------- float64 NumPy re-derivations of the papers
#
# A 2-component mixture sum_k w_k N(m_k, s_k^2 I) in 2-D; its exact data prediction is
# D(x, t) = sum_k r_k(x) [m_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x - alpha m_k)], r_k
# the posterior responsibilities under x ~ N(alpha m_k, (alpha^2 s_k^2 + sigma^2) I). Written
# once over an array module (NumPy float64 for the reference, jnp float32 for the solvers).

MEANS = np.array([[-0.7, 0.2], [0.5, -0.4]])
STDS = np.array([0.2, 0.35])
WEIGHTS = np.array([0.6, 0.4])
BETA_MIN, BETA_MAX = 0.1, 20.0
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def mixture_x0(xp, x, alpha, sigma):
    """E[x_0 | x_t = x] of this file's 2-D mixture (``tests.support.mixtures``)."""
    return mixture_posterior_mean(xp, x, alpha, sigma, MEANS, STDS**2, WEIGHTS)


class MixtureX0:
    def __init__(self, process):
        self.process = process

    def __call__(self, x, t):
        return mixture_x0(jnp, x, self.process.alpha(t), self.process.sigma(t))


# score_sde's VP SDE and EDM's VE process, re-derived: (alpha, sigma, (log alpha)', (log sigma)').
def vp_numpy(t):
    beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
    alpha = np.exp(-0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN)
    sigma = np.sqrt(1.0 - alpha**2)
    return alpha, sigma, -0.5 * beta, 0.5 * beta * alpha**2 / sigma**2


def edm_numpy(t):
    sigma = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
    return 1.0, sigma, 0.0, np.log(SIGMA_MAX / SIGMA_MIN)


def quadratic_exponential_integral(lams, values, lam_from, lam_to, alpha_to):
    """alpha_to e^{-lam_to} int_{lam_from}^{lam_to} e^{lam} P(lam) dlam, P the polynomial through
    the points (lams[j], values[j]) in Lagrange form, by 8-point Gauss-Legendre (exact to
    float64 for a polynomial times a smooth exponential over one step)."""
    nodes, weights = np.polynomial.legendre.leggauss(8)
    lam = 0.5 * (lam_to - lam_from) * nodes + 0.5 * (lam_to + lam_from)
    total = 0.0
    for j, value in enumerate(values):
        basis = np.prod([(lam - lams[m]) / (lams[j] - lams[m]) for m in range(len(lams)) if m != j], axis=0)
        total = total + value * np.sum(weights * np.exp(lam - lam_to) * basis)
    return alpha_to * 0.5 * (lam_to - lam_from) * total


def reference(name, coefficients, x_T, grid):
    """x before each step and at the end, float64, from the papers' formulas."""
    x, xs, previous, history = np.asarray(x_T, np.float64), [], None, []
    grid = np.asarray(grid, np.float64)
    for i in range(len(grid) - 1):
        xs.append(x)
        (a, s, dla, dls), (a2, s2, _, _) = coefficients(grid[i]), coefficients(grid[i + 1])
        d = mixture_x0(np, x, a, s)
        if name == "euler":  # dx/dt = alpha' D + sigma' (x - alpha D) / sigma
            x = x + (grid[i + 1] - grid[i]) * (a * dla * d + s * dls * (x - a * d) / s)
        elif name == "ddim":  # DDIM eq. 12, eta = 0: x' = alpha' x0 + sigma' eps
            x = a2 * d + s2 * (x - a * d) / s
        elif name == "heun":  # EDM Algorithm 1 on x / alpha with sigma / alpha
            y, sig, sig2 = x / a, s / a, s2 / a2
            slope = (y - d) / sig
            y2 = y + (sig2 - sig) * slope
            slope2 = (y2 - mixture_x0(np, a2 * y2, a2, s2)) / sig2
            x = a2 * (y + (sig2 - sig) * (slope + slope2) / 2)
        elif name == "dpmpp_3m":
            # x' = (sigma'/sigma) x + sigma' int e^lam x0(lam) dlam (Lu et al. 2022b, eq. 4), x0
            # the polynomial through the last `order` points, order min(3, i + 1, K - i); the
            # order-2 steps are DPM-Solver++(2M)'s approximation (Algorithm 2).
            lam, lam2 = np.log(a / s), np.log(a2 / s2)
            history = [(lam, d), *history][:3]
            order = min(3, i + 1, len(grid) - 1 - i)
            if order == 3:
                lams = [p[0] for p in history]
                x = s2 / s * x + quadratic_exponential_integral(lams, [p[1] for p in history], lam, lam2, a2)
            elif order == 2:
                r = (history[0][0] - history[1][0]) / (lam2 - lam)
                x = s2 / s * x - a2 * (np.exp(-(lam2 - lam)) - 1) * ((1 + 1 / (2 * r)) * d - history[1][1] / (2 * r))
            else:
                x = s2 / s * x - a2 * (np.exp(-(lam2 - lam)) - 1) * d
        else:  # DPM-Solver++(2M), Algorithm 2, lambda = log(alpha / sigma), last step first order
            lam, lam2 = np.log(a / s), np.log(a2 / s2)
            h = lam2 - lam
            if previous is None or i == len(grid) - 2:
                dd = d
            else:
                r = previous[1] / h
                dd = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * previous[0]
            x = s2 / s * x - a2 * (np.exp(-h) - 1) * dd
            previous = (d, h)
    return np.stack(xs), x


@pytest.mark.parametrize("name", sorted(ORDERS))
@pytest.mark.parametrize("process_name, grid_name", [("vp_linear", "uniform_log_snr"), ("edm", "karras")])
def test_trajectory_matches_numpy_rederivation(name, process_name, grid_name):
    """float32 solver against float64 NumPy: relative to the state's scale, within 2e-5 per
    step (float32 epsilon 6e-8 times the growth of rounding through 10 steps of exp/log)."""
    process = processes.named_process(process_name)
    coefficients = vp_numpy if process_name == "vp_linear" else edm_numpy
    grid = time_grids.GRIDS[grid_name](process, 10)
    x_T = np.random.default_rng(0).standard_normal((16, 2)) * float(process.sigma(grid[0]))
    final, trajectory = run(name, process, MixtureX0(process), jnp.asarray(x_T, jnp.float32), grid, return_trajectory=True)
    expected_xs, expected_final = reference(name, coefficients, x_T, grid)
    for got, want in zip([*np.asarray(trajectory["x"]), np.asarray(final)], [*expected_xs, expected_final]):
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * scale)


# --------------------------------------------- DDIM against the discrete sampler


@pytest.mark.slow
def test_ddim_matches_discrete_sampler():
    """``samplers.sample(method="ddim", eta=0, clip_denoised=False)`` on the chain respaced to
    the K + 1 steps of ``discrete_grid(T, K)`` equals ``ddim`` on ``discrete_process(schedule)``
    over that grid with ``denoise_to_zero``: the sampler's steps between kept steps are the
    solver's K steps, and its last step (from step 0, alpha_bar_prev = 1) returns x0-hat
    there, which is the solver's final denoising. The respaced chain keeps alpha_bar on its
    steps and the grid sits on knots, so the networks see the same integer steps.
    Without ``denoise_to_zero`` the solver stops at step 0 (sigma > 0): the sampler's state
    before its last step."""
    T, K = 1000, 12
    schedule = schedules.named_schedule("linear", T)
    denoise = analytic.gaussian_mixture_denoiser(schedule, MEANS, STDS, WEIGHTS)
    spec = DiffusionSpec("eps", "fixed_small")
    grid = time_grids.discrete_grid(T, K, rule="even")
    respaced, _ = schedules.respace(schedule, schedules.space_timesteps(T, K + 1))
    x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    expected, trajectory = samplers.sample(
        denoise, None, respaced, spec, jax.random.PRNGKey(1), x_T.shape, method="ddim", eta=0.0,
        clip_denoised=False, return_trajectory=True, x_T=x_T,
    )
    process = processes.discrete_process(schedule)
    denoise_x0 = solvers.x0_predictor(denoise, None, spec, process, round_steps=True)
    got = run("ddim", process, denoise_x0, x_T, grid, denoise_to_zero=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # measured 5e-7 on |x| < 1
    at_step_0 = run("ddim", process, denoise_x0, x_T, grid)
    np.testing.assert_allclose(at_step_0, trajectory["x"][-1], atol=1e-5)


# ----------------------------------------------------------------- the adapter


@pytest.mark.slow
def test_x0_predictor_reads_every_mean_type():
    """An eps, an x_0, a v and a learned-variance eps denoiser giving the same prediction have
    the same data prediction (the discrete conversions against the continuous ones), at a
    knot with integer steps and with fractional ``model_timestep``."""
    T = 1000
    schedule = schedules.named_schedule("cosine", T)
    eps_denoise = analytic.gaussian_mixture_denoiser(schedule, MEANS, STDS, WEIGHTS)
    process = processes.discrete_process(schedule)
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 2))
    n = 300
    t = jnp.float32((n + 1) / T)

    def as_type(mean_type):
        def denoise(params, x_t, step, cond):
            step = jnp.round(step).astype(jnp.int32)
            eps = eps_denoise(params, x_t, step, cond)
            if mean_type == "x0":
                return parameterization.predict_x0_from_eps(schedule, x_t, step, eps)
            if mean_type == "v":
                x0 = parameterization.predict_x0_from_eps(schedule, x_t, step, eps)
                return parameterization.predict_v(schedule, x0, step, eps)
            if mean_type == "learned":
                return jnp.concatenate([eps, jnp.full_like(eps, 7.0)], axis=-1)
            return eps
        return denoise

    specs = {
        "eps": DiffusionSpec("eps", "fixed_small"), "x0": DiffusionSpec("x0", "fixed_small"),
        "v": DiffusionSpec("v", "fixed_small"), "learned": DiffusionSpec("eps", "learned_range"),
    }
    steps = jnp.full((8,), n, jnp.int32)
    want = parameterization.predict_x0_from_eps(schedule, x, steps, eps_denoise(None, x, steps, None))
    for mean_type, spec in specs.items():
        for round_steps in (False, True):
            denoise_x0 = solvers.x0_predictor(as_type(mean_type), None, spec, process, round_steps=round_steps)
            np.testing.assert_allclose(jax.jit(denoise_x0)(x, t), want, rtol=1e-4, atol=1e-4, err_msg=mean_type)


# ------------------------------------------------------------------ compilation


@pytest.mark.parametrize("name", [*sorted(ORDERS), "unipc_3"])  # unipc_2: the same code, a smaller static order
def test_compiled_once_per_grid_length(name):
    """A new grid of the same length (other values, other ends) reuses the compiled solver; a
    new length traces again (the scan's length is static). Tracing the whole solve traces the
    denoiser nfe_per_step times, in the scan's body (Heun: the Euler step and the correction)."""
    traces, calls = [], []
    process = processes.VPLinear()
    mixture = MixtureX0(process)

    def denoise_x0(x, t):
        calls.append(None)
        return mixture(x, t)

    @jax.jit
    def sample(x_T, grid):
        traces.append(grid.shape)
        return solvers.solve(solvers.SOLVERS[name].step, process, denoise_x0, x_T, grid)

    x_T = jnp.ones((4, 2))
    first = sample(x_T, time_grids.uniform_log_snr(process, 6))
    second = sample(x_T, time_grids.karras(process, 6, t_max=0.9, t_min=2e-3))
    assert len(traces) == 1 and len(calls) == solvers.SOLVERS[name].nfe_per_step and not np.allclose(first, second)
    assert np.all(np.isfinite(first)) and np.all(np.isfinite(second))
    sample(x_T, time_grids.uniform_t(process, 7))
    assert len(traces) == 2


def test_heun_last_step_to_zero_noise_is_euler():
    """EDM's Algorithm 1: a step that lands on sigma = 0 (VP-linear at t = 0) is an Euler step,
    which lands on D(x, t_cur); so it equals stopping one time earlier and denoising."""
    process = processes.VPLinear()
    grid = jnp.append(time_grids.karras(process, 5), 0.0)
    x_T = jax.random.normal(jax.random.PRNGKey(3), (8, 2))
    denoise_x0 = MixtureX0(process)
    to_zero = run("heun", process, denoise_x0, x_T, grid)
    denoised = run("heun", process, denoise_x0, x_T, grid[:-1], denoise_to_zero=True)
    assert np.all(np.isfinite(to_zero))
    np.testing.assert_allclose(to_zero, denoised, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ORDERS))
@pytest.mark.slow
def test_samples_a_diffjax_network_with_learned_variance(name):
    """A class-conditional MLP of ``diffjax.models`` with a learned variance (2C outputs), as
    ``make_denoise_fn`` wraps it, is sampled by every solver through ``x0_predictor`` on the
    continuous view of a respaced cosine chain: on a smooth grid (fractional steps), and on a
    discrete grid, where fractional and rounded steps are the same trained integers."""
    from diffjax import models
    from diffjax.models.denoiser import init_params, make_denoise_fn

    T = 1000
    schedule, _ = schedules.respace(schedules.named_schedule("cosine", T), "50")
    process = processes.discrete_process(schedule)
    net = models.MLPDenoiser(hidden=16, num_blocks=1, out_dim=4, num_classes=2)
    params = jax.jit(lambda key: init_params(net, key, (2,)))(jax.random.PRNGKey(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    denoise = make_denoise_fn(net, num_timesteps=T)
    spec = DiffusionSpec("eps", "learned_range")
    labels = jnp.array([0, 1, 0, 1])
    x_T = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    fractional = solvers.x0_predictor(denoise, params, spec, process, labels)
    rounded = solvers.x0_predictor(denoise, params, spec, process, labels, round_steps=True)
    smooth = run(name, process, fractional, x_T, time_grids.uniform_log_snr(process, 6), denoise_to_zero=True)
    assert smooth.shape == x_T.shape and np.all(np.isfinite(smooth)), name
    if name != "dpmpp_2m":
        return
    on_knots = time_grids.discrete_grid(T, 6)
    np.testing.assert_allclose(
        run("dpmpp_2m", process, fractional, x_T, on_knots), run("dpmpp_2m", process, rounded, x_T, on_knots),
        rtol=1e-5, atol=1e-5,
    )


# ------------------------------------------------------------------ stochastic solvers
#
# With the exact denoiser of N(MU, S^2 I) and x_T drawn from the marginal at grid[0], a sampler
# that converges in distribution ends with the marginal at grid[-1]: mean MU, variance
# S^2 + sigma_min^2 (EDM: sigma_min = 0.002). The solvers' parameters are a traced pytree.

STOCHASTIC_CASES = {  # name: (parameters, K at which the moments are within 4 standard errors)
    "edm_stochastic": (dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0), 200),
    "euler_ancestral": (dict(eta=1.0), 500),
    "dpmpp_2m_sde": (dict(eta=1.0), 100),
}
NUM_SAMPLES, DIM = 10_000, 2


@functools.partial(jax.jit, static_argnames=("name", "denoise_x0"))
def run_stochastic(name, process, denoise_x0, x_T, grid, key, parameters):
    step = functools.partial(solvers.SOLVERS[name].step, **parameters)
    return solvers.solve(step, process, denoise_x0, x_T, grid, key=key)


def moment_errors(name, num_steps, parameters):
    process = processes.EDM()
    grid = time_grids.karras(process, num_steps)
    spread = np.sqrt(S**2 + float(process.sigma(grid[0])) ** 2)
    x_T = MU + spread * jax.random.normal(jax.random.PRNGKey(0), (NUM_SAMPLES, DIM))
    x = np.asarray(run_stochastic(name, process, GaussianX0(process), x_T, grid, jax.random.PRNGKey(1), parameters))
    return x.mean() - MU, x.var() - (S**2 + float(process.sigma(grid[-1])) ** 2)


@pytest.mark.parametrize("name", sorted(STOCHASTIC_CASES))
@pytest.mark.slow
def test_stochastic_solvers_reproduce_the_data_distribution(name):
    """EDM process, Karras grid, 20000 scalar samples: the mean and variance are within 4
    standard errors (S/sqrt(n) = 0.0035 and S^2 sqrt(2/n) = 0.0025) at K steps, and the
    variance error at K = 10 is larger. Measured variance errors (S^2 = 0.25) at K = 25, 50,
    100, 200: EDM Algorithm 2 (S_churn 40, S_tmin 0.05, S_tmax 50; NFE 2K) 0.036 0.017 0.010
    0.004; Euler ancestral (eta 1) -0.089 -0.050 -0.026 -0.011 (first order with a large
    constant); DPM-Solver++(2M) SDE 0.033 0.011 0.004 0.004. So at 20-50 NFE the bias is still
    4-20 standard errors: the asserted K are 200 (NFE 400), 500 and 100. Mean errors are all
    within 0.007 (sampling noise: the data are symmetric about MU, no bias to see)."""
    parameters, num_steps = STOCHASTIC_CASES[name]
    n = NUM_SAMPLES * DIM
    mean_error, variance_error = moment_errors(name, num_steps, parameters)
    assert abs(mean_error) < 4 * S / np.sqrt(n), mean_error
    assert abs(variance_error) < 4 * S**2 * np.sqrt(2.0 / n), variance_error
    _, coarse_variance_error = moment_errors(name, 10, parameters)
    assert abs(coarse_variance_error) > abs(variance_error), (coarse_variance_error, variance_error)


@pytest.mark.parametrize("name, deterministic, parameters", [
    ("edm_stochastic", "heun", dict(s_churn=0.0)),
    ("edm_stochastic", "heun", dict(s_churn=40.0, s_tmin=0.0, s_tmax=1e-3)),  # churn off outside [S_tmin, S_tmax]
    ("euler_ancestral", "ddim", dict(eta=0.0)),
    ("dpmpp_2m_sde", "dpmpp_2m", dict(eta=0.0)),
])
def test_stochastic_solvers_without_noise_are_their_deterministic_counterparts(name, deterministic, parameters):
    """S_churn = 0 (or sigma outside [S_tmin, S_tmax]) is EDM's Algorithm 1; eta = 0 is DDIM
    for Euler ancestral (the same update written in (x/alpha, sigma/alpha): equal to float32
    rounding) and DPM-Solver++(2M) for its SDE variant (the same operations: equal)."""
    process = processes.VPLinear()
    grid = time_grids.karras(process, 8)
    x_T = jax.random.normal(jax.random.PRNGKey(3), (16, 2))
    parameters = {k: jnp.float32(v) for k, v in parameters.items()}
    got = run_stochastic(name, process, MixtureX0(process), x_T, grid, jax.random.PRNGKey(4), parameters)
    want = run(deterministic, process, MixtureX0(process), x_T, grid)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(STOCHASTIC_CASES))
def test_stochastic_solvers_are_reproducible_from_a_key(name):
    """One key gives the same samples; another key other samples (each step folds its index
    into the key, so the steps' noises differ)."""
    process = processes.VPLinear()
    grid = time_grids.uniform_log_snr(process, 8)
    x_T = jax.random.normal(jax.random.PRNGKey(5), (16, 2))
    parameters = STOCHASTIC_CASES[name][0]
    draw = functools.partial(run_stochastic, name, process, MixtureX0(process), x_T, grid, parameters=parameters)
    first, again, other = draw(key=jax.random.PRNGKey(6)), draw(key=jax.random.PRNGKey(6)), draw(key=jax.random.PRNGKey(7))
    np.testing.assert_array_equal(first, again)
    assert np.all(np.isfinite(first)) and not np.allclose(first, other)


# ------------------------------------------------ clipping and dynamic thresholding


def test_clip_x0_clips_the_prediction_to_the_data_range():
    x0 = jnp.array([[-3.0, -1.0, -0.25], [0.5, 1.0, 7.0]])
    clipped = solvers.clip_x0(lambda x, t: x)(x0, jnp.float32(0.5))
    np.testing.assert_array_equal(clipped, [[-1.0, -1.0, -0.25], [0.5, 1.0, 1.0]])


def test_dynamic_threshold_on_known_arrays():
    """Per example s = max(quantile_p |x0|, 1): example 0 is 1..100 (the 0.9 quantile by
    linear interpolation is 90 + 0.1 (91 - 90) = 90.1), so it becomes min(x, 90.1)/90.1;
    example 1 lies within [-1, 1] (s = 1) and is unchanged; example 2 is -(1..100), the mirror
    of example 0 (the quantile is of |x0|)."""
    ramp = np.arange(1.0, 101.0)
    x0 = np.stack([ramp, np.linspace(-1.0, 1.0, 100), -ramp])
    got = np.asarray(jax.jit(solvers.dynamic_threshold(lambda x, t: x, percentile=0.9))(jnp.asarray(x0), 0.5))
    np.testing.assert_allclose(got[0], np.minimum(ramp, 90.1) / 90.1, rtol=1e-6)
    np.testing.assert_allclose(got[1], x0[1], rtol=1e-6)
    np.testing.assert_allclose(got[2], -got[0], rtol=1e-6)
    assert got[0, -1] == 1.0 and got[0, 89] < 1.0


@pytest.mark.slow
def test_thresholded_prediction_drives_a_solver():
    """A denoiser whose prediction saturates (4 x) gives samples in [-1, 1] with either option
    (the last step ends at D, so the sample is the thresholded prediction)."""
    process = processes.VPLinear()
    x_T = 3.0 * jax.random.normal(jax.random.PRNGKey(8), (32, 2))
    grid = time_grids.uniform_log_snr(process, 4)
    for wrap in (solvers.clip_x0, solvers.dynamic_threshold):
        denoise_x0 = wrap(lambda x, t: 4.0 * x)
        sample = solvers.solve(solvers.ddim_step, process, denoise_x0, x_T, grid, denoise_to_zero=True)
        assert np.all(np.abs(np.asarray(sample)) <= 1.0 + 1e-6)


# ------------------------------------------------------ classifier-free guidance

NULL_CLASS = 2
CLASS_MEANS = jnp.array([[0.6, -0.2], [-0.4, 0.5], [0.0, 0.0]])  # the last row: the null class


def linear_conditional_x0(params, x_t, t, cond):
    """A conditional x_0-predicting toy network, affine in x_t: (0.3 + 0.2 t) x + (1 - t/2) m_c."""
    t = t[:, None]
    return (0.3 + 0.2 * t) * x_t + (1.0 - 0.5 * t) * CLASS_MEANS[cond]


@functools.partial(jax.jit, static_argnames=("name",))
def sample_conditional(name, x_T, labels, guidance_weight, key):
    process = processes.VPLinear()
    denoise = linear_conditional_x0
    if guidance_weight is not None:
        denoise = samplers.classifier_free_guidance(denoise, guidance_weight, jnp.full_like(labels, NULL_CLASS))
    denoise_x0 = solvers.x0_predictor(denoise, None, DiffusionSpec("x0", "fixed_small"), process, labels)
    step = solvers.SOLVERS[name].step
    if name in STOCHASTIC_CASES:
        step = functools.partial(step, **STOCHASTIC_CASES[name][0])
    return solvers.solve(step, process, denoise_x0, x_T, time_grids.uniform_log_snr(process, 6), key=key)


# Not pc: its Langevin step size 2 a (snr ||z|| / ||score||)^2 depends on the norm of the
# (guided) score, so its step is not affine in D and guidance does not commute with it.
@pytest.mark.parametrize("name", sorted(set(solvers.SOLVERS) - {"pc"}))
def test_classifier_free_guidance_with_every_solver(name):
    """``samplers.classifier_free_guidance`` then ``x0_predictor``: at w = 0 the samples are the
    conditional model's; at w = 2 they are 3 cond - 2 uncond (the samples of the conditional
    and the null class), because with a denoiser affine in x every step, deterministic or
    stochastic (same key), is affine in (x, D, noise) and the guided D is that combination of
    the two. w is traced: one compilation for both weights."""
    x_T = jax.random.normal(jax.random.PRNGKey(9), (8, 2))
    labels = jnp.array([0, 1] * 4)
    key = jax.random.PRNGKey(10)
    conditional = sample_conditional(name, x_T, labels, None, key)
    unconditional = sample_conditional(name, x_T, jnp.full_like(labels, NULL_CLASS), None, key)
    np.testing.assert_allclose(sample_conditional(name, x_T, labels, jnp.float32(0.0), key), conditional, rtol=1e-5, atol=1e-6)
    guided = sample_conditional(name, x_T, labels, jnp.float32(2.0), key)
    np.testing.assert_allclose(guided, 3.0 * conditional - 2.0 * unconditional, rtol=1e-4, atol=1e-5)
    assert not np.allclose(guided, conditional, atol=1e-2)


def test_classifier_free_guidance_with_the_predictor_corrector():
    """pc with guidance: w = 0 gives the conditional samples; at w = 2 the samples' mean moves
    by the affine solvers' exact shift 2 mean(cond - uncond) up to the step-size effect
    (measured ratio of the projections 1.003). The exact per-sample identity of the test
    above does not hold for pc (its step size depends on the score's norm)."""
    x_T = jax.random.normal(jax.random.PRNGKey(9), (64, 2))
    labels = jnp.array([0, 1] * 32)
    key = jax.random.PRNGKey(10)
    conditional = sample_conditional("pc", x_T, labels, None, key)
    unconditional = sample_conditional("pc", x_T, jnp.full_like(labels, NULL_CLASS), None, key)
    np.testing.assert_allclose(sample_conditional("pc", x_T, labels, jnp.float32(0.0), key), conditional, rtol=1e-5, atol=1e-6)
    guided = sample_conditional("pc", x_T, labels, jnp.float32(2.0), key)
    assert np.all(np.isfinite(guided))
    shift = np.mean(guided - conditional, axis=0)
    affine_shift = 2.0 * np.mean(conditional - unconditional, axis=0)
    assert 0.9 < np.dot(shift, affine_shift) / np.dot(affine_shift, affine_shift) < 1.1


def test_stochastic_parameters_and_guidance_weight_do_not_recompile():
    """S_churn, S_tmin, S_tmax, S_noise, eta, the guidance weight and the key are traced: new
    values reuse the compiled sampler."""
    traces = []
    process = processes.VPLinear()
    grid = time_grids.karras(process, 5)
    x_T = jax.random.normal(jax.random.PRNGKey(11), (4, 2))
    labels = jnp.array([0, 1, 0, 1])

    @jax.jit
    def sample(key, edm_parameters, eta, guidance_weight):
        traces.append(None)
        guided = samplers.classifier_free_guidance(linear_conditional_x0, guidance_weight, jnp.full_like(labels, NULL_CLASS))
        denoise_x0 = solvers.x0_predictor(guided, None, DiffusionSpec("x0", "fixed_small"), process, labels)
        edm = functools.partial(solvers.edm_stochastic_step, **edm_parameters)
        ancestral = functools.partial(solvers.euler_ancestral_step, eta=eta)
        sde = functools.partial(solvers.dpmpp_2m_sde_step, eta=eta)
        return [solvers.solve(step, process, denoise_x0, x_T, grid, key=key) for step in (edm, ancestral, sde)]

    edm = dict(s_churn=10.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0)
    first = sample(jax.random.PRNGKey(0), edm, 1.0, 0.0)
    second = sample(jax.random.PRNGKey(1), {**edm, "s_churn": 30.0, "s_noise": 1.003}, 0.5, 3.0)
    assert len(traces) == 1
    assert all(not np.allclose(a, b) for a, b in zip(first, second))
