"""Schedules against the papers' numbers and an independent float64 re-derivation."""

import math

import jax
import numpy as np
import pytest

from diffjax import schedules

RTOL = 1e-5


@np.errstate(divide="ignore")  # jsd ends at beta = 1: alpha_bar_{T-1} = 0
def reference_tables(betas):
    """float64 tables written out step by step from the DDPM / improved DDPM definitions."""
    T = len(betas)
    alpha_bar = np.empty(T)
    running = 1.0
    for i, beta in enumerate(betas):
        running *= 1.0 - beta
        alpha_bar[i] = running
    prev = np.array([1.0] + list(alpha_bar[:-1]))
    nxt = np.array(list(alpha_bar[1:]) + [0.0])
    post_var = np.array([betas[i] * (1 - prev[i]) / (1 - alpha_bar[i]) for i in range(T)])
    return {
        "betas": betas,
        "alphas": 1 - betas,
        "alphas_cumprod": alpha_bar,
        "alphas_cumprod_prev": prev,
        "alphas_cumprod_next": nxt,
        "sqrt_alphas_cumprod": alpha_bar**0.5,
        "sqrt_one_minus_alphas_cumprod": (1 - alpha_bar) ** 0.5,
        "log_one_minus_alphas_cumprod": np.log(1 - alpha_bar),
        "sqrt_recip_alphas_cumprod": alpha_bar**-0.5,
        "sqrt_recipm1_alphas_cumprod": (1 / alpha_bar - 1) ** 0.5,
        "log_betas": np.log(betas),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        "posterior_mean_coef1": betas * prev**0.5 / (1 - alpha_bar),
        "posterior_mean_coef2": (1 - prev) * (1 - betas) ** 0.5 / (1 - alpha_bar),
    }


@pytest.mark.parametrize("name", sorted(schedules.BETA_SCHEDULES))
@pytest.mark.parametrize("T", [50, 1000, 4000])
def test_tables_match_float64_rederivation(name, T):
    schedule = schedules.named_schedule(name, T)
    betas = schedules.get_betas(name, T)
    for field, expected in reference_tables(betas).items():
        actual = np.asarray(getattr(schedule, field))
        assert actual.dtype == np.float32, field
        np.testing.assert_allclose(actual, expected.astype(np.float32), rtol=RTOL, atol=0, err_msg=field)
    np.testing.assert_array_equal(np.asarray(schedule.timestep_map), np.arange(T))
    assert schedule.num_timesteps == T == schedule.original_num_timesteps


# (name, T): beta[0], beta[1], beta[T/2], beta[T-2], beta[T-1], alpha_bar[T-1]  (reference.md §8.1)
PAPER_BETAS = {
    ("linear", 1000): (1.0e-4, 1.19920e-4, 1.00600e-2, 1.99801e-2, 0.02, 4.03583e-5),
    ("linear", 4000): (2.5e-5, 2.62441e-5, 2.51312e-3, 4.99876e-3, 5.0e-3, 4.24665e-5),
    ("cosine", 1000): (4.12842e-5, 4.61418e-5, 3.15569e-3, 0.749999, 0.999, 2.42877e-9),
    ("cosine", 4000): (9.86582e-6, 1.01694e-5, 7.88936e-4, 0.75, 0.999, 1.51798e-10),
}


@pytest.mark.parametrize("name,T", sorted(PAPER_BETAS))
def test_known_values(name, T):
    schedule = schedules.named_schedule(name, T)
    betas = np.asarray(schedule.betas)
    actual = (betas[0], betas[1], betas[T // 2], betas[T - 2], betas[T - 1], float(schedule.alphas_cumprod[-1]))
    np.testing.assert_allclose(actual, PAPER_BETAS[(name, T)], rtol=2e-5)


def test_linear_known_arrays():
    s = schedules.named_schedule("linear", 1000)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[[0, 1, 500, 999]], [0.9999, 0.999780092, 7.77966584e-2, 4.03582977e-5], rtol=1e-6)
    np.testing.assert_allclose(float(s.posterior_variance[1]), 5.45318766e-5, rtol=1e-6)
    assert float(s.posterior_variance[0]) == 0.0
    np.testing.assert_allclose(np.asarray(s.posterior_log_variance_clipped)[[0, 1, 500, 999]], [-9.816725, -9.816725, -4.600050, -3.912024], rtol=1e-6)
    c = schedules.named_schedule("cosine", 4000)
    np.testing.assert_allclose(float(c.alphas_cumprod[2000]), 0.493453980, rtol=1e-6)
    np.testing.assert_allclose(float(c.posterior_log_variance_clipped[0]), -12.204537, rtol=1e-6)


@pytest.mark.parametrize("T", [1000, 4000])
def test_cosine_follows_cos_squared(T):
    s = 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    expected = np.array([f((i + 1) / T) / f(0) for i in range(T)])
    alpha_bar = np.asarray(schedules.named_schedule("cosine", T).alphas_cumprod)
    # Exact up to the last step, where beta is clipped to 0.999.
    np.testing.assert_allclose(alpha_bar[:-1], expected[:-1], rtol=RTOL)
    assert np.asarray(schedules.get_betas("cosine", T)).max() == pytest.approx(0.999)


def test_other_schedules_definitions():
    T = 1000
    np.testing.assert_allclose(schedules.get_betas("quadratic", T), np.linspace(1e-2, 0.02**0.5, T) ** 2)
    np.testing.assert_allclose(schedules.get_betas("constant", T), np.full(T, 0.02))
    np.testing.assert_allclose(schedules.get_betas("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 1.0])
    sig = schedules.get_betas("sigmoid", T)
    assert np.all(np.diff(sig) > 0) and 1e-4 < sig[0] < sig[-1] < 0.02


def test_linear_with_too_few_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="betas must lie in"):
        schedules.named_schedule("linear", 10)  # 0.02 * 1000/10 = 2


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown beta schedule 'cosin'.*cosine"):
        schedules.get_betas("cosin", 1000)


# ----------------------------------------------------------------------- respacing

SPACINGS = {  # reference.md §2.4
    (1000, "ddim50"): list(range(0, 1000, 20)),
    (4000, "ddim50"): list(range(0, 4000, 80)),
}


def test_space_timesteps_known_sets():
    for (T, spec), expected in SPACINGS.items():
        assert schedules.space_timesteps(T, spec) == expected
    fifty = schedules.space_timesteps(1000, "50")
    assert fifty[:6] == [0, 20, 41, 61, 82, 102] and fifty[-3:] == [958, 979, 999] and len(fifty) == 50
    two_fifty = schedules.space_timesteps(1000, "250")
    assert two_fifty[:3] == [0, 4, 8] and two_fifty[-3:] == [991, 995, 999]
    hundred = schedules.space_timesteps(4000, "100")
    assert hundred[:4] == [0, 40, 81, 121] and hundred[-2:] == [3959, 3999]
    assert schedules.space_timesteps(4000, "25")[:4] == [0, 167, 333, 500]
    sections = schedules.space_timesteps(300, "10,15,20")
    assert len(sections) == 45 and sections[:2] == [0, 11] and sections[-1] == 299
    assert schedules.space_timesteps(300, [10, 15, 20]) == sections
    assert schedules.space_timesteps(10, "") == list(range(10))


@pytest.mark.parametrize("bad", ["ddimx", "abc", "0", "2000", "ddim999", "10,0"])
def test_space_timesteps_bad_strings(bad):
    with pytest.raises(ValueError):
        schedules.space_timesteps(1000, bad)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respace_all_steps_is_identity(name):
    schedule = schedules.named_schedule(name, 1000)
    respaced, timestep_map = schedules.respace(schedule, "1000")
    np.testing.assert_array_equal(timestep_map, np.arange(1000))
    for field in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped"):
        np.testing.assert_allclose(getattr(respaced, field), getattr(schedule, field), rtol=1e-6, err_msg=field)


@pytest.mark.parametrize("name,T,spacing", [("linear", 1000, "ddim50"), ("linear", 1000, "50"), ("cosine", 4000, "100"), ("cosine", 1000, "10,5,20")])
def test_respace_keeps_alphas_cumprod(name, T, spacing):
    schedule = schedules.named_schedule(name, T)
    respaced, timestep_map = schedules.respace(schedule, spacing)
    kept = schedules.space_timesteps(T, spacing)
    np.testing.assert_array_equal(timestep_map, kept)
    np.testing.assert_array_equal(np.asarray(respaced.timestep_map), kept)
    alpha_bar64 = np.cumprod(1 - schedules.get_betas(name, T))
    np.testing.assert_allclose(respaced.alphas_cumprod, alpha_bar64[kept].astype(np.float32), rtol=1e-6)
    assert respaced.num_timesteps == len(kept) and respaced.original_num_timesteps == T
    # the shorter chain's own posterior variances
    np.testing.assert_allclose(respaced.posterior_variance, reference_tables(respaced.source.values)["posterior_variance"], rtol=RTOL)


def test_respaced_known_betas():
    linear = schedules.named_schedule("linear", 1000)
    r, _ = schedules.respace(linear, "ddim50")
    np.testing.assert_allclose(np.asarray(r.betas)[[0, 1, -1]], [1e-4, 6.16519e-3, 0.324614], rtol=1e-5)
    r, _ = schedules.respace(linear, "50")
    np.testing.assert_allclose(float(r.betas[-1]), 0.329809, rtol=1e-5)
    r, _ = schedules.respace(schedules.named_schedule("cosine", 4000), "100")
    np.testing.assert_allclose(np.asarray(r.betas)[[1, -1]], [6.43421e-4, 0.9999994], rtol=1e-5)


def test_respace_composes():
    schedule = schedules.named_schedule("linear", 1000)
    once, map_once = schedules.respace(schedule, "ddim100")
    twice, map_twice = schedules.respace(once, list(range(0, 100, 2)))
    np.testing.assert_array_equal(map_twice, map_once[::2])
    np.testing.assert_allclose(twice.alphas_cumprod, np.asarray(schedule.alphas_cumprod)[map_twice], rtol=1e-6)
    assert twice.original_num_timesteps == 1000


def test_schedule_is_a_pytree_under_jit():
    schedule = schedules.named_schedule("linear", 100)
    calls = []

    @jax.jit
    def total(s):
        calls.append(1)
        return s.alphas_cumprod.sum() + s.timestep_map.sum()

    total(schedule)
    total(schedules.named_schedule("linear", 100))  # equal schedule: no retrace
    assert len(calls) == 1
    respaced, _ = schedules.respace(schedule, "10")
    np.testing.assert_allclose(total(respaced), np.asarray(respaced.alphas_cumprod).sum() + sum(respaced.timestep_map.tolist()), rtol=1e-6)
