"""DDPM's ancestral step and score_sde's predictor-corrector sampler (``solvers.sde``): the
ancestral step against the discrete sampler ``samplers.ddpm_step`` on a respaced chain, both
steps trajectory-wise against float64 NumPy re-derivations of the papers given the same noise,
reproducibility from a key, traced parameters, and their NFE."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import analytic, processes, samplers, schedules, solvers, time_grids
from diffjax.diffusion.parameterization import DiffusionSpec
from tests.diffusion.test_solvers import MEANS, STDS, WEIGHTS, MixtureX0, mixture_x0  # the same 2-D mixture

# The 2-D mixture of tests/diffusion/test_solvers.py and its exact data prediction (tests/support/mixtures.py).


@functools.partial(jax.jit, static_argnames=("name", "denoise_x0", "static", "denoise_to_zero", "return_trajectory"))
def run(name, process, denoise_x0, x_T, grid, key, parameters, static=(), denoise_to_zero=False, return_trajectory=False):
    step = functools.partial(solvers.SOLVERS[name].step, **parameters, **dict(static))
    return solvers.solve(
        step, process, denoise_x0, x_T, grid, key=key, denoise_to_zero=denoise_to_zero,
        return_trajectory=return_trajectory,
    )


# ------------------------------------------------ DDPM against the discrete sampler


@pytest.mark.parametrize("var_type, variance", [("fixed_small", "small"), ("fixed_large", "large")])
@pytest.mark.slow
def test_ddpm_matches_discrete_sampler_step_by_step(var_type, variance):
    """On ``discrete_process(schedule)`` over ``discrete_grid(T, K)`` the solver's K steps are
    ``samplers.ddpm_step`` on the chain respaced to the grid's K + 1 steps, from its last index
    down to index 1, given the same noise (step i's z = normal(fold_in(key, i)), handed to the
    discrete step as ``noise``): equal to float32 rounding before every step and after the
    last, which lands on step 0 (sigma > 0, noise added). The sampler's final step (index 0 to
    x_0, its mean x0-hat, no noise) is the solver's ``denoise_to_zero``."""
    T, K, B = 1000, 12, 64
    schedule = schedules.named_schedule("linear", T)
    respaced, _ = schedules.respace(schedule, schedules.space_timesteps(T, K + 1))
    denoise = analytic.gaussian_mixture_denoiser(schedule, MEANS, STDS, WEIGHTS)
    spec = DiffusionSpec("eps", var_type)
    key = jax.random.PRNGKey(1)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (B, 2))

    @jax.jit
    def discrete_chain(x):
        def body(x, i):  # index K - i of the respaced chain; index 0 is the last
            t = jnp.full((B,), K - i, jnp.int32)
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            output = denoise(None, x, respaced.timestep_map[t], None)
            x_prev, _ = samplers.ddpm_step(spec, respaced, output, x, t, None, False, noise=noise)
            return x_prev, x

        x, xs = jax.lax.scan(body, x, jnp.arange(K + 1))
        return xs, x

    expected_xs, expected_x0 = discrete_chain(x_T)
    process = processes.discrete_process(schedule)
    grid = time_grids.discrete_grid(T, K)
    denoise_x0 = solvers.x0_predictor(denoise, None, spec, process, round_steps=True)
    static = (("variance", variance),)
    final, trajectory = run("ddpm", process, denoise_x0, x_T, grid, key, {}, static, return_trajectory=True)
    got_xs = np.concatenate([np.asarray(trajectory["x"]), np.asarray(final)[None]])
    # measured max |difference| 6.0e-7 (small), 5.4e-7 (large)
    np.testing.assert_allclose(got_xs, expected_xs, rtol=0, atol=1e-5)
    denoised = run("ddpm", process, denoise_x0, x_T, grid, key, {}, static, denoise_to_zero=True)
    np.testing.assert_allclose(denoised, expected_x0, rtol=0, atol=1e-5)
    assert not np.allclose(expected_xs[-1], expected_xs[-2], atol=1e-2)  # the chain moved


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.slow
def test_ddpm_step_onto_zero_noise_is_the_data_prediction(variance):
    """A continuous grid ending at t = 0 (VP-linear: sigma = 0): the last step lands on the
    posterior mean alpha_0 D = D and adds no noise, with either variance."""
    process = processes.VPLinear()
    grid = jnp.append(time_grids.uniform_log_snr(process, 5), 0.0)
    x_T = jax.random.normal(jax.random.PRNGKey(3), (8, 2))
    final, trajectory = run(
        "ddpm", process, MixtureX0(process), x_T, grid, jax.random.PRNGKey(4), {}, (("variance", variance),),
        return_trajectory=True,
    )
    last_x = trajectory["x"][-1]
    np.testing.assert_allclose(final, MixtureX0(process)(last_x, grid[-2]), rtol=1e-6, atol=1e-6)


def test_transition_coefficients_keep_float32_precision_on_short_steps():
    """sigma^2_{t|s} / sigma_t^2 and the posterior coefficients on steps of 1e-5 in t near
    t_min and near t_max (VP-linear): float32 against the same formulas in float64, where the
    literal 1 - alpha_{t|s}^2 sigma_s^2 / sigma_t^2 would lose all digits in float32."""
    process = processes.VPLinear()
    for t_next, t_cur in [(1e-3, 1.01e-3), (0.99, 0.99001), (0.3, 0.30001)]:
        got = solvers.sde.transition_coefficients(process, jnp.float32(t_cur), jnp.float32(t_next))
        with jax.enable_x64(True):
            # The float32 times themselves, in float64: the reference has the same inputs.
            want = solvers.sde.transition_coefficients(
                process, jnp.float64(np.float32(t_cur)), jnp.float64(np.float32(t_next))
            )
            want = {k: float(v) for k, v in want.items()}
        for name in ("ratio", "x_coef", "x0_coef"):
            np.testing.assert_allclose(float(got[name]), want[name], rtol=2e-3, err_msg=(name, t_cur))


# -------------------------------------------- float64 NumPy re-derivations of the papers

BETA_MIN, BETA_MAX = 0.1, 20.0
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def vp_numpy(t):
    """score_sde's VP SDE: alpha_t = exp(-(1/2) int_0^t beta), sigma_t^2 = 1 - alpha_t^2."""
    alpha = np.exp(-0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN)
    return alpha, np.sqrt(1.0 - alpha**2)


def edm_numpy(t):
    """score_sde's VE SDE as EDM's process: alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t."""
    return 1.0, SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t


def reference(name, coefficients, x_T, grid, key, snr=0.16, corrector_steps=1, s_noise=1.0):
    """x before each step and at the end, float64. The noises are the solver's: step i's key is
    fold_in(key, i); DDPM draws its z from it, PC splits it into corrector_steps + 1 keys."""
    x, xs = np.asarray(x_T, np.float64), []
    for i in range(len(grid) - 1):
        xs.append(x)
        (a_t, s_t), (a_s, s_s) = coefficients(float(grid[i])), coefficients(float(grid[i + 1]))
        a_ts = a_t / a_s  # x_t = a_ts x_s + sqrt(var_ts) z
        var_ts = s_t**2 - a_ts**2 * s_s**2
        step_key = jax.random.fold_in(key, i)
        if name == "ddpm":  # Ho et al. 2020 eqs. 6-7 and Algorithm 2, for alpha_t, sigma_t
            z = np.asarray(jax.random.normal(step_key, x.shape, jnp.float32), np.float64)
            d = mixture_x0(np, x, a_t, s_t)
            mean = a_ts * s_s**2 / s_t**2 * x + a_s * var_ts / s_t**2 * d
            x = mean + np.sqrt(var_ts * s_s**2 / s_t**2) * s_noise * z
            continue
        # Song et al. 2021, appendix G: Langevin corrector (Algorithms 4/5) then reverse diffusion.
        keys = jax.random.split(step_key, corrector_steps + 1)
        noises = [np.asarray(jax.random.normal(k, x.shape, jnp.float32), np.float64) for k in keys]

        def score(x):
            return (a_t * mixture_x0(np, x, a_t, s_t) - x) / s_t**2

        for j in range(corrector_steps):
            z, g = noises[j], score(x)
            eps = 2.0 * a_ts**2 * (snr * np.linalg.norm(z, axis=1) / np.linalg.norm(g, axis=1)) ** 2
            x = x + eps[:, None] * g + np.sqrt(2.0 * eps)[:, None] * s_noise * z
        f = (a_ts - 1.0) * x  # forward: x_t = x_s + f(x_s) + G z, G^2 = var_ts
        x = x - f + var_ts * score(x) + np.sqrt(var_ts) * s_noise * noises[-1]
    return np.stack(xs), x


@pytest.mark.parametrize("name, parameters", [
    ("ddpm", {}), ("pc", dict(snr=0.16)), ("pc", dict(snr=0.3, s_noise=0.9)),
])
@pytest.mark.parametrize("process_name, grid_name", [("vp_linear", "uniform_log_snr"), ("edm", "karras")])
def test_trajectory_matches_numpy_rederivation(name, parameters, process_name, grid_name):
    """float32 solver against float64 NumPy with the same noises: within 2e-5 relative to the
    state's scale at every step (as the deterministic solvers' re-derivations)."""
    process = processes.named_process(process_name)
    coefficients = vp_numpy if process_name == "vp_linear" else edm_numpy
    grid = time_grids.GRIDS[grid_name](process, 10)
    x_T = np.random.default_rng(0).standard_normal((16, 2)) * float(process.sigma(grid[0]))
    key = jax.random.PRNGKey(5)
    traced = {k: jnp.float32(v) for k, v in parameters.items()}
    final, trajectory = run(name, process, MixtureX0(process), jnp.asarray(x_T, jnp.float32), grid, key, traced,
                            return_trajectory=True)
    expected_xs, expected_final = reference(name, coefficients, x_T, np.asarray(grid), key, **parameters)
    for i, (got, want) in enumerate(zip([*np.asarray(trajectory["x"]), np.asarray(final)], [*expected_xs, expected_final])):
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * scale, err_msg=f"step {i}")


@pytest.mark.slow
def test_pc_corrector_runs_before_the_predictor_with_its_nfe():
    """corrector_steps = M traces the denoiser M + 1 times per step (NFE 1 + M), all at t_cur;
    with M = 0 and a grid step the PC step is the reverse-diffusion predictor alone, and the
    corrector changes the result."""
    calls = []
    process = processes.VPLinear()

    def counting_x0(x, t):
        calls.append(t)
        return MixtureX0(process)(x, t)

    grid = time_grids.uniform_log_snr(process, 4)
    x_T = jax.random.normal(jax.random.PRNGKey(6), (8, 2))
    for steps in (0, 1, 3):
        calls.clear()
        step = functools.partial(solvers.pc_step, corrector_steps=steps)
        jax.jit(lambda x: solvers.solve(step, process, counting_x0, x, grid, key=jax.random.PRNGKey(7)))(x_T)
        assert len(calls) == steps + 1, (steps, len(calls))
    assert solvers.SOLVERS["pc"].nfe_per_step == 2 and solvers.SOLVERS["ddpm"].nfe_per_step == 1
    assert solvers.SOLVERS["ddpm"].stochastic and solvers.SOLVERS["pc"].stochastic


def test_invalid_static_parameters_raise():
    process = processes.VPLinear()
    grid = time_grids.uniform_log_snr(process, 2)
    x_T = jnp.ones((2, 2))
    with pytest.raises(ValueError, match="variance"):
        solvers.solve(functools.partial(solvers.ddpm_ancestral_step, variance="medium"), process, MixtureX0(process), x_T, grid)
    with pytest.raises(ValueError, match="corrector_steps"):
        solvers.solve(functools.partial(solvers.pc_step, corrector_steps=-1), process, MixtureX0(process), x_T, grid)


# --------------------------------------------------- keys and traced parameters


@pytest.mark.parametrize("name", ["ddpm", "pc"])
def test_reproducible_from_a_key(name):
    """One key gives the same samples; another key other samples."""
    process = processes.VPLinear()
    grid = time_grids.uniform_log_snr(process, 8)
    x_T = jax.random.normal(jax.random.PRNGKey(8), (16, 2))
    draw = functools.partial(run, name, process, MixtureX0(process), x_T, grid, parameters={})
    first, again, other = draw(key=jax.random.PRNGKey(9)), draw(key=jax.random.PRNGKey(9)), draw(key=jax.random.PRNGKey(10))
    np.testing.assert_array_equal(first, again)
    assert np.all(np.isfinite(first)) and not np.allclose(first, other)


def test_parameters_are_traced_without_recompilation():
    """s_noise (both), snr (pc) and the key are traced: new values reuse the compiled sampler and
    change the samples; ``variance`` and ``corrector_steps`` are static."""
    traces = []
    process = processes.EDM()
    grid = time_grids.karras(process, 6)
    x_T = 80.0 * jax.random.normal(jax.random.PRNGKey(11), (8, 2))

    @jax.jit
    def sample(key, s_noise, snr):
        traces.append(None)
        ddpm = functools.partial(solvers.ddpm_ancestral_step, s_noise=s_noise)
        pc = functools.partial(solvers.pc_step, snr=snr, s_noise=s_noise)
        return [solvers.solve(step, process, MixtureX0(process), x_T, grid, key=key) for step in (ddpm, pc)]

    first = sample(jax.random.PRNGKey(0), 1.0, 0.16)
    second = sample(jax.random.PRNGKey(0), 0.5, 0.05)
    third = sample(jax.random.PRNGKey(1), 1.0, 0.16)
    assert len(traces) == 1
    assert all(not np.allclose(a, b) for a, b in zip(first, second))
    assert all(not np.allclose(a, b) for a, b in zip(first, third))
