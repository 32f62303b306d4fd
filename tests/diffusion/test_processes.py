"""Noise processes in continuous time, their conversions and time grids, each checked
against a separate float64 NumPy derivation, everything called under jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import parameterization as param
from diffjax.diffusion import processes, schedules, time_grids

T = 1000
CONTINUOUS = {"vp_linear": processes.VPLinear(), "vp_cosine": processes.VPCosine(), "edm": processes.EDM()}


def discrete(name, respacing=None):
    schedule = schedules.named_schedule(name, T)
    if respacing is not None:
        schedule, _ = schedules.respace(schedule, respacing)
    return schedule, processes.discrete_process(schedule)


ALL_PROCESSES = {
    **CONTINUOUS,
    "discrete_linear": discrete("linear")[1],
    "discrete_cosine": discrete("cosine")[1],
    "discrete_respaced": discrete("linear", "10,20,30")[1],
}


@functools.partial(jax.jit, static_argnums=1)
def _call(process, method, x):
    return getattr(process, method)(x)


def jitted(process, method, x):
    """process.method(x) compiled (float32 x), with the process passed as a (pytree) argument."""
    return _call(process, method, jnp.asarray(x, jnp.float32))


# ---------------------------------------------------------------- closed forms


def test_vp_linear_from_its_sde():
    """alpha_t = exp(-1/2 int_0^t beta(s) ds) by the trapezoid rule on a fine grid (exact for a
    linear beta), sigma_t^2 = 1 - alpha_t^2, against the float32 process."""
    beta_min, beta_max = 0.1, 20.0
    s = np.linspace(0.0, 1.0, 100_001)
    beta = beta_min + s * (beta_max - beta_min)
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (beta[1:] + beta[:-1]) * np.diff(s))])
    alpha = np.exp(-0.5 * integral)
    np.testing.assert_allclose(alpha, np.exp(-0.25 * s**2 * (beta_max - beta_min) - 0.5 * s * beta_min), rtol=1e-12)
    t, alpha, sigma = s[100::997], alpha[100::997], np.sqrt(1.0 - alpha[100::997] ** 2)
    process = processes.VPLinear()
    np.testing.assert_allclose(jitted(process, "alpha", t), alpha, rtol=2e-6)
    np.testing.assert_allclose(jitted(process, "sigma", t), sigma, rtol=2e-6)
    np.testing.assert_allclose(jitted(process, "log_snr", t), np.log(alpha**2 / sigma**2), rtol=2e-6, atol=2e-6)


def test_vp_cosine_is_improved_ddpm():
    """alpha_t^2 = f(t)/f(0), f(t) = cos^2(((t + s)/(1 + s)) pi/2), s = 0.008 (improved DDPM eq. 17)."""
    s = 0.008
    t = np.concatenate([np.linspace(1e-3, 0.9946, 200), [1e-5, 0.9999]]).astype(np.float32).astype(np.float64)
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    alpha_bar = f(t) / f(0.0)
    process = processes.VPCosine()
    np.testing.assert_allclose(jitted(process, "alpha", t) ** 2, alpha_bar, rtol=5e-6)
    np.testing.assert_allclose(jitted(process, "log_alpha", t), 0.5 * np.log(alpha_bar), rtol=1e-6)
    np.testing.assert_allclose(jitted(process, "sigma", t) ** 2, 1.0 - alpha_bar, rtol=5e-6)
    assert process.t_max == 0.9946 and float(jitted(process, "alpha", 1.0)) == 0.0
    assert float(jitted(process, "log_snr", 1.0)) == -np.inf and float(jitted(process, "log_snr", 0.0)) == np.inf


def test_edm_sigma_is_log_linear():
    t = np.linspace(0.0, 1.0, 101)
    process = processes.EDM()
    np.testing.assert_allclose(jitted(process, "sigma", t), 0.002 * (80.0 / 0.002) ** t, rtol=3e-6)
    np.testing.assert_array_equal(jitted(process, "alpha", t), np.ones_like(t))
    np.testing.assert_allclose(jitted(process, "edm_sigma", [0.0, 1.0]), [0.002, 80.0], rtol=1e-6)
    np.testing.assert_allclose(jitted(process, "t_from_edm_sigma", [0.002, 80.0]), [0.0, 1.0], atol=1e-6)


@jax.jit
def _round_trips(process, t):
    lam = process.log_snr(t)
    return dict(
        lam=lam,
        t_from_lam=process.t_from_log_snr(lam),
        t_from_edm_sigma=process.t_from_edm_sigma(process.edm_sigma(t)),
        alpha=process.alpha(t),
        sigma=process.sigma(t),
    )


@pytest.mark.parametrize("name", ALL_PROCESSES)
def test_log_snr_decreases_and_inverts(name):
    """lambda is strictly decreasing on [t_min, t_max] and t(lambda(t)) = t to float32 precision,
    ends included; VP processes keep alpha^2 + sigma^2 = 1."""
    process = ALL_PROCESSES[name]
    t = jnp.linspace(process.t_min, process.t_max, 4001, dtype=jnp.float32)
    assert float(t[0]) == np.float32(process.t_min) and float(t[-1]) == np.float32(process.t_max)
    got = _round_trips(process, t)
    lam = got["lam"]
    assert lam.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(lam)))
    assert bool(jnp.all(jnp.diff(lam) < 0))
    np.testing.assert_allclose(got["t_from_lam"], t, rtol=0, atol=3e-7)
    np.testing.assert_allclose(got["t_from_edm_sigma"], t, rtol=0, atol=3e-7)
    if name != "edm":
        np.testing.assert_allclose(got["alpha"] ** 2 + got["sigma"] ** 2, 1.0, atol=1e-6)


def test_processes_are_pytrees_under_vmap():
    process = ALL_PROCESSES["discrete_linear"]
    leaves = jax.tree_util.tree_leaves(process)
    assert len(leaves) == 2 and jax.tree_util.tree_leaves(processes.VPLinear()) == []
    t = jnp.linspace(0.1, 0.9, 8)
    batched = jax.jit(jax.vmap(process.log_snr))(t)
    np.testing.assert_allclose(batched, process.log_snr(t), rtol=1e-6)
    alpha, sigma = process.alpha_sigma(t, ndim=4)
    assert alpha.shape == sigma.shape == (8, 1, 1, 1)
    assert processes.named_process("edm") == processes.EDM()
    with pytest.raises(ValueError, match="unknown noise process"):
        processes.named_process("ve")


# -------------------------------------------------------- discrete as continuous


@pytest.mark.parametrize("name,respacing", [("linear", None), ("cosine", None), ("linear", "10,20,30"), ("cosine", "ddim50")])
def test_discrete_process_reproduces_the_schedule(name, respacing):
    """On its knots t = (timestep_map + 1)/T the process gives the schedule's alpha_bar, and the
    network's step is the trained integer one."""
    schedule, process = discrete(name, respacing)
    steps = np.asarray(schedule.timestep_map)
    knots = (steps + 1.0) / T
    np.testing.assert_allclose(jitted(process, "alpha", knots) ** 2, schedule.alphas_cumprod, rtol=2e-6)
    np.testing.assert_allclose(jitted(process, "sigma", knots), schedule.sqrt_one_minus_alphas_cumprod, rtol=2e-6)
    np.testing.assert_array_equal(jitted(process, "model_step", knots), steps)
    assert jitted(process, "model_step", knots).dtype == jnp.int32
    np.testing.assert_allclose(jitted(process, "model_timestep", knots), steps, atol=1e-4)
    assert process.t_min == knots[0] and process.t_max == knots[-1] and process.original_num_timesteps == T


def test_discrete_process_between_and_outside_the_knots():
    """Halfway between two knots log alpha is the mean of theirs and the step is n + 1/2;
    below the first knot log alpha follows the first segment and is capped at 0."""
    schedule, process = discrete("linear")
    log_alpha = 0.5 * np.log(np.cumprod(1.0 - schedule.source.values))
    n = np.array([0, 10, 500, 998])
    middle = (n + 1.5) / T
    np.testing.assert_allclose(jitted(process, "log_alpha", middle), 0.5 * (log_alpha[n] + log_alpha[n + 1]), rtol=1e-5)
    np.testing.assert_allclose(jitted(process, "model_timestep", middle), n + 0.5, atol=1e-4)
    slope = (log_alpha[1] - log_alpha[0]) * T
    np.testing.assert_allclose(jitted(process, "log_alpha", 0.5 / T), log_alpha[0] - 0.5 * slope / T, rtol=1e-4)
    assert float(jitted(process, "log_alpha", 0.0)) == 0.0 and float(jitted(process, "model_step", 0.0)) == 0


def test_discrete_cosine_follows_the_continuous_cosine():
    """improved DDPM's T = 1000 cosine chain has alpha_bar_n = f((n + 1)/T)/f(0) until its betas
    are clipped at 0.999 (the last steps): there its continuous view is VPCosine."""
    knots = (np.arange(990) + 1.0) / T
    discrete_log_alpha = jitted(ALL_PROCESSES["discrete_cosine"], "log_alpha", knots)
    np.testing.assert_allclose(discrete_log_alpha, jitted(processes.VPCosine(), "log_alpha", knots), rtol=2e-6)


@pytest.mark.parametrize("name", schedules.BETA_SCHEDULES)
def test_every_beta_schedule_has_a_continuous_view(name):
    schedule, process = discrete(name)
    lam = jitted(process, "log_snr", (np.arange(T) + 1.0) / T)
    assert bool(jnp.all(jnp.isfinite(lam))) and bool(jnp.all(jnp.diff(lam) < 0))


# ----------------------------------------------------------------- conversions


@pytest.fixture
def float64_data():
    """x_0 and eps [6, 4, 3] and (alpha, sigma) [6, 1, 1] of VP and VE points, float64 under x64."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x0 = rng.uniform(-1.5, 1.5, (6, 4, 3))
        eps = rng.standard_normal((6, 4, 3))
        vp_alpha = np.array([0.9999, 0.9, 0.5, 0.05])
        alpha = np.concatenate([vp_alpha, [1.0, 1.0]]).reshape(6, 1, 1)
        sigma = np.concatenate([np.sqrt(1.0 - vp_alpha**2), [0.002, 80.0]]).reshape(6, 1, 1)
        yield x0, eps, alpha, sigma


def test_continuous_conversions_against_closed_forms(float64_data):
    x0, eps, alpha, sigma = float64_data
    x_t = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    score = -(x_t - alpha * x0) / sigma**2
    cases = {
        "x0_from_eps": (param.x0_from_eps, (x_t, eps, alpha, sigma), x0),
        "eps_from_x0": (param.eps_from_x0, (x_t, x0, alpha, sigma), eps),
        "v_from_x0_eps": (param.v_from_x0_eps, (x0, eps, alpha, sigma), v),
        "x0_from_v": (param.x0_from_v, (x_t, v, alpha, sigma), x0),
        "eps_from_v": (param.eps_from_v, (x_t, v, alpha, sigma), eps),
        "score_from_eps": (param.score_from_eps, (eps, sigma), score),
        "eps_from_score": (param.eps_from_score, (score, sigma), eps),
        "score_from_x0": (param.score_from_x0, (x_t, x0, alpha, sigma), score),
        "x0_from_score": (param.x0_from_score, (x_t, score, alpha, sigma), x0),
    }
    for name, (convert, args, expected) in cases.items():
        got = jax.jit(convert)(*map(jnp.asarray, args))
        assert got.dtype == jnp.float64 and got.shape == x0.shape, name
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max(), err_msg=name)


def test_continuous_conversions_round_trip(float64_data):
    """eps -> x0 -> v -> score -> eps, all at the same (x_t, alpha, sigma), returns eps."""
    x0, eps, alpha, sigma = map(jnp.asarray, float64_data)
    x_t = alpha * x0 + sigma * eps

    @jax.jit
    def around(eps):
        x0_hat = param.x0_from_eps(x_t, eps, alpha, sigma)
        v_hat = param.v_from_x0_eps(x0_hat, param.eps_from_x0(x_t, x0_hat, alpha, sigma), alpha, sigma)
        score = param.score_from_x0(x_t, param.x0_from_v(x_t, v_hat, alpha, sigma), alpha, sigma)
        return param.eps_from_score(score, sigma)

    np.testing.assert_allclose(around(eps), eps, rtol=1e-9, atol=1e-9)


def test_continuous_conversions_agree_with_the_discrete_ones():
    """At alpha = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t) the two views agree."""
    schedule = schedules.named_schedule("cosine", T)
    t = jnp.asarray([0, 10, 500, 990], jnp.int32)
    rng = np.random.default_rng(1)
    x_t, eps = (jnp.asarray(rng.standard_normal((4, 3, 2)), jnp.float32) for _ in range(2))
    alpha = schedules.at(schedule.sqrt_alphas_cumprod, t, 3)
    sigma = schedules.at(schedule.sqrt_one_minus_alphas_cumprod, t, 3)
    x0 = param.x0_from_eps(x_t, eps, alpha, sigma)
    np.testing.assert_allclose(x0, param.predict_x0_from_eps(schedule, x_t, t, eps), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(param.v_from_x0_eps(x0, eps, alpha, sigma), param.predict_v(schedule, x0, t, eps), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "edm", "discrete_cosine"])
def test_score_of_gaussian_data(name):
    """For data N(mu, s^2 I), eps from the exact posterior mean E[x_0 | x_t] gives the score of
    p_t = N(alpha mu, (alpha^2 s^2 + sigma^2) I): the closed form and jax.grad of its log
    density. In float64 (a float64 t makes the process compute in float64)."""
    process = ALL_PROCESSES[name]
    mu, s = 0.3, 0.7
    with jax.enable_x64(True):
        t = jnp.asarray([0.01, 0.2, 0.5, 0.9], jnp.float64)
        alpha, sigma = jax.jit(lambda p, t: p.alpha_sigma(t, ndim=3))(process, t)
        assert alpha.dtype == jnp.float64
        x_t = jnp.asarray(np.random.default_rng(2).standard_normal((4, 5, 2)) * 3.0)
        variance = alpha**2 * s**2 + sigma**2

        @jax.jit
        def score_via_eps(x_t):
            x0_mean = mu + alpha * s**2 / variance * (x_t - alpha * mu)
            return param.score_from_eps(param.eps_from_x0(x_t, x0_mean, alpha, sigma), sigma)

        def log_density(x_t):
            return jnp.sum(-0.5 * (x_t - alpha * mu) ** 2 / variance)

        expected = -(x_t - alpha * mu) / variance
        np.testing.assert_allclose(score_via_eps(x_t), expected, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(jax.jit(jax.grad(log_density))(x_t), expected, rtol=1e-12)


# ----------------------------------------------------------------------- grids


def grid_of(name, process, num_steps, **ends):
    return jax.jit(functools.partial(time_grids.GRIDS[name], num_steps=num_steps, **ends))(process)


@pytest.mark.parametrize("grid", time_grids.GRIDS)
def test_grid_shape_order_and_ends(grid):
    """K + 1 float32 times, strictly decreasing, from t_max to t_min exactly (default or given)."""

    @jax.jit
    def grids(process):
        make = time_grids.GRIDS[grid]
        return [make(process, k) for k in (1, 7, 50)] + [make(process, 5, t_max=0.8, t_min=0.2)]

    for name in ["vp_linear", "vp_cosine", "edm", "discrete_respaced"]:
        process = ALL_PROCESSES[name]
        *by_steps, custom = grids(process)
        for k, times in zip((1, 7, 50), by_steps):
            assert times.shape == (k + 1,) and times.dtype == jnp.float32, name
            assert float(times[0]) == np.float32(process.t_max) and float(times[-1]) == np.float32(process.t_min), name
            assert bool(jnp.all(jnp.diff(times) < 0)), name
        assert float(custom[0]) == np.float32(0.8) and float(custom[-1]) == np.float32(0.2), name
    with pytest.raises(ValueError, match="num_steps"):
        time_grids.GRIDS[grid](processes.EDM(), 0)


def test_uniform_and_quadratic_spacing():
    process = processes.VPLinear()
    np.testing.assert_allclose(np.diff(grid_of("uniform_t", process, 10)), -0.0999, rtol=1e-5)
    roots = np.sqrt(np.asarray(grid_of("quadratic", process, 10), np.float64))
    np.testing.assert_allclose(np.diff(roots), (np.sqrt(1e-3) - 1.0) / 10, rtol=1e-5)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "discrete_linear"])
def test_uniform_log_snr_is_uniform_in_log_snr(name):
    process = ALL_PROCESSES[name]
    times = grid_of("uniform_log_snr", process, 12)
    lam = np.asarray(jitted(process, "log_snr", times), np.float64)
    step = (lam[-1] - lam[0]) / 12
    np.testing.assert_allclose(np.diff(lam), step, rtol=1e-3)


def test_karras_matches_edm_eq5():
    """EDM's sigma_i = (80^(1/7) + i/K (0.002^(1/7) - 80^(1/7)))^7, mapped to t by the log-linear
    map t = log(sigma / 0.002) / log(80 / 0.002), in float64."""
    k, rho = 18, 7.0
    i = np.arange(k + 1)
    sigmas = (80.0 ** (1 / rho) + i / k * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    expected_t = np.log(sigmas / 0.002) / np.log(80.0 / 0.002)
    process = processes.EDM()
    times = grid_of("karras", process, k)
    np.testing.assert_allclose(times, expected_t, atol=5e-7)
    np.testing.assert_allclose(jitted(process, "edm_sigma", times), sigmas, rtol=1e-5)


def test_discrete_grids():
    """K + 1 trained steps from the top to step 0 at t = 1/T, per rule."""
    schedule, process = discrete("linear")
    even = time_grids.discrete_grid(T, 10, "even")
    assert even.shape == (11,) and even.dtype == jnp.float32
    np.testing.assert_array_equal(process.model_step(even), [999, 899, 799, 699, 599, 500, 400, 300, 200, 100, 0])
    np.testing.assert_array_equal(process.model_step(time_grids.discrete_grid(T, 10, "ddim_truncated")), np.arange(10, -1, -1) * 99)
    quad = np.asarray(process.model_step(time_grids.discrete_grid(T, 10, "ddim_quadratic_truncated")))
    np.testing.assert_array_equal(quad, (np.linspace(0, np.sqrt(800), 11) ** 2).astype(int)[::-1])
    for rule in time_grids.DISCRETE_RULES:
        times = time_grids.discrete_grid(T, 25, rule)
        assert float(times[-1]) == np.float32(1 / T) and bool(jnp.all(jnp.diff(times) < 0))
        np.testing.assert_allclose(process.model_timestep(times), np.round(process.model_timestep(times)), atol=1e-4)
    with pytest.raises(ValueError, match="unknown discrete grid rule"):
        time_grids.discrete_grid(T, 10, "log")
