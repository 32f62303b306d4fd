"""Every solver of ``solvers.SOLVERS`` samples a known distribution: component weights, means and
standard deviations of a 1-D Gaussian mixture, within Monte-Carlo error plus the discretisation
error measured at the tested NFE.

The data: x in R^64, coordinate 0 the mixture sum_k w_k N(m_k, s_k^2) (w = 0.45, 0.35, 0.2;
m = -1.5, 0.4, 1.8; s = 0.3, 0.5, 0.2), the other 63 coordinates independent N(0.3, 0.5^2).
The exact data prediction factorises over the coordinates (the mixture's posterior mean in
coordinate 0, the Gaussian's affine one in the others), so every solver but ``pc`` moves the
mixture coordinate exactly as it would move 1-D data. The 63 Gaussian coordinates are there
for ``pc``: its Langevin corrector's step size 2 a (snr ||z|| / ||score||)^2 takes norms over
an example's elements and is meaningless in one dimension (measured on 1-D data: standard
deviations off by 10^2 at 20 NFE, NaN at 10: ||score|| -> 0 at a mode makes the step explode).

Each solver starts from x_T drawn from the exact marginal at grid[0] and is compared at
grid[-1] with the exact marginal there (alpha_t x_0 + sigma_t eps, sigma_{t_min} = 0.002 for
EDM, ~0.01 for VP-linear), so no prior mismatch enters. The statistics: each sample's mixture
coordinate is assigned to the component of largest posterior responsibility under that
marginal; per component the fraction of samples (weight), their mean and standard deviation;
and the mean and standard deviation of the pooled Gaussian coordinates. The same assignment on
400 000 exact samples gives the reference values and, over batches of n, their standard errors
(SE). A statistic passes when |error| < 4 SE + ALLOWANCE[name], the allowance the solver's own
discretisation error at the tested NFE (max |error| over the statistics, measured with 10^5
samples, times 1.25, rounded up to 0.005).

Grids (each family's convention): the EDM-family solvers (heun, edm_stochastic,
euler_ancestral, dpmpp_*: Karras et al. 2022 and k-diffusion) run on ``processes.EDM`` with
``time_grids.karras``; euler, ddim, ddpm, pc and any solver not named here on
``processes.VPLinear`` with ``time_grids.uniform_log_snr`` (DPM-Solver's grid for few steps).
Stochastic parameters: edm_stochastic S_churn 40, S_tmin 0.05, S_tmax 50; euler_ancestral and
dpmpp_2m_sde eta 1; ddpm small variance; pc snr 0.16, one corrector step (score_sde's VE
setting). A solver added to ``SOLVERS`` later is included with the VP grid at 20 NFE and the
DEFAULT_ALLOWANCE until its own numbers are measured (``python tests/diffusion/test_solver_distributions.py
NAME`` prints them).

Measured max |error| over the 11 statistics (10^5 samples, seed 0; SE at n = 10^5 <= 0.0026),
with the statistic it is:

    solver            NFE 10   NFE 15   NFE 20   | tested NFE: error
    euler              0.081    0.056    0.043   |  20: 0.043 (weight_1)
    ddim               0.131    0.086    0.066   |  20: 0.066 (weight_1)
    heun               0.895      -      0.108   |  20: 0.108 (mean_0; NFE 2 per step, K = 5, 10)
    dpmpp_2m           0.159    0.066    0.032   |  20: 0.032 (mean_0)
    dpmpp_3m           0.165    0.109    0.039   |  20: 0.039 (mean_2)
    edm_stochastic     1.466      -      0.209   |  80: 0.018 (gauss_std)
    dpmpp_2m_sde       0.262    0.135    0.067   |  40: 0.013 (gauss_std)
    euler_ancestral    0.188    0.145    0.117   | 160: 0.019 (gauss_std)
    ddpm               0.173    0.124    0.099   | 160: 0.015 (gauss_std)
    pc                 0.470      -      0.212   | 160: 0.026 (std_2)
    unipc_2            0.049    0.011    0.0075  |  20: 0.0075 (std_1; VP grid)
    unipc_3            0.051    0.015    0.0061  |  20: 0.0061 (mean_1; VP grid)

So at 10-20 NFE the deterministic solvers are within 0.03-0.11 on data of scale ~1.5 (their
errors fall with NFE at their orders); the stochastic ones are not: 0.07-0.21 at 20 NFE. They
are tested where they come within ~0.02: EDM's Algorithm 2 at 80 NFE, DPM-Solver++(2M) SDE at
40, the first-order ancestral samplers (Euler ancestral, DDPM) at 160. pc (2 NFE per step)
does not converge to the data distribution as NFE grows: measured 0.21, 0.072, 0.028, 0.027 at
NFE 20, 40, 80, 160 (3 x 10^4 samples), its standard deviations staying ~0.02 too large. Its
corrector's step size eps ~ 2 a snr^2 Var(x_t) does not shrink with the step count, and an
unadjusted Langevin step of that size keeps a variance bias ~ snr^2 / (1 - snr^2) (2.6 % at
snr 0.16), larger in lower dimension, where ||z||^2 / ||score||^2 fluctuates (in 8
dimensions: 0.105 at 80 NFE, 0.116 at 160; in 256: 0.017 at 160). Its allowance is that floor.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from diffjax.diffusion import processes, solvers, time_grids

MEANS = np.array([-1.5, 0.4, 1.8])
STDS = np.array([0.3, 0.5, 0.2])
WEIGHTS = np.array([0.45, 0.35, 0.2])
GAUSS_MEAN, GAUSS_STD = 0.3, 0.5
DIM = 64
NUM_SAMPLES = 8192
REFERENCE_SAMPLES = 400_000

EDM_FAMILY = ("heun", "edm_stochastic", "euler_ancestral", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde")
PARAMETERS = {
    "edm_stochastic": dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0),
    "euler_ancestral": dict(eta=1.0),
    "dpmpp_2m_sde": dict(eta=1.0),
    "pc": dict(snr=0.16),
}
TESTED_NFE = {"edm_stochastic": 80, "dpmpp_2m_sde": 40, "euler_ancestral": 160, "ddpm": 160, "pc": 160}
DEFAULT_NFE = 20
ALLOWANCE = {  # 1.25 x the measured max |error| at the tested NFE (module docstring), rounded up
    "euler": 0.055, "ddim": 0.085, "heun": 0.135, "dpmpp_2m": 0.04, "dpmpp_3m": 0.05,
    "edm_stochastic": 0.025, "dpmpp_2m_sde": 0.02, "euler_ancestral": 0.025, "ddpm": 0.02, "pc": 0.035,
    "unipc_2": 0.01, "unipc_3": 0.01,
}
DEFAULT_ALLOWANCE = 0.05
STATISTICS = [f"{stat}_{k}" for k in range(3) for stat in ("weight", "mean", "std")] + ["gauss_mean", "gauss_std"]


def mixture_x0(xp, x, alpha, sigma):
    """E[x_0 | x_t = x] of the 1-D mixture, x [B]: responsibilities times each component's posterior mean."""
    variances, means, log_weights = (xp.asarray(a, x.dtype) for a in (STDS**2, MEANS, np.log(WEIGHTS)))
    component_var = alpha**2 * variances + sigma**2
    residual = x[:, None] - alpha * means
    log_density = log_weights - 0.5 * residual**2 / component_var - 0.5 * xp.log(component_var)
    log_density = log_density - log_density.max(axis=1, keepdims=True)
    responsibility = xp.exp(log_density)
    responsibility = responsibility / responsibility.sum(axis=1, keepdims=True)
    return (responsibility * (means + alpha * variances / component_var * residual)).sum(axis=1)


class ProductX0:
    """The exact data prediction of (mixture) x N(GAUSS_MEAN, GAUSS_STD^2)^63 under ``process``."""

    def __init__(self, process):
        self.process = process

    def __call__(self, x, t):
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        first = mixture_x0(jnp, x[:, 0], alpha, sigma)[:, None]
        rest = GAUSS_MEAN + alpha * GAUSS_STD**2 / (alpha**2 * GAUSS_STD**2 + sigma**2) * (x[:, 1:] - alpha * GAUSS_MEAN)
        return jnp.concatenate([first, rest], axis=1).astype(x.dtype)


def setup(name):
    """(process, grid function, NFE, parameters) of a solver, per the module docstring."""
    if name in EDM_FAMILY:
        process, grid_fn = processes.EDM(), time_grids.karras
    else:
        process, grid_fn = processes.VPLinear(), time_grids.uniform_log_snr
    return process, grid_fn, TESTED_NFE.get(name, DEFAULT_NFE), PARAMETERS.get(name, {})


@functools.partial(jax.jit, static_argnames=("name", "process", "denoise_x0"))
def run(name, process, denoise_x0, x_T, grid, key, parameters):
    step = functools.partial(solvers.SOLVERS[name].step, **parameters)
    return solvers.solve(step, process, denoise_x0, x_T, grid, key=key)


def mixture_marginal(rng, n, alpha, sigma):
    component = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    return alpha * (MEANS[component] + STDS[component] * rng.standard_normal(n)) + sigma * rng.standard_normal(n)


def mixture_statistics(x, alpha, sigma):
    """[weight, mean, std] per component of 1-D samples x, assigned by largest responsibility."""
    component_var = alpha**2 * STDS**2 + sigma**2
    log_density = np.log(WEIGHTS) - 0.5 * (x[:, None] - alpha * MEANS) ** 2 / component_var - 0.5 * np.log(component_var)
    assigned = log_density.argmax(axis=1)
    out = []
    for k in range(len(WEIGHTS)):
        members = x[assigned == k]
        out += [members.size / x.size, members.mean(), members.std()]
    return np.array(out)


def sample_errors(name, num_steps=None, num_samples=NUM_SAMPLES, seed=0):
    """(errors [11], standard errors [11] at num_samples, KS distance of the mixture coordinate)."""
    process, grid_fn, nfe, parameters = setup(name)
    if num_steps is None:
        num_steps = nfe // solvers.SOLVERS[name].nfe_per_step
    grid = grid_fn(process, num_steps)
    (alpha_T, sigma_T), (alpha_0, sigma_0) = (
        (float(process.alpha(grid[i])), float(process.sigma(grid[i]))) for i in (0, -1)
    )
    rng = np.random.default_rng(seed)
    gauss_scale_T = np.sqrt(alpha_T**2 * GAUSS_STD**2 + sigma_T**2)
    x_T = np.concatenate([
        mixture_marginal(rng, num_samples, alpha_T, sigma_T)[:, None],
        alpha_T * GAUSS_MEAN + gauss_scale_T * rng.standard_normal((num_samples, DIM - 1)),
    ], axis=1)
    parameters = {k: jnp.float32(v) for k, v in parameters.items()}
    x = run(name, process, ProductX0(process), jnp.asarray(x_T, jnp.float32), grid, jax.random.PRNGKey(seed), parameters)
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x)), name

    reference = mixture_marginal(rng, REFERENCE_SAMPLES, alpha_0, sigma_0)
    batches = reference[: REFERENCE_SAMPLES // num_samples * num_samples].reshape(-1, num_samples)
    batch_statistics = np.stack([mixture_statistics(b, alpha_0, sigma_0) for b in batches])
    gauss_scale_0 = np.sqrt(alpha_0**2 * GAUSS_STD**2 + sigma_0**2)
    pooled = num_samples * (DIM - 1)
    errors = np.concatenate([
        mixture_statistics(x[:, 0], alpha_0, sigma_0) - mixture_statistics(reference, alpha_0, sigma_0),
        [x[:, 1:].mean() - alpha_0 * GAUSS_MEAN, x[:, 1:].std() - gauss_scale_0],
    ])
    standard_errors = np.concatenate([
        batch_statistics.std(axis=0), [gauss_scale_0 / np.sqrt(pooled), gauss_scale_0 / np.sqrt(2.0 * pooled)],
    ])
    component_scale = np.sqrt(alpha_0**2 * STDS**2 + sigma_0**2)
    cdf = (WEIGHTS * ndtr((np.sort(x[:, 0])[:, None] - alpha_0 * MEANS) / component_scale)).sum(axis=1)
    ranks = np.arange(num_samples + 1) / num_samples
    ks = max(np.max(ranks[1:] - cdf), np.max(cdf - ranks[:-1]))
    return errors, standard_errors, ks


@pytest.mark.parametrize("name", list(solvers.SOLVERS))
@pytest.mark.slow
def test_solver_samples_the_mixture(name):
    """Weights, means and standard deviations within 4 SE + the solver's measured
    discretisation allowance (module docstring), and the mixture coordinate's Kolmogorov-Smirnov
    distance to the exact marginal's CDF within 1.95/sqrt(n) (p ~ 0.001) + the allowance."""
    errors, standard_errors, ks = sample_errors(name)
    allowance = ALLOWANCE.get(name, DEFAULT_ALLOWANCE)
    bad = [
        f"{stat}: error {e:+.4f} > 4 SE {4 * se:.4f} + {allowance}"
        for stat, e, se in zip(STATISTICS, errors, standard_errors) if abs(e) >= 4 * se + allowance
    ]
    assert not bad, (name, bad)
    assert ks < 1.95 / np.sqrt(NUM_SAMPLES) + allowance, (name, ks)


if __name__ == "__main__":  # python tests/diffusion/test_solver_distributions.py [NAME,...] [NFE,...]: the docstring's table
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(solvers.SOLVERS)
    nfes = [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else None
    for name in names:
        per_step = solvers.SOLVERS[name].nfe_per_step
        for nfe in nfes or sorted({10, 15, 20, setup(name)[2]}):
            if nfe % per_step:
                continue
            errors, standard_errors, ks = sample_errors(name, nfe // per_step, num_samples=100_000)
            worst = int(np.argmax(np.abs(errors)))
            print(f"{name:16s} NFE {nfe:4d}: max |error| {np.abs(errors).max():.4f} ({STATISTICS[worst]}), "
                  f"KS {ks:.4f}, SE <= {standard_errors.max():.4f}", flush=True)
