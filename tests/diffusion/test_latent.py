"""DDIM's latent space (``diffusion.latent``): encoding against the closed-form probability-flow
map of Gaussian data, encode-then-decode round trips on a Gaussian mixture, slerp's geometry,
and a float64 NumPy re-derivation of DDIM inversion (DDIM eq. 13 run forward in time)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import analytic, latent, processes, schedules, solvers, time_grids
from diffjax.diffusion.parameterization import DiffusionSpec
from tests.diffusion.test_solvers import MU, GaussianX0, S


@functools.partial(jax.jit, static_argnames=("name", "denoise_x0"))
def encode(name, process, denoise_x0, x_0, grid):
    return latent.encode(solvers.SOLVERS[name].step, process, denoise_x0, x_0, grid)


@functools.partial(jax.jit, static_argnames=("name", "denoise_x0"))
def round_trip(name, process, denoise_x0, x_0, grid):
    x_T = latent.encode(solvers.SOLVERS[name].step, process, denoise_x0, x_0, grid)
    return x_T, latent.decode(solvers.SOLVERS[name].step, process, denoise_x0, x_T, grid)


def slopes(step_counts, errors):
    """The fitted log-log slope of the error against the step count (the order)."""
    return -np.polyfit(np.log(np.asarray(step_counts, np.float64)), np.log(errors), 1)[0]


# ------------------------------------------------- encoding against a closed form
#
# Data N(MU, S^2 I): D(x, t) = MU + alpha S^2 / (alpha^2 S^2 + sigma^2) (x - alpha MU). The
# marginal at t is N(alpha_t MU, (alpha_t^2 S^2 + sigma_t^2) I) and the probability-flow map
# keeps each point's standardised coordinate, so encoding from t_min to t_max is
# x_T = alpha_T MU + c_T (x_tmin - alpha_tmin MU) / c_tmin, c_t = sqrt(alpha_t^2 S^2 + sigma_t^2).

def encoding_error(name, process, grid_name, num_steps):
    """max |encode - exact| / c_T over five data points, float64 (call under x64)."""
    grid = time_grids.GRIDS[grid_name](process, num_steps).astype(jnp.float64)
    t_max, t_min = grid[0], grid[-1]
    scale = lambda t: jnp.sqrt(process.alpha(t) ** 2 * S**2 + process.sigma(t) ** 2)  # noqa: E731
    z = jnp.linspace(-2.0, 2.0, 5, dtype=jnp.float64)[:, None]
    x_0 = process.alpha(t_min) * MU + scale(t_min) * z
    exact = process.alpha(t_max) * MU + scale(t_max) * z
    got = encode(name, process, GaussianX0(process), x_0, grid)
    return float(jnp.max(jnp.abs(got - exact)) / scale(t_max))


ORDERS = {"euler": 1, "ddim": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3}
ENCODING_CASES = [  # (solver, process, grid, step counts K of the fit)
    ("euler", "vp_linear", "uniform_log_snr", (16, 32, 64)),
    ("ddim", "vp_linear", "uniform_log_snr", (16, 32, 64)),
    ("heun", "vp_linear", "uniform_log_snr", (16, 32, 64)),
    ("dpmpp_2m", "vp_linear", "uniform_log_snr", (16, 32, 64)),
    ("dpmpp_3m", "edm", "karras", (32, 64, 128)),
]


@pytest.mark.parametrize("name, process_name, grid_name, step_counts", ENCODING_CASES)
def test_encoding_converges_to_the_closed_form_map_at_the_solvers_order(name, process_name, grid_name, step_counts):
    """Every deterministic solver run up the reversed grid converges to the exact encoding at
    its order (fitted slope within 0.3). Measured errors relative to c_T, K = 8, 16, 32, 64,
    128 (NFE = K, 2K for Heun): VP-linear, uniform in log-SNR: Euler 0.119 0.079 0.044
    0.023 0.012 (successive slopes 0.60 0.84 0.93 0.95), DDIM 0.52 0.28 0.14 0.073 0.037
    (0.90 0.95 0.97 0.99), Heun 0.25 0.075 0.021 5.4e-3 1.4e-3 (1.71 1.86 1.94 1.97),
    DPM-Solver++(2M) 0.15 0.042 0.011 2.8e-3 7.0e-4 (1.82 1.93 1.98 1.99); EDM, Karras:
    DPM-Solver++(3M) 0.22 0.042 6.5e-3 8.9e-4 1.2e-4 (2.41 2.70 2.87 2.94). As when sampling
    (tests/diffusion/test_solvers.py), 3M is faster than its order on equal log-SNR steps (slopes 3.6
    on VP-linear), so its order is asserted on a Karras grid, from K = 32.
    A solver run down the grid instead would not converge to this map at all. Where the
    data sits is pinned by the float64 DDIM re-derivation below, not here: starting at
    0.3 t_min instead of t_min moves x_T by ~1e-4 of c_T (sigma_{t_min}^2 / S^2), under the
    discretisation errors this test sees (checked by mutation; it passes here)."""
    with jax.enable_x64(True):
        process = processes.named_process(process_name)
        errors = np.array([encoding_error(name, process, grid_name, k) for k in step_counts])
    assert np.all(np.isfinite(errors)) and np.all(np.diff(errors) < 0), errors
    assert abs(slopes(step_counts, errors) - ORDERS[name]) < 0.3, errors


# ------------------------------------------- encode then decode on a Gaussian mixture
#
# A two-component mixture sum_k w_k N(m_k, s_k^2 I) in 2-D and its exact data prediction
# D(x, t) = sum_k r_k(x) [m_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x - alpha m_k)], r_k
# the responsibilities under the components' marginals N(alpha m_k, (alpha^2 s_k^2 + sigma^2) I).

MEANS = np.array([[-0.7, 0.2], [0.5, -0.4]])
STDS = np.array([0.2, 0.35])
WEIGHTS = np.array([0.6, 0.4])


def mixture_responsibilities(xp, x, alpha, sigma):
    """(r [B, K], residual x - alpha m_k [B, K, 2], the components' variances [K]), over ``xp``."""
    means, variances = xp.asarray(MEANS, x.dtype), xp.asarray(STDS**2, x.dtype)
    component_var = alpha**2 * variances + sigma**2
    residual = x[:, None, :] - alpha * means[None]
    log_density = np.log(WEIGHTS) - 0.5 * (residual**2).sum(-1) / component_var - xp.log(component_var)  # dim 2
    log_density = log_density - log_density.max(axis=1, keepdims=True)
    responsibility = xp.exp(log_density)
    return responsibility / responsibility.sum(axis=1, keepdims=True), residual, component_var


class MixtureX0:
    def __init__(self, process):
        self.process = process

    def __call__(self, x, t):
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        r, residual, component_var = mixture_responsibilities(jnp, x, alpha, sigma)
        given_k = jnp.asarray(MEANS, x.dtype)[None] + (alpha * STDS**2 / component_var)[None, :, None] * residual
        return (r[:, :, None] * given_k).sum(1)


def mixture_data(num, seed=0):
    rng = np.random.default_rng(seed)
    component = rng.choice(len(WEIGHTS), size=num, p=WEIGHTS)
    return MEANS[component] + STDS[component, None] * rng.standard_normal((num, 2))


ROUND_TRIP_ORDERS = {"ddim": 1, "heun": 3, "dpmpp_2m": 3}
ROUND_TRIP_STEPS = (32, 64, 128)


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_ORDERS))
def test_encode_then_decode_reconstructs_the_data(name):
    """decode(encode(x_0)) -> x_0 as the steps grow, on 64 mixture samples (VP-linear, uniform
    in log-SNR, float64). Measured max |error|, K = 8, 16, 32, 64, 128 (NFE per direction K,
    2K for Heun): DDIM 0.68 0.32 0.17 0.085 0.043 (slopes 0.93 0.97 0.98), Heun 0.29 0.022
    3.1e-3 3.9e-4 4.9e-5 (2.87 2.97 2.99), DPM-Solver++(2M) 0.25 0.021 3.6e-3 5.8e-4 7.7e-5
    (2.53 2.64 2.90); EDM with a Karras grid gives the same orders (DDIM 0.052, Heun 7.3e-5,
    2M 1.4e-4 at K = 128).

    The second-order solvers reconstruct at third order: the round trip pairs each step up
    the grid with the same step down it, and a step of order p has the local error
    C h^{p+1} going up and C (-h)^{p+1} coming back, which cancel to leading order when p + 1
    is odd (p = 2) and add when it is even (p = 1: DDIM stays first order, 3M third). So the
    asserted slopes are 1, 3, 3 within 0.35 (2M approaches 3 from 2.6: its first steps up
    and last steps down are first order, with a small constant because D barely moves near
    t_min); a Heun without its correction, or a 2M without its history, would give 1."""
    with jax.enable_x64(True):
        process = processes.VPLinear()
        x_0 = jnp.asarray(mixture_data(64), jnp.float64)
        errors = []
        for k in ROUND_TRIP_STEPS:
            grid = time_grids.uniform_log_snr(process, k).astype(jnp.float64)
            x_T, back = round_trip(name, process, MixtureX0(process), x_0, grid)
            assert float(jnp.std(x_T)) > 0.5  # a latent near N(0, I), not the data
            errors.append(float(jnp.max(jnp.abs(back - x_0))))
    errors = np.array(errors)
    assert np.all(np.diff(errors) < 0), errors
    assert abs(slopes(ROUND_TRIP_STEPS, errors) - ROUND_TRIP_ORDERS[name]) < 0.35, errors


# ----------------------------------------------- DDIM inversion re-derived from the paper
#
# DDIM eq. 13 (eta = 0, in DDIM's notation alpha_t = alpha_bar_t):
#     x_{t-dt} / sqrt(alpha_{t-dt}) = x_t / sqrt(alpha_t)
#         + (sqrt((1 - alpha_{t-dt}) / alpha_{t-dt}) - sqrt((1 - alpha_t) / alpha_t)) eps(x_t, t),
# the Euler step of the ODE dx~ = eps d sigma~ in x~ = x / sqrt(alpha), sigma~ = sqrt((1 - alpha)/alpha)
# (eq. 14). Encoding runs it with t + dt in place of t - dt (section 4.3: the reverse of the
# ODE), eps evaluated at the step's start, from x_0 taken as the state at the first time.


def mixture_eps_numpy(x, alpha_bar):
    """The exact E[eps | x_t] of the mixture, float64: sum_k r_k sigma (x - a m_k) / (a^2 s_k^2 + sigma^2)."""
    a, sigma = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    r, residual, component_var = mixture_responsibilities(np, x, a, sigma)
    return (r[:, :, None] * sigma * residual / component_var[None, :, None]).sum(1)


def ddim_inversion_numpy(x_0, alpha_bars):
    """x_T from x_0 by DDIM eq. 13 forward over alpha_bars [K + 1] (decreasing: increasing noise)."""
    x = np.asarray(x_0, np.float64)
    for a, a_next in zip(alpha_bars[:-1], alpha_bars[1:]):
        eps = mixture_eps_numpy(x, a)
        x_tilde = x / np.sqrt(a) + (np.sqrt((1.0 - a_next) / a_next) - np.sqrt((1.0 - a) / a)) * eps
        x = np.sqrt(a_next) * x_tilde
    return x


def test_ddim_encode_matches_ddim_inversion_in_float64():
    """VP-linear (20 steps uniform in log-SNR), float64 under x64: ``encode`` with the ddim
    step equals the re-derivation to float64 rounding. The solver is given the mixture's
    exact D and the reference its exact eps, each written on its own (D = sum_k r_k (m_k +
    ...), eps = sum_k r_k sigma (x - a m_k)/...), and the reference computes alpha_bar from
    score_sde's beta(t) itself, so this also checks the exponential-integrator form of the
    step against eq. 13's (measured 1.7e-15 of max |x_T|)."""
    with jax.enable_x64(True):
        process = processes.VPLinear()
        grid = time_grids.uniform_log_snr(process, 20).astype(jnp.float64)
        x_0 = mixture_data(32, seed=1)
        got = np.asarray(encode("ddim", process, MixtureX0(process), jnp.asarray(x_0), grid))
        t = np.asarray(grid, np.float64)[::-1]
        log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1  # score_sde's VP SDE, beta in [0.1, 20]
        want = ddim_inversion_numpy(x_0, np.exp(2.0 * log_alpha))
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * np.abs(want).max())


def test_ddim_encode_matches_ddim_inversion_on_a_discrete_chain():
    """A linear 1000-step chain: ``encode`` with the ddim step, on ``discrete_process`` over
    ``discrete_grid(T, K)`` with the analytic eps network read by ``x0_predictor`` at integer
    steps (float32), equals DDIM eq. 13 forward on the chain's float64 alpha_bar at those
    steps with the float64 exact eps, within float32 rounding (measured 5.6e-6 absolute,
    2.2e-6 of max |x_T| = 2.5, through 25 steps of x / sqrt(alpha_bar) down to alpha_bar = 4e-5)."""
    T, K = 1000, 25
    schedule = schedules.named_schedule("linear", T)
    process = processes.discrete_process(schedule)
    denoise = analytic.gaussian_mixture_denoiser(schedule, MEANS, STDS, WEIGHTS)
    denoise_x0 = solvers.x0_predictor(denoise, None, DiffusionSpec("eps", "fixed_small"), process, round_steps=True)
    grid = time_grids.discrete_grid(T, K)
    x_0 = mixture_data(32, seed=2)
    got = np.asarray(encode("ddim", process, denoise_x0, jnp.asarray(x_0, jnp.float32), grid))
    steps = np.rint(np.asarray(grid, np.float64)[::-1] * T - 1.0).astype(int)  # 0 .. T - 1, increasing
    alpha_bars = np.cumprod(1.0 - schedule.source.values)[steps]
    want = ddim_inversion_numpy(x_0, alpha_bars)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


# ------------------------------------------------------------------------ slerp


def angle(u, v):
    """The angle between u and v per example, float64 (2 atan2(|u^ - v^|, |u^ + v^|))."""
    u, v = (np.asarray(w, np.float64).reshape(w.shape[0], -1) for w in (u, v))
    u_hat = u / np.linalg.norm(u, axis=1, keepdims=True)
    v_hat = v / np.linalg.norm(v, axis=1, keepdims=True)
    return 2.0 * np.arctan2(np.linalg.norm(u_hat - v_hat, axis=1), np.linalg.norm(u_hat + v_hat, axis=1))


FRACTIONS = jnp.linspace(0.0, 1.0, 9)
slerp = jax.jit(latent.slerp)


def test_slerp_endpoints_norms_and_angles():
    """Equal-norm images [4, 5, 5, 3] (one norm per example): f = 0 and 1 give the inputs
    exactly; every interpolant keeps the norm; its angles to x_a and x_b are f theta and
    (1 - f) theta, per example (each example has its own theta)."""
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    x_a = jax.random.normal(key_a, (4, 5, 5, 3))
    x_b = jax.random.normal(key_b, (4, 5, 5, 3))
    norms = jnp.linalg.norm(x_a.reshape(4, -1), axis=1)
    x_b = x_b / jnp.linalg.norm(x_b.reshape(4, -1), axis=1)[:, None, None, None] * norms[:, None, None, None]
    out = slerp(x_a, x_b, FRACTIONS)
    assert out.shape == (9, 4, 5, 5, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out[0], x_a)
    np.testing.assert_array_equal(out[-1], x_b)
    theta = angle(x_a, x_b)
    assert np.all(theta > 1.0)  # random 75-dimensional vectors are nearly orthogonal
    for f, x in zip(np.asarray(FRACTIONS, np.float64), np.asarray(out)):
        np.testing.assert_allclose(np.linalg.norm(x.reshape(4, -1), axis=1), norms, rtol=1e-5)
        np.testing.assert_allclose(angle(x, x_a), f * theta, atol=1e-5)
        np.testing.assert_allclose(angle(x, x_b), (1.0 - f) * theta, atol=1e-5)


def test_slerp_of_orthogonal_unit_vectors_is_the_quarter_circle():
    """e1 to e2: slerp(f) = (cos(f pi/2), sin(f pi/2)), which linear interpolation is not."""
    out = slerp(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]), FRACTIONS)
    f = np.asarray(FRACTIONS, np.float64)
    np.testing.assert_allclose(out[:, 0], np.stack([np.cos(f * np.pi / 2), np.sin(f * np.pi / 2)], 1), atol=1e-6)


def test_slerp_of_parallel_inputs_falls_back_to_lerp():
    """x_b = 2 x_a (theta = 0), x_b = x_a, x_b = -x_a (antiparallel: no unique great circle) and
    a zero x_a are the linear interpolation (1 - f) x_a + f x_b, finite; a pair 1e-4 rad
    apart (spherical, sin(theta) = 1e-4 above the fallback's 1e-6) is within 1e-8 relative
    of it, so the switch is continuous."""
    x = jnp.array([[0.3, -1.2, 0.5, 2.0]])
    orthogonal = jnp.array([[1.2, 0.3, 0.0, 0.0]]) / jnp.sqrt(1.53)  # a unit vector orthogonal to x
    near = x + 1e-4 * jnp.linalg.norm(x) * orthogonal
    cases = [(x, 2.0 * x), (x, x), (x, -x), (jnp.zeros_like(x), x)]
    f = FRACTIONS[:, None, None]
    for x_a, x_b in cases:
        out = slerp(x_a, x_b, FRACTIONS)
        assert np.all(np.isfinite(np.asarray(out)))
        np.testing.assert_allclose(out, (1.0 - f) * x_a + f * x_b, rtol=1e-6, atol=1e-6)
    with jax.enable_x64(True):
        x64, near64 = x.astype(jnp.float64), near.astype(jnp.float64)
        assert 1e-6 < float(np.sin(angle(x64, near64))[0]) < 1e-3
        lerp = (1.0 - f.astype(jnp.float64)) * x64 + f.astype(jnp.float64) * near64
        np.testing.assert_allclose(slerp(x64, near64, FRACTIONS.astype(jnp.float64)), lerp, rtol=1e-8)


# ---------------------------------------------------------- interpolation and checks


def test_interpolate_decodes_the_slerp_of_the_two_latents():
    """float32, DPM-Solver++(2M), K = 16: fractions 0 and 1 are the round trips of x0_a and x0_b (close to
    them), a middle fraction decodes the slerp of the latents, and the output is [F, B, 2]."""
    process = processes.VPLinear()
    grid = time_grids.uniform_log_snr(process, 16)
    x0_a, x0_b = jnp.asarray(mixture_data(8, seed=3), jnp.float32), jnp.asarray(mixture_data(8, seed=4), jnp.float32)
    fractions = jnp.array([0.0, 0.5, 1.0])
    step, denoise_x0 = solvers.dpmpp_2m_step, MixtureX0(process)
    out = jax.jit(functools.partial(latent.interpolate, step, process, denoise_x0))(x0_a, x0_b, grid, fractions)
    assert out.shape == (3, 8, 2)

    @jax.jit
    def one_at_a_time(x0_a, x0_b, grid):
        latent_a = latent.encode(step, process, denoise_x0, x0_a, grid)
        latent_b = latent.encode(step, process, denoise_x0, x0_b, grid)
        middle = latent.slerp(latent_a, latent_b, jnp.array([0.5]))[0]
        return [latent.decode(step, process, denoise_x0, z, grid) for z in (latent_a, middle, latent_b)]

    for got, want in zip(out, one_at_a_time(x0_a, x0_b, grid)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0], x0_a, atol=0.05)  # 2M's round trip at K = 16: 0.021 in float64
    np.testing.assert_allclose(out[-1], x0_b, atol=0.05)


def test_refuses_stochastic_solvers_and_bad_grids():
    process = processes.VPLinear()
    grid = time_grids.uniform_log_snr(process, 4)
    x = jnp.zeros((2, 2))
    denoise_x0 = MixtureX0(process)
    for name in [name for name, solver in solvers.SOLVERS.items() if solver.stochastic]:
        for step in (solvers.SOLVERS[name].step, functools.partial(solvers.SOLVERS[name].step, eta=0.0)):
            with pytest.raises(ValueError, match=name):
                latent.encode(step, process, denoise_x0, x, grid)
            with pytest.raises(ValueError, match=name):
                latent.decode(step, process, denoise_x0, x, grid)
    with pytest.raises(ValueError, match="decrease"):
        latent.encode(solvers.ddim_step, process, denoise_x0, x, grid[::-1])
    with pytest.raises(ValueError, match="sigma = 0"):
        latent.encode(solvers.ddim_step, process, denoise_x0, x, time_grids.uniform_t(process, 4, t_min=0.0))
