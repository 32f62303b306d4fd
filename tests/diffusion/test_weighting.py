"""Objectives as weightings of the x_0 error (Kingma & Gao 2023): the eps / x_0 / v error
identities, each weighting against the loss ``losses.training_losses`` computes on the same
inputs (float64 schedules under x64), the ELBO against VDM's continuous and discrete losses,
EDM's weighting against ``edm``, and jit / shapes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import edm, losses, processes, schedules, weighting
from diffjax.diffusion import parameterization as param
from diffjax.diffusion.losses import Objective
from diffjax.diffusion.parameterization import DiffusionSpec

T = 1000
STEPS = np.array([0, 1, 5, 60, 250, 500, 750, 999])
SHAPE = (STEPS.size, 4, 4, 3)


@pytest.fixture(params=["linear", "cosine"])
def case(request):
    """Under x64: a float64 schedule, t, x0, eps, x_t, log-SNR and one prediction read as
    x0-hat, eps-hat and v-hat (exact conversions at x_t)."""
    with jax.enable_x64(True):
        betas = schedules.get_betas(request.param, T)
        schedule = schedules.make_schedule(betas, dtype=jnp.float64)
        alpha_bar = np.cumprod(1.0 - betas)[STEPS]
        alpha = np.sqrt(alpha_bar).reshape(-1, 1, 1, 1)
        sigma = np.sqrt(1.0 - alpha_bar).reshape(-1, 1, 1, 1)
        rng = np.random.default_rng(0)
        x0 = rng.uniform(-1, 1, SHAPE)
        eps = rng.standard_normal(SHAPE)
        x_t = alpha * x0 + sigma * eps
        x0_hat = x0 + 0.3 * rng.standard_normal(SHAPE)
        eps_hat = np.asarray(param.eps_from_x0(jnp.asarray(x_t), jnp.asarray(x0_hat), alpha, sigma))
        yield dict(
            schedule=schedule, t=jnp.asarray(STEPS, jnp.int32), x0=x0, eps=eps, x_t=x_t,
            x0_hat=x0_hat, eps_hat=eps_hat, v=alpha * eps - sigma * x0, v_hat=alpha * eps_hat - sigma * x0_hat,
            log_snr=np.log(alpha_bar / (1.0 - alpha_bar)), alpha=alpha, sigma=sigma,
            eps_rtol=eps_space_rtol(eps, eps_hat),
        )


def eps_space_rtol(eps, eps_hat):
    """Per-example relative tolerance of anything computed from eps-hat - eps.

    eps-hat is derived from x0-hat, and at the noisiest steps (cosine t = 999: alpha/sigma ~ 4e-5)
    eps-hat - eps is ~1e-5 of eps itself, so storing eps-hat in float64 already costs a
    relative error of about eps_64 |eps| / |eps-hat - eps| in the difference (here ~1e-11).
    The tolerance is 4 eps_64 rms(|eps| + |eps-hat|) / rms(eps-hat - eps), and 1e-12 where that is smaller.
    """
    size = np.sqrt(np.mean((np.abs(eps) + np.abs(eps_hat)) ** 2, axis=(1, 2, 3)))
    diff = np.sqrt(np.mean((eps_hat - eps) ** 2, axis=(1, 2, 3)))
    return np.maximum(1e-12, 4 * np.finfo(np.float64).eps * size / diff)


def assert_close(actual, desired, rtol, err_msg=""):
    """|actual - desired| <= rtol |desired| elementwise, rtol per example (broadcast)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    error = np.abs(actual - desired) / np.abs(desired)
    assert np.all(error <= rtol), (err_msg, error, rtol)


def mse(a, b):
    return np.mean((np.asarray(a) - np.asarray(b)) ** 2, axis=(1, 2, 3))


def test_error_identities(case):
    """||eps-hat - eps||^2 = SNR ||x0-hat - x0||^2 and ||v-hat - v||^2 = (1 + SNR) ||x0-hat - x0||^2
    (alpha^2 + sigma^2 = 1), per example. eps-hat is (x_t - alpha x0-hat)/sigma: at t = 0 (sigma
    = 0.01) its rounding is ~ eps_64 |x_t| / sigma against an error of size 0.3 alpha / sigma,
    so 1e-12 relative holds with room."""
    snr = np.exp(case["log_snr"])
    e_x0 = mse(case["x0_hat"], case["x0"])
    assert_close(mse(case["eps_hat"], case["eps"]), snr * e_x0, case["eps_rtol"])
    np.testing.assert_allclose(mse(case["v_hat"], case["v"]), (1.0 + snr) * e_x0, rtol=1e-12)


def training_loss(case, mean_type, weighting_name="none", gamma=5.0):
    """``losses.training_losses``'s loss for the spec whose output is this case's prediction."""
    output = {"eps": case["eps_hat"], "x0": case["x0_hat"], "v": case["v_hat"]}[mean_type]
    with jax.enable_x64(True):
        terms = losses.training_losses(
            DiffusionSpec(mean_type=mean_type), Objective("simple", weighting=weighting_name, snr_gamma=gamma),
            case["schedule"], jnp.asarray(output), jnp.asarray(case["x0"]), jnp.asarray(case["x_t"]),
            case["t"], jnp.asarray(case["eps"]),
        )
    return np.asarray(terms["loss"])


def level_loss(case, name, base="x0", **kwargs):
    with jax.enable_x64(True):
        args = (jnp.asarray(case[k]) for k in ("x0_hat", "x0", "eps_hat", "eps", "log_snr"))
        return np.asarray(jax.jit(lambda *a: weighting.per_level_loss(name, *a, base=base, **kwargs))(*args))


def test_simple_losses_are_weightings_of_the_x0_error(case):
    """L_simple for eps, x0 and v predictions (losses.py, weighting none) is the x_0 error
    weighted by SNR, 1 and 1 + SNR; losses.py's ``snr`` weighting (x_0 weight SNR) in any
    parameterisation is ``eps_mse``."""
    assert_close(level_loss(case, "eps_mse"), training_loss(case, "eps"), case["eps_rtol"])
    np.testing.assert_allclose(level_loss(case, "x0_mse"), training_loss(case, "x0"), rtol=1e-12)
    np.testing.assert_allclose(level_loss(case, "v_mse"), training_loss(case, "v"), rtol=1e-12)
    for mean_type in ("eps", "x0", "v"):
        rtol = case["eps_rtol"] if mean_type == "eps" else 1e-12
        assert_close(level_loss(case, "eps_mse"), training_loss(case, mean_type, "snr"), rtol, mean_type)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_matches_losses_for_every_target(case, gamma):
    """min-SNR-gamma: losses.py's ``min_snr`` with eps, x0 and v outputs equals min(SNR, gamma)
    ||x0-hat - x0||^2, and ``target_weight`` is Hang et al.'s per-target weight written out."""
    expected = level_loss(case, "min_snr", gamma=gamma)
    for mean_type in ("eps", "x0", "v"):
        rtol = case["eps_rtol"] if mean_type == "eps" else 1e-12
        assert_close(training_loss(case, mean_type, "min_snr", gamma), expected, rtol, mean_type)
    snr = np.exp(case["log_snr"])
    hang = {"eps": np.minimum(snr, gamma) / snr, "x0": np.minimum(snr, gamma), "v": np.minimum(snr, gamma) / (snr + 1)}
    with jax.enable_x64(True):
        for target, weight in hang.items():
            got = weighting.target_weight("min_snr", target, jnp.asarray(case["log_snr"]), gamma=gamma)
            np.testing.assert_allclose(got, weight, rtol=1e-14, err_msg=target)
        # L_simple in its own space has weight 1
        for name, target in (("eps_mse", "eps"), ("x0_mse", "x0"), ("v_mse", "v")):
            np.testing.assert_allclose(weighting.target_weight(name, target, jnp.asarray(case["log_snr"])), 1.0, rtol=1e-14)


def test_eps_and_x0_bases_agree(case):
    log_density = np.full(STEPS.size, -1.7)
    for name in weighting.WEIGHTINGS:
        on_x0 = level_loss(case, name, "x0", log_density=jnp.asarray(log_density))
        on_eps = level_loss(case, name, "eps", log_density=jnp.asarray(log_density))
        assert_close(on_eps, on_x0, case["eps_rtol"], name)


# ------------------------------------------------------------------------ EDM


def test_edm_weighting_is_edm_lambda_of_sigma():
    """W(lambda) = lambda_EDM(sigma) at sigma = e^{-lambda/2}, for sigma_d 0.5 and 0.2; the
    per-level loss is ``edm.denoiser_loss``; Kingma & Gao's w under EDM's log-normal sigma is
    2 N(lambda; 2.4, 2.4^2)(e^{-lambda} + 0.5^2)/0.5^2 (their Table 1, times L_w's 2)."""
    lam = np.linspace(-20, 20, 81)
    with jax.enable_x64(True):
        for sd in (0.5, 0.2):
            column = edm.EDMPrecond(sigma_data=sd)
            np.testing.assert_allclose(
                weighting.x0_weight("edm", jnp.asarray(lam), sigma_data=sd),
                column.loss_weight(jnp.exp(-jnp.asarray(lam) / 2)), rtol=1e-13,
            )
        rng = np.random.default_rng(4)
        x0 = rng.uniform(-1, 1, (81, 6))
        x0_hat = x0 + rng.standard_normal((81, 6))
        got = weighting.per_level_loss("edm", jnp.asarray(x0_hat), jnp.asarray(x0), None, None, jnp.asarray(lam))
        np.testing.assert_allclose(got, edm.denoiser_loss("edm", jnp.asarray(x0_hat), jnp.asarray(x0), jnp.exp(-lam / 2)), rtol=1e-13)
        log_density = edm.EDMPrecond().log_snr_log_density(jnp.asarray(lam))
        w = weighting.kingma_gao_weight("edm", jnp.asarray(lam), log_density)
    normal = np.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(w, 2 * normal * (np.exp(-lam) + 0.25) / 0.25, rtol=1e-12)


# ----------------------------------------------------------------------- ELBO


def test_elbo_is_vdm_continuous_loss_under_uniform_t():
    """With t ~ U(0, 1) on VP-linear, the ELBO weighting with p(lambda) from
    ``log_density_uniform_t`` is VDM's 1/2 (-lambda'(t)) mean ||eps-hat - eps||^2, lambda'(t)
    written out in float64: lambda = -ln expm1(g), g = (beta_max - beta_min) t^2/2 + beta_min t,
    lambda' = -g'(t) / (1 - e^{-g}). Kingma & Gao's w is then 1."""
    process = processes.VPLinear()
    t = np.array([1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    g = 0.5 * 19.9 * t**2 + 0.1 * t
    dlam_dt = -(19.9 * t + 0.1) / -np.expm1(-g)
    lam = -np.log(np.expm1(g))
    rng = np.random.default_rng(5)
    eps = rng.standard_normal((t.size, 3, 2))
    eps_hat = eps + 0.1 * rng.standard_normal(eps.shape)
    with jax.enable_x64(True):
        log_density = jax.jit(lambda lam_: weighting.log_density_uniform_t(process, lam_))(jnp.asarray(lam))
        np.testing.assert_allclose(np.exp(log_density), 1.0 / np.abs(dlam_dt), rtol=1e-13)
        got = weighting.per_level_loss(
            "elbo", None, None, jnp.asarray(eps_hat), jnp.asarray(eps), jnp.asarray(lam), log_density=log_density, base="eps"
        )
        w = weighting.kingma_gao_weight("elbo", jnp.asarray(lam), log_density)
        # outside the sampled range the density is 0
        assert float(weighting.log_density_uniform_t(process, jnp.asarray(lam[-1] - 1.0))) == -np.inf
    np.testing.assert_allclose(got, 0.5 * -dlam_dt * mse(eps_hat[..., None], eps[..., None]), rtol=1e-13)
    np.testing.assert_allclose(w, 1.0, rtol=1e-14)
    with pytest.raises(ValueError, match="log_density"):
        weighting.x0_weight("elbo", jnp.zeros(3))


def test_uniform_t_density_matches_edm_vp_column():
    """Two routes to p(lambda) for VP's training t ~ U(1e-5, 1): autodiff of ``VPLinear`` and
    the closed form of ``edm.VPPrecond``."""
    lam = np.linspace(-10.0, 20.0, 31)
    with jax.enable_x64(True):
        by_autodiff = weighting.log_density_uniform_t(processes.VPLinear(0.1, 20.0), jnp.asarray(lam), 1e-5, 1.0)
        closed = edm.VPPrecond().log_snr_log_density(jnp.asarray(lam))
    np.testing.assert_allclose(by_autodiff, closed, rtol=1e-13, atol=1e-13)


def test_discrete_vlb_term_is_half_the_snr_difference(case):
    """DDPM's L_{t-1} with the posterior variance (losses.vb_terms_bpd, x0 output, fixed_small),
    in nats, equals ``vlb_step_weight`` = 1/2 (SNR_{t-1} - SNR_t) times the x_0 error, t > 0."""
    keep = STEPS > 0
    steps = STEPS[keep]
    alpha_bar = np.asarray(case["schedule"].alphas_cumprod)
    log_snr = np.log(alpha_bar / (1 - alpha_bar))
    with jax.enable_x64(True):
        vb = losses.vb_terms_bpd(
            DiffusionSpec(mean_type="x0", var_type="fixed_small"), case["schedule"],
            jnp.asarray(case["x0_hat"][keep]), jnp.asarray(case["x0"][keep]), jnp.asarray(case["x_t"][keep]),
            jnp.asarray(steps, jnp.int32),
        )["vb"]
        weight = weighting.vlb_step_weight(jnp.asarray(log_snr[steps - 1]), jnp.asarray(log_snr[steps]))
    # the KL subtracts two posterior means that share coef2 x_t, so it keeps fewer digits than
    # float64 has (measured: 1.2e-12 relative on the cosine schedule)
    np.testing.assert_allclose(np.asarray(vb) * math.log(2.0), weight * mse(case["x0_hat"][keep], case["x0"][keep]), rtol=1e-11)
    snr = alpha_bar / (1 - alpha_bar)
    np.testing.assert_allclose(weight, 0.5 * (snr[steps - 1] - snr[steps]), rtol=1e-12)


# ------------------------------------------------------------ registry, shapes


def test_registry_is_documented_and_shapes():
    for name, entry in weighting.WEIGHTINGS.items():
        assert entry.name == name and entry.formula and entry.reference
        assert f"``{name}``" in weighting.__doc__
    x = jnp.ones((5, 8, 8, 3), jnp.float32)
    lam = jnp.linspace(-5.0, 5.0, 5)
    for name in weighting.WEIGHTINGS:
        out = jax.jit(lambda a, b, lam_: weighting.per_level_loss(name, a, b, None, None, lam_, log_density=jnp.zeros(5)))(
            x, 0.5 * x, lam
        )
        assert out.shape == (5,) and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out))), name
    batched = jax.vmap(lambda lam_: weighting.x0_weight("min_snr", lam_))(lam)
    np.testing.assert_allclose(batched, weighting.x0_weight("min_snr", lam))
    with pytest.raises(ValueError, match="unknown weighting"):
        weighting.x0_weight("p2", lam)
    with pytest.raises(ValueError, match="unknown target"):
        weighting.target_weight("eps_mse", "score", lam)
    with pytest.raises(ValueError, match="needs both"):
        weighting.per_level_loss("eps_mse", x, x, None, None, lam, base="eps")
    with pytest.raises(AssertionError):
        weighting.per_level_loss("eps_mse", x, x, None, None, jnp.zeros(4))
