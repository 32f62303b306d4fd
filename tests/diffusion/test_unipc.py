"""UniPC (``diffusion.solvers.unipc``): order of convergence against the closed-form
probability-flow ODE of Gaussian data, trajectories against a float64 NumPy re-derivation of the
paper's algorithm, the predictor alone (DPM-Solver++), the phi functions, one evaluation per
step and one compilation per grid length."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import processes, solvers, time_grids
from diffjax.diffusion.solvers.unipc import VARIANTS, unipc_coefficients, unipc_step
from tests.diffusion.test_solvers import MU, GaussianX0, MixtureX0, S, edm_numpy, mixture_x0, vp_numpy


@functools.partial(jax.jit, static_argnames=("step", "denoise_x0", "return_trajectory"))
def run(step, process, denoise_x0, x_T, grid, return_trajectory=False):
    return solvers.solve(step, process, denoise_x0, x_T, grid, return_trajectory=return_trajectory)


def unipc(order, **options):
    return functools.partial(unipc_step, order=order, **options)


# ------------------------------------------------------- order against a closed form
#
# As in test_solvers: data N(MU, S^2), whose probability-flow ODE maps x_T affinely to x_t (the
# standardised coordinate is kept); float64, errors at the grid's last time.


def closed_form_error(step, process, grid_fn, num_steps):
    grid = grid_fn(process, num_steps).astype(jnp.float64)
    t_T, t_0 = grid[0], grid[-1]
    z = jnp.linspace(-2.0, 2.0, 5, dtype=jnp.float64)[:, None]
    x_T = process.alpha(t_T) * MU + jnp.sqrt(process.alpha(t_T) ** 2 * S**2 + process.sigma(t_T) ** 2) * z
    exact = process.alpha(t_0) * MU + jnp.sqrt(process.alpha(t_0) ** 2 * S**2 + process.sigma(t_0) ** 2) * z
    return float(jnp.max(jnp.abs(run(step, process, GaussianX0(process), x_T, grid) - exact)))


# (step, process, grid, step counts, order). Measured errors (float64, max over 5 points) and
# successive slopes, K = 8, 16, 32, 64, 128, 256:
#   UniPC-2 bh2, EDM/Karras:   6.8e-2 5.6e-2 6.9e-3 8.4e-4 1.0e-4 1.3e-5;  0.27 3.03 3.04 3.03 3.02
#   UniPC-2 bh1, EDM/Karras:   5.7e-1 1.6e-1 1.3e-2 1.4e-3 1.7e-4 2.0e-5;  1.84 3.62 3.19 3.09 3.05
#   UniPC-3 bh2, EDM/Karras:   2.9e-1 1.7e-2 2.5e-3 1.7e-4 1.1e-5 7.4e-7;  4.07 2.78 3.90 3.96 3.88
#     without lower_order_final: 5.2e-1 8.6e-2 2.7e-3 1.7e-4 1.1e-5 6.7e-7;  2.59 4.97 4.00 4.01 4.01
#   UniP-2 (no corrector; = DPM-Solver++(2M)), EDM/Karras:  3.9e-2 .. 2.2e-4; -0.71 2.02 2.10 2.05 2.03
#   UniPC-2 bh2, VP-linear/uniform log-SNR: 2.9e-2 .. 4.0e-6;  0.99 2.79 2.96 3.01 3.05
#   UniPC-3 bh2, VP-linear/uniform log-SNR: 1.8e-1 .. 4.0e-7;  7.22 3.42 2.48 3.01 2.62
#     without lower_order_final:            1.1e-1 .. 8.0e-8;  5.34 4.59 2.94 3.68 3.87
#   UniPC-3 bh2, VP-linear/Karras:          2.7e-3 .. 2.3e-6; -4.71 4.92 3.50 3.50 3.01
#     without lower_order_final:            5.9e-1 .. 8.1e-7;  3.37 4.18 3.90 4.01 4.01
# UniC-p raises UniP-p's order p to p + 1 (Zhao et al. 2023, Theorem 3.1; UniPC-p is of order
# p + 1), and the slopes show it: UniPC-2 third order, UniPC-3 fourth order. Two steps are of
# lower order: the first correction is UniC-1 (local error O(h^3)) and, with lower_order_final,
# the last step is an uncorrected DDIM step (O(h^2)); their constants are proportional to how
# fast D changes there, which on these data is slow at sigma~ = 80 and fast only as sigma~ -> 0.
# On EDM (sigma_min = 0.002) neither shows for K <= 256; on VP-linear (sigma~ = 0.0105 at
# t = 1e-3) lower_order_final's last step pulls UniPC-3's slope to ~3 (the rows above), so the
# fourth order is asserted on EDM. Without the corrector the same runs are second order (the
# UniP-2 row; UniP-3 is DPM-Solver++(3M), third order): a corrector that does nothing fails by a
# whole 1. The tolerance 0.3 is test_solvers': the fitted slopes in the ranges used are 3.03
# (UniPC-2), 3.14 (bh1) and 3.93 (UniPC-3), within 0.15 of the order.
ORDER_CASES = [
    (unipc(2), "edm", "karras", (16, 32, 64), 3),
    (unipc(2, variant="bh1"), "edm", "karras", (32, 64, 128), 3),
    (unipc(3), "edm", "karras", (32, 64, 128), 4),
]


@pytest.mark.parametrize("step, process_name, grid_name, step_counts, order", ORDER_CASES)
def test_order_of_convergence_on_gaussian_data(step, process_name, grid_name, step_counts, order):
    with jax.enable_x64(True):
        process = processes.named_process(process_name)
        errors = np.array([closed_form_error(step, process, time_grids.GRIDS[grid_name], k) for k in step_counts])
    assert np.all(np.isfinite(errors)) and errors[-1] < errors[0]
    slope = -np.polyfit(np.log(np.array(step_counts, np.float64)), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (slope, errors)


# ------------------------------------------- float64 NumPy re-derivation of the paper
#
# The multistep UniPC-p of the paper (Zhao et al. 2023, the UniP-p and UniC-p algorithms of the
# appendix, data-prediction form), written as the paper runs it: for i = 1..M, UniP from the
# corrected x^c_{i-1} to t_i, then (i < M) the model at the prediction x~_i, then UniC from
# x^c_{i-1} again with the new point; the model outputs are those at the predictions. Its phi
# functions are the closed forms phi_k(z) = (e^z - sum_{j<k} z^j/j!)/z^k.


def phi(k, z):
    return (np.exp(z) - sum(z**j / math.factorial(j) for j in range(k))) / z**k


def reference_unipc(coefficients, x_T, grid, order, variant="bh2", use_corrector=True):
    """The predictions x~_0 = x_T, x~_1, .., x~_{M-1} (where the model is evaluated) and x~_M."""
    grid = np.asarray(grid, np.float64)
    num_steps = len(grid) - 1
    alpha = [coefficients(t)[0] for t in grid]
    sigma = [coefficients(t)[1] for t in grid]
    lam = [np.log(a / s) for a, s in zip(alpha, sigma)]
    x_c = np.asarray(x_T, np.float64)
    models = [mixture_x0(np, x_c, alpha[0], sigma[0])]
    predictions = [x_c]

    def rhos(r, hh, b):
        if len(r) == 1:  # the paper's a_1 = 1/2 for a single difference
            return [0.5]
        vandermonde = np.array([[r_m**k for r_m in r] for k in range(len(r))])
        g = np.array([math.factorial(k) * hh * phi(k + 1, hh) for k in range(1, len(r) + 1)])
        return np.linalg.solve(vandermonde, g / b)

    for i in range(1, num_steps + 1):
        p = min(order, i, num_steps - i + 1)  # warm-up; lower_order_final
        h = lam[i] - lam[i - 1]
        hh = -h  # data prediction: the paper's formulas with h -> -h
        b = hh if variant == "bh1" else np.exp(hh) - 1.0
        m_prev = models[-1]
        x_first = sigma[i] / sigma[i - 1] * x_c - alpha[i] * (np.exp(hh) - 1.0) * m_prev
        r = [(lam[i - 1 - m] - lam[i - 1]) / h for m in range(1, p)]
        d = [models[-1 - m] - m_prev for m in range(1, p)]
        x_pred = x_first
        if p > 1:
            x_pred = x_first - alpha[i] * b * sum(a_m * d_m / r_m for a_m, d_m, r_m in zip(rhos(r, hh, b), d, r))
        if i == num_steps:  # no corrector after the last step
            return np.stack(predictions), x_pred
        predictions.append(x_pred)
        m_new = mixture_x0(np, x_pred, alpha[i], sigma[i])
        if use_corrector:
            r_c, d_c = [*r, 1.0], [*d, m_new - m_prev]
            x_c = x_first - alpha[i] * b * sum(a_m * d_m / r_m for a_m, d_m, r_m in zip(rhos(r_c, hh, b), d_c, r_c))
        else:
            x_c = x_pred
        models.append(m_new)
    raise AssertionError("unreachable")


REFERENCE_CASES = [
    ("vp_linear", "uniform_log_snr", dict(order=2)),
    ("vp_linear", "uniform_log_snr", dict(order=3)),
    ("edm", "karras", dict(order=2)),
    ("edm", "karras", dict(order=3)),
    ("edm", "karras", dict(order=2, variant="bh1")),
    ("vp_linear", "karras", dict(order=3, variant="bh1", use_corrector=False)),
]


@pytest.mark.parametrize("process_name, grid_name, options", REFERENCE_CASES)
def test_trajectory_matches_numpy_rederivation(process_name, grid_name, options):
    """float32 UniPC against the float64 NumPy algorithm on the 2-D Gaussian mixture's exact
    denoiser, 10 steps, the state before every step and the result: within 2e-6 relative to
    the state's scale. Measured: at most 3.3e-7 (float32 epsilon 6e-8 through 10 steps), in
    every option on both processes; a corrector with a_1 solved instead of 1/2 is off by 8e-2
    (bh2) and 2e-1 (bh1), UniPC-3 without lower_order_final by 3e-1, and the corrector moves
    the result by 1e-2 to 6e-2."""
    process = processes.named_process(process_name)
    coefficients = vp_numpy if process_name == "vp_linear" else edm_numpy
    grid = time_grids.GRIDS[grid_name](process, 10)
    x_T = np.random.default_rng(0).standard_normal((16, 2)) * float(process.sigma(grid[0]))
    final, trajectory = run(
        unipc(**options), process, MixtureX0(process), jnp.asarray(x_T, jnp.float32), grid, return_trajectory=True
    )
    expected_xs, expected_final = reference_unipc(coefficients, x_T, grid, **options)
    for got, want in zip([*np.asarray(trajectory["x"]), np.asarray(final)], [*expected_xs, expected_final]):
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * scale)


# ------------------------------------------------------------- the predictor alone


def test_predictor_alone_is_dpm_solver_pp():
    """UniP-p (``use_corrector=False``) with B(h) = e^h - 1: UniP-2's a_1 = 1/2 makes it
    DPM-Solver++(2M) (alpha' (1 - e^{-h}) (x0_i + (x0_{i-1} - x0_i)/(2 r))), and UniP-3's solved
    2x2 system integrates the quadratic through the last three predictions exactly, which is
    DPM-Solver++(3M) here, whose order-2 steps are 2M's; both have the same warm-up and
    lower_order_final (orders 1 2 3 3 3 3 2 1 on 8 steps). Equal to float32 rounding (measured
    <= 4.2e-7 on states of size ~1; with the corrector, unipc_3 differs from it by 2e-2)."""
    process = processes.VPLinear()
    grid = time_grids.karras(process, 8)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    denoise_x0 = MixtureX0(process)
    predictor = run(unipc(3, use_corrector=False), process, denoise_x0, x_T, grid, return_trajectory=True)
    dpmpp = run(solvers.dpmpp_3m_step, process, denoise_x0, x_T, grid, return_trajectory=True)
    for got, want in zip(jax.tree.leaves(predictor), jax.tree.leaves(dpmpp)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- the coefficients


def phi_terms(hh, count):
    return [math.factorial(k) * hh * phi(k + 1, hh) for k in range(1, count + 1)]


@pytest.mark.parametrize("hh", [-2.5, -1.2, -0.7, -0.3, -0.02])
def test_coefficients_solve_the_order_conditions(hh):
    """``unipc_coefficients`` against NumPy's solve of R_n a = g/B with the closed-form phi
    functions, on both sides of |hh| = 1 (where the code changes from phi's recurrence to its
    series): float64 to 1e-11 (measured 1.1e-13; the closed forms lose digits by cancellation
    below |hh| ~ 0.3, so float64 is checked from there), float32 to 2e-6 of the largest
    coefficient (measured 2.1e-7; at hh = -0.02 the recurrence alone, without the series, gives
    phi_4 5% off in float32). One difference: a_1 = 1/2."""
    for n, rs in [(2, [-1.0, 1.0]), (2, [-1.7, -3.1]), (3, [-1.3, -2.9, 1.0]), (3, [-0.6, -1.1, -1.9])]:
        for variant in VARIANTS:
            b = hh if variant == "bh1" else np.expm1(hh)
            vandermonde = np.array([[r**k for r in rs] for k in range(n)])
            want = np.linalg.solve(vandermonde, np.array(phi_terms(hh, n)) / b)
            got32 = np.array(unipc_coefficients([jnp.float32(r) for r in rs], jnp.float32(hh), variant))
            np.testing.assert_allclose(got32, want, rtol=2e-6, atol=2e-6 * np.abs(want).max(), err_msg=(n, rs, variant))
            if abs(hh) >= 0.3:
                with jax.enable_x64(True):
                    got64 = np.array(unipc_coefficients([jnp.float64(r) for r in rs], jnp.float64(hh), variant))
                np.testing.assert_allclose(got64, want, rtol=1e-11, err_msg=(n, rs, variant))
    assert float(unipc_coefficients([jnp.float32(1.0)], jnp.float32(hh), "bh2")[0]) == 0.5


def test_invalid_order_or_variant_is_refused():
    process = processes.VPLinear()
    grid = time_grids.karras(process, 3)
    for options in (dict(order=4), dict(variant="bh3")):
        with pytest.raises(ValueError):
            solvers.solve(unipc(**{"order": 2, **options}), process, MixtureX0(process), jnp.ones((2, 2)), grid)
