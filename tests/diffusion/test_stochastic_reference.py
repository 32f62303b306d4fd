"""EDM's stochastic sampler, Euler ancestral and DPM-Solver++(2M) SDE (``solvers.sde``) against
float64 NumPy re-derivations written from the papers' algorithms, trajectory-wise, with the
solver's own standard-normal draws.

The references work in EDM's scaled variable for every process: y = x / alpha_t at noise level
sigma~_t = sigma_t / alpha_t, with EDM's own choice sigma(t) = t, s(t) = 1 (Karras et al. 2022,
Algorithm 2 as printed; k-diffusion's samplers, which take sigma as time). Why that is the
general algorithm with s(t) = alpha_t: EDM's eq. 4 writes x = s(t) x^ with x^ ~ p(x^; sigma(t))
and D(x^; sigma) the denoiser of the unscaled variable, so (i) its ODE and SDE in x^ are those
of the VE case with sigma as time whatever s is, (ii) raising the noise level from sigma_i to
sigma^ (the churn) is adding sqrt(sigma^^2 - sigma_i^2) eps to x^, after which x = s(t^) x^ is
a sample at t^, and (iii) the data prediction depends on (x^, sigma) only. Here x^ = y and, for
the Gaussian mixture below, D(x, t) with x = alpha y equals the VE prediction
mixture_x0(y, alpha=1, sigma=sigma~): the component variance is alpha^2 (s_k^2 + sigma~^2) and
the residual alpha (y - m_k), so alpha cancels from the responsibilities (a common log alpha^2)
and from the posterior mean. The reference therefore never evaluates a time: it reads the grid
only through sigma~_i (float64, from the float32 grid times by the processes' formulas) and
alpha_i (to map y_i back to x_i = alpha_i y_i for the comparison); the solvers work in
float32 in x with the processes' log alpha, log sigma, t_from_edm_sigma and the x-space denoiser.

The noises: step i of ``solve`` draws z_i = normal(fold_in(key, i), x.shape, float32) (its
carry.step is i; ``core.step_key``); each of the three steps draws exactly one such z per step
(``edm_stochastic_step`` draws it on every step and uses it only where gamma > 0). The
reference takes the same z_i, converted to float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import processes, solvers, time_grids
from tests.support.mixtures import mixture_posterior_mean

# A 2-D mixture sum_k w_k N(m_k, s_k^2 I) (three components, one of them narrow).
MEANS = np.array([[-0.8, 0.3], [0.6, -0.5], [0.1, 0.9]])
STDS = np.array([0.15, 0.4, 0.25])
WEIGHTS = np.array([0.5, 0.3, 0.2])
BETA_MIN, BETA_MAX = 0.1, 20.0  # processes.VPLinear's defaults
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # processes.EDM's defaults
K, B = 10, 16
TOLERANCE = 2e-5  # max |x_solver - x_reference| / max(1, max |x_reference|), per state


def mixture_x0(xp, x, alpha, sigma):
    """E[x_0 | x_t = x] of this file's 2-D mixture (``tests.support.mixtures``)."""
    return mixture_posterior_mean(xp, x, alpha, sigma, MEANS, STDS**2, WEIGHTS)


class MixtureX0:
    """The solvers' denoiser, in x-space with the process's float32 alpha_t, sigma_t. Equal and
    hashed by process, so ``run`` compiles once per (solver, process)."""

    def __init__(self, process):
        self.process = process

    def __call__(self, x, t):
        return mixture_x0(jnp, x, self.process.alpha(t), self.process.sigma(t))

    def __eq__(self, other):
        return isinstance(other, MixtureX0) and other.process == self.process

    def __hash__(self):
        return hash(self.process)


@functools.partial(jax.jit, static_argnames=("name", "denoise_x0"))
def run(name, process, denoise_x0, x_T, grid, key, parameters):
    step = functools.partial(solvers.SOLVERS[name].step, **parameters)
    return solvers.solve(step, process, denoise_x0, x_T, grid, key=key, return_trajectory=True)


def alpha_sigma_numpy(process_name, t):
    """float64 (alpha_t, sigma_t): score_sde's VP SDE (alpha = exp(-(1/2) int_0^t beta), beta
    linear; sigma^2 = 1 - alpha^2) or the VE process sigma_min (sigma_max / sigma_min)^t."""
    t = np.asarray(t, np.float64)
    if process_name == "vp_linear":
        alpha = np.exp(-0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN)
        return alpha, np.sqrt(1.0 - alpha**2)
    return np.ones_like(t), SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t


def noise(key, i, shape):
    """The solver's draw of step i, in float64."""
    return np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32), np.float64)


def denoise(y, sigma):
    """D(y; sigma) of the unscaled (VE) variable y = x_0 + sigma eps."""
    return mixture_x0(np, y, 1.0, sigma)


def churn_gamma(sigma, num_steps, s_churn, s_tmin, s_tmax, mutation=None):
    """EDM Algorithm 2, line 4: gamma_i = min(S_churn/N, sqrt(2) - 1) if t_i in [S_tmin, S_tmax]."""
    cap = np.sqrt(2.0) if mutation == "gamma_cap_sqrt2" else np.sqrt(2.0) - 1.0
    return min(s_churn / num_steps, cap) if s_tmin <= sigma <= s_tmax else 0.0


def reference(name, process_name, x_T, grid, key, parameters, mutation=None):
    """The states x_0..x_K (x before each step and the final one) and the data predictions
    each step evaluates first, float64, in y = x / alpha with sigma~ = sigma / alpha."""
    alphas, sigmas = alpha_sigma_numpy(process_name, np.asarray(grid, np.float64))
    sig = sigmas / alphas  # sigma~_i, decreasing, > 0
    num_steps = len(grid) - 1
    y = np.asarray(x_T, np.float64) / alphas[0]
    ys, predictions, previous = [], [], None  # previous: (D_{i-1}, h_{i-1}) of DPM-Solver++(2M) SDE
    for i in range(num_steps):
        ys.append(y)
        s_cur, s_next = sig[i], sig[i + 1]
        z = noise(key, i, y.shape)
        if name == "edm_stochastic":
            # Karras et al. 2022, Algorithm 2 (lines 4-10), with t = sigma:
            gamma = churn_gamma(s_cur, num_steps, parameters["s_churn"], parameters["s_tmin"], parameters["s_tmax"],
                                mutation)
            s_hat = s_cur * (1.0 + gamma)  # t^_i = t_i + gamma_i t_i
            y_hat = y + np.sqrt(s_hat**2 - s_cur**2) * parameters["s_noise"] * z  # x^_i, eps ~ N(0, S_noise^2 I)
            d_hat = denoise(y_hat, s_hat)
            slope = (y_hat - d_hat) / s_hat  # d_i = (x^_i - D(x^_i; t^_i)) / t^_i
            y_next = y_hat + (s_next - s_hat) * slope  # Euler step from t^_i to t_{i+1}
            if s_next != 0:  # 2nd-order correction
                slope_next = (y_next - denoise(y_next, s_next)) / s_next
                y_next = y_hat + (s_next - s_hat) * (0.5 * slope + 0.5 * slope_next)
            predictions.append(d_hat)
            y = y_next
        elif name == "euler_ancestral":
            # k-diffusion sample_euler_ancestral / get_ancestral_step:
            eta, s_noise = parameters["eta"], parameters["s_noise"]
            d = denoise(y, s_cur)
            s_up = min(s_next, eta * np.sqrt(s_next**2 * (s_cur**2 - s_next**2) / s_cur**2))
            s_down = np.sqrt(s_next**2 - s_up**2)
            if mutation == "noise_without_eta":  # the step to sigma_down with eta, the noise without
                s_up = min(s_next, np.sqrt(s_next**2 * (s_cur**2 - s_next**2) / s_cur**2))
            y = y + (y - d) / s_cur * (s_down - s_cur)  # to_d, dt = sigma_down - sigma
            if s_next > 0:
                y = y + z * s_noise * s_up
            predictions.append(d)
        else:
            # DPM-Solver++(2M) SDE (Lu et al. 2022b; k-diffusion sample_dpmpp_2m_sde, midpoint):
            # lambda = -log sigma~, h = lambda_{i+1} - lambda_i,
            # y' = (sigma'/sigma) e^{-eta h} y + (1 - e^{-(1+eta) h}) D
            #      [+ (1/2)(1 - e^{-(1+eta) h}) (1/r) (D - D_old), r = h_last / h]
            #      + sigma' sqrt(1 - e^{-2 eta h}) S_noise z,
            # the correction left out on the first step (no D_old) and on the last (lower order).
            eta, s_noise = parameters["eta"], parameters["s_noise"]
            d = denoise(y, s_cur)
            h = np.log(s_cur) - np.log(s_next)
            decay = np.exp(-h) if mutation == "eta_on_wrong_term" else np.exp(-eta * h)
            y_next = s_next / s_cur * decay * y + (1.0 - np.exp(-(1.0 + eta) * h)) * d
            last = i == num_steps - 1 and mutation != "no_lower_order_final"
            if previous is not None and not last:
                r = previous[1] / h
                y_next = y_next + 0.5 * (1.0 - np.exp(-(1.0 + eta) * h)) / r * (d - previous[0])
            y_next = y_next + z * s_next * np.sqrt(1.0 - np.exp(-2.0 * eta * h)) * s_noise
            previous = (d, h)
            predictions.append(d)
            y = y_next
    ys.append(y)
    xs = np.stack(ys) * alphas[:, None, None]
    return xs, np.stack(predictions)


# Parameters (all traced float32 in the solver). EDM: S_churn = 40 puts gamma on its cap
# (40/10 > sqrt(2) - 1), S_churn = 2.5 below it (gamma = 0.25); the [S_tmin, S_tmax] windows hold
# some of the 10 grid levels of each process and not others (checked in the test; churned steps
# VP-linear 6 and 5, EDM 5 and 6).
CONFIGS = {
    "edm_stochastic": [
        dict(s_churn=40.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.05),
        dict(s_churn=2.5, s_tmin=0.2, s_tmax=30.0, s_noise=0.9),
    ],
    "euler_ancestral": [dict(eta=1.0, s_noise=0.9), dict(eta=0.5, s_noise=1.1)],
    "dpmpp_2m_sde": [dict(eta=1.0, s_noise=0.9), dict(eta=0.5, s_noise=1.1)],
}
CASES = [(name, index) for name in CONFIGS for index in range(len(CONFIGS[name]))]
PROCESS_GRIDS = [("vp_linear", "uniform_log_snr"), ("edm", "karras")]


@functools.lru_cache(maxsize=None)
def solver_and_reference(name, index, process_name, grid_name, mutation=None):
    """(solver states [K + 1, B, 2], solver predictions [K, B, 2], reference states, reference
    predictions, sigma~ of the grid)."""
    parameters = CONFIGS[name][index]
    process = processes.named_process(process_name)
    grid = time_grids.GRIDS[grid_name](process, K)
    x_T = np.random.default_rng(0).standard_normal((B, 2)) * float(process.sigma(grid[0]))
    key = jax.random.PRNGKey(17)
    traced = {k: jnp.float32(v) for k, v in parameters.items()}
    final, trajectory = run(name, process, MixtureX0(process), jnp.asarray(x_T, jnp.float32), grid, key, traced)
    got_xs = np.concatenate([np.asarray(trajectory["x"], np.float64), np.asarray(final, np.float64)[None]])
    want_xs, want_predictions = reference(name, process_name, x_T, np.asarray(grid), key, parameters, mutation)
    alphas, sigmas = alpha_sigma_numpy(process_name, np.asarray(grid, np.float64))
    return got_xs, np.asarray(trajectory["x0"], np.float64), want_xs, want_predictions, sigmas / alphas


def scaled_error(got, want):
    """max over states of max |got - want| / max(1, max |want|)."""
    return max(np.abs(g - w).max() / max(1.0, np.abs(w).max()) for g, w in zip(got, want))


@pytest.mark.parametrize("process_name, grid_name", PROCESS_GRIDS)
@pytest.mark.parametrize("name, index", CASES)
def test_trajectory_matches_float64_reference(name, index, process_name, grid_name):
    """float32 solver against the float64 reference given the same noises: every state x_i and
    every data prediction within TOLERANCE = 2e-5 of its scale (max(1, max |v|) for v = x_i
    or D_i), as the deterministic solvers' re-derivations (float32 epsilon 6e-8 grown through 10 steps
    of exp/log and the sigma^ -> t^ -> sigma~ round trip). Measured maxima (states,
    predictions), K = 10, B = 16, config index 0 | 1:
      VP-linear, uniform_log_snr:
        edm_stochastic  4.3e-7, 4.3e-7 | 3.0e-7, 2.6e-7
        euler_ancestral 2.2e-7, 2.1e-7 | 3.7e-7, 3.3e-7
        dpmpp_2m_sde    2.7e-7, 2.0e-7 | 2.9e-7, 2.5e-7
      EDM, karras:
        edm_stochastic  9.2e-7, 1.4e-6 | 6.1e-7, 4.3e-7
        euler_ancestral 4.5e-7, 4.7e-7 | 2.3e-7, 3.3e-7
        dpmpp_2m_sde    5.0e-7, 5.1e-7 | 2.9e-7, 4.7e-7
    """
    got_xs, got_predictions, want_xs, want_predictions, sig = solver_and_reference(name, index, process_name, grid_name)
    parameters = CONFIGS[name][index]
    if name == "edm_stochastic":
        # Churn on for some steps only, and no grid level within float32 reach of the window's ends.
        churned = [churn_gamma(s, K, parameters["s_churn"], parameters["s_tmin"], parameters["s_tmax"]) > 0
                   for s in sig[:-1]]
        assert 0 < sum(churned) < K, churned
        for end in (parameters["s_tmin"], parameters["s_tmax"]):
            assert np.abs(np.log(sig / end)).min() > 1e-3
    state_error = scaled_error(got_xs, want_xs)
    prediction_error = scaled_error(got_predictions, want_predictions)
    assert state_error <= TOLERANCE, (state_error, prediction_error)
    assert prediction_error <= TOLERANCE, (state_error, prediction_error)


@pytest.mark.parametrize("name, index, mutation", [
    ("edm_stochastic", 0, "gamma_cap_sqrt2"),
    ("euler_ancestral", 1, "noise_without_eta"),
    ("dpmpp_2m_sde", 1, "eta_on_wrong_term"),
    ("dpmpp_2m_sde", 0, "no_lower_order_final"),
])
def test_a_wrong_detail_in_the_reference_is_detected(name, index, mutation):
    """The comparison can fail: one detail of the reference changed (gamma's cap sqrt(2) instead
    of sqrt(2) - 1; eta dropped from the noise but kept in sigma_down; e^{-h} instead of
    e^{-eta h} on y; the 2M correction kept on the last step) puts the solver far outside
    TOLERANCE on EDM's karras grid. Measured scaled errors: 6.8e-1, 4.9e-1, 6.5e-1, 8.3e-2
    (on VP-linear's uniform_log_snr grid: 8.1e-1, 5.9e-1, 7.7e-1, 3.8e-2)."""
    got_xs, _, want_xs, _, _ = solver_and_reference(name, index, "edm", "karras", mutation)
    assert scaled_error(got_xs, want_xs) > 20 * TOLERANCE
