"""The continuous-time VDM bound of any Gaussian model (``diffjax.evaluation.elbo``), the model
view it reads models through (``diffusion.families.gaussian.model_view``), and ``evaluate``'s ``eval/elbo.json``.

The reference: 8-bit data x = Gaussian N(MU, S^2) per dimension discretised onto the grid
v_k = 2k/255 - 1 (edge values taking the tails), whose NLL is exact from the normal CDF, and
the exact denoiser of the *continuous* Gaussian. For that model the expected bound per value v
is computable in float64: the diffusion term by quadrature over gamma of
(1/2) E||eps - eps_hat||^2 = (1/2) [(1 - k)^2 + k^2 SNR (v - MU)^2], k = 1 / (1 + SNR S^2)
(eps_hat is linear in z), the prior in closed form, the reconstruction by Gauss-Hermite over
z_0. Its derivation of the gap to the NLL: with the exact score, L_inf(v) =
KL(q(z_0|v) || p_0) - KL(q(z_1|v) || p_1), p_t the continuous Gaussian's marginals (checked to
1e-9 below), so

    bound(v) + log P(v) = [KL(q(z_0|v) || p_0) + log P(v) + rec(v)] + [KL(q(z_1|v) || N(0,1)) - KL(q(z_1|v) || p_1)],

the KL from q(z_0|v) to the model's posterior over z_0 (up to log(P_model(v) / P(v)), nearly 0;
the model does not know the data are discrete: for an interior value its posterior is nearly
uniform over the value's bin, giving (1/2) log(Delta^2 SNR_0 / (2 pi e)) + rec(v) nats, 0.56 bits
at gamma_0 = -13.3; for the edge values it spreads over the Gaussian's tail, a few nats) plus the
prior's mismatch (1e-5). Over the data (MU = 0.1, S = 0.5: 5% at the edges) the gap is 0.81 bits/dim.
"""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import simpson
from scipy.special import log_softmax, ndtr

from diffjax.diffusion import vdm
from diffjax.diffusion.continuous import ContinuousDiffusion, GammaProcess
from diffjax.diffusion.families.gaussian import model_view
from diffjax.diffusion.naive import NaiveDiffusion
from diffjax.diffusion.processes import EDM
from diffjax.evaluation.elbo import BOUND, ELBOEvaluator, continuous_bound, vp_coordinates
from diffjax.evaluation.ode_nll import ODEBoundEvaluator
from diffjax.models.denoiser import init_params, network_fn
from diffjax.models.mlp import MLPDenoiser
from diffjax.models.noise_schedule import LinearSchedule, MonotoneSchedule
from diffjax.models.scheduled import ScheduledDenoiser
from diffjax.run.compare import write_report
from diffjax.run.config import set_family, validate
from diffjax.run.evaluate import evaluate
from diffjax.runtime.recipe import Recipe
from diffjax.train.loop import make_init_fn
from diffjax.train.optim import make_optimizer
from tests.evaluation.test_evaluation import batches_of
from tests.support.train_utils import toy_config, toy_recipe, workdir_with_checkpoint

MU, S = 0.1, 0.5
VALUES = 2.0 * np.arange(256) / 255.0 - 1.0
DELTA = 2.0 / 255.0
LN2 = math.log(2.0)


# ----------------------------------------------------------------------- the Gaussian reference


def value_probs() -> np.ndarray:
    """P(v_k) [256] of N(MU, S^2) rounded to the grid, the edge values taking the tails (float64)."""
    edges = np.concatenate([[-np.inf], VALUES[:-1] + DELTA / 2, [np.inf]])
    return ndtr((edges[1:] - MU) / S) - ndtr((edges[:-1] - MU) / S)


def gaussian_kl(mean, var, mean_p, var_p):
    """KL(N(mean, var) || N(mean_p, var_p)) in nats, elementwise."""
    return 0.5 * (np.log(var_p / var) + (var + (mean - mean_p) ** 2) / var_p - 1.0)


def exact_bound_terms(gamma_0: float, gamma_1: float) -> dict[str, np.ndarray]:
    """The expected bound's terms at each grid value [256], nats, for the continuous Gaussian's
    exact denoiser on a VP process from gamma_0 to gamma_1 (any schedule between them)."""
    gamma = np.linspace(gamma_0, gamma_1, 4001)
    snr = np.exp(-gamma)
    k = 1.0 / (1.0 + snr * S**2)
    integrand = (1.0 - k) ** 2 + k**2 * snr * (VALUES[:, None] - MU) ** 2
    diffusion = 0.5 * simpson(integrand, x=gamma, axis=1)
    alpha_sq_1 = 1.0 / (1.0 + math.exp(gamma_1))
    prior = gaussian_kl(math.sqrt(alpha_sq_1) * VALUES, 1.0 - alpha_sq_1, 0.0, 1.0)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    noise_0 = math.exp(0.5 * gamma_0)  # sigma_0 / alpha_0
    decoded = VALUES[:, None] + noise_0 * nodes  # z_0 / alpha_0 for each value and node
    log_probs = log_softmax(-0.5 * (decoded[..., None] - VALUES) ** 2 / noise_0**2, axis=-1)
    picked = log_probs[np.arange(256), :, np.arange(256)]
    reconstruction = -(picked @ weights) / weights.sum()
    return {"diffusion": diffusion, "prior": prior, "reconstruction": reconstruction,
            "total": diffusion + prior + reconstruction}


def diffused_kl(v, gamma):
    """KL(q(z|v) || p) at gamma: q = N(alpha v, sigma^2), p the continuous Gaussian's marginal."""
    alpha_sq = 1.0 / (1.0 + math.exp(gamma))
    return gaussian_kl(math.sqrt(alpha_sq) * v, 1.0 - alpha_sq, math.sqrt(alpha_sq) * MU, alpha_sq * S**2 + 1.0 - alpha_sq)


def gaussian_denoiser(process):
    """x0_hat(x_t, t [B]) of N(MU, S^2) data in the process's own coordinates (closed form)."""

    def denoise_x0(x, t):
        alpha, sigma = process.alpha_sigma(t, x.ndim)
        return MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * MU)

    return denoise_x0


def gamma_ends(process, *times) -> tuple[float, ...]:
    """-log SNR at ``times`` (default: the ends t_min, t_max), in one jitted call."""
    times = np.asarray(times or (process.t_min, process.t_max), np.float32)
    return tuple(float(g) for g in jax.jit(lambda t: -process.log_snr(t))(times))


@pytest.fixture(scope="module")
def gaussian_data():
    """k [N, D] 8-bit values of the discretised Gaussian, their exact NLL per example (bits/dim)."""
    k = np.clip(np.round((np.random.default_rng(0).normal(MU, S, size=(512, 64)) + 1.0) * 127.5), 0, 255)
    k = k.astype(np.int64)
    nll = np.mean(-np.log2(value_probs()[k]), axis=1)
    return k, nll


def mc_bound(process, k, draws=32, seed=1):
    bound = jax.jit(lambda x, key: continuous_bound(process, gaussian_denoiser(process), x, key, draws=draws))
    out = bound(jnp.asarray(VALUES[k], jnp.float32), jax.random.PRNGKey(seed))
    return {name: np.asarray(value, np.float64) for name, value in out.items()}


def per_example(terms_per_value: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Bits/dim per example of a per-value quantity in nats."""
    return np.mean(terms_per_value[k], axis=1) / LN2


def test_exact_bound_of_the_gaussian_model_and_its_gap_to_the_discrete_nll():
    """The float64 reference itself: the diffusion term by quadrature is the difference of two
    Gaussian KLs (the exact score's bound is tight for z_0), and the gap's derivation."""
    gamma_0, gamma_1 = -13.3, 5.0
    terms = exact_bound_terms(gamma_0, gamma_1)
    np.testing.assert_allclose(terms["diffusion"], diffused_kl(VALUES, gamma_0) - diffused_kl(VALUES, gamma_1),
                               rtol=0, atol=1e-9)
    probs = value_probs()
    gap = terms["total"] + np.log(probs)  # nats per value
    assert np.all(gap > 0)
    # Interior values: the posterior over z_0 is nearly uniform over the bin, alpha_0 Delta wide (up to
    # its soft edges, sigma_0 / alpha_0 = Delta / 6, and the density's curvature: 1e-3 nats).
    interior = 0.5 * math.log(DELTA**2 * math.exp(-gamma_0) / (2 * math.pi * math.e)) + terms["reconstruction"]
    middle = np.abs(VALUES - MU) < 1.5 * S
    np.testing.assert_allclose(gap[middle], interior[middle], rtol=0, atol=2e-3)
    # The edge values' posterior spreads over the Gaussian's tail: a larger gap.
    assert gap[0] > 2.0 and gap[-1] > 2.0
    # In expectation over the data: 0.56 bits/dim from the interior, the rest from the 5% at the edges.
    expected_gap = float(np.sum(probs * gap)) / LN2
    assert 0.75 < expected_gap < 0.85


@pytest.mark.slow
def test_bound_of_the_exact_gaussian_denoiser_is_above_the_discrete_nll_by_the_derived_gap(gaussian_data):
    """VP processes (VDM's linear gamma and a monotone-network gamma with the same ends: the bound
    does not depend on the schedule between them): the Monte-Carlo bound per example matches the
    exact expected bound within 4 standard errors, and lies above the exact NLL by its gap."""
    k, nll = gaussian_data
    exact = {name: per_example(values, k) for name, values in exact_bound_terms(-13.3, 5.0).items()}
    schedule = MonotoneSchedule(hidden=4)
    schedule_params = jax.jit(schedule.init)(jax.random.PRNGKey(3), jnp.zeros((1,)))["params"]
    curved = GammaProcess(schedule_params=schedule_params, schedule=schedule)
    assert abs(gamma_ends(curved, 0.5)[0] - gamma_ends(GammaProcess(), 0.5)[0]) > 0.1  # not the linear schedule
    for process in (GammaProcess(), curved):
        np.testing.assert_allclose(gamma_ends(process), (-13.3, 5.0), atol=1e-5)
        bound = mc_bound(process, k)
        for name in ("total", "diffusion", "reconstruction"):
            difference = bound[name] - exact[name]
            stderr = np.std(difference, ddof=1) / math.sqrt(len(difference))
            assert abs(np.mean(difference)) < 4 * stderr + 1e-4, (name, np.mean(difference), stderr)
        np.testing.assert_allclose(bound["prior"], exact["prior"], rtol=1e-4)
        np.testing.assert_allclose(bound["total"], bound["diffusion"] + bound["prior"] + bound["reconstruction"],
                                   rtol=1e-6)
        # Above the exact discrete NLL by the derived gap (0.81 bits/dim here), within the Monte-Carlo error.
        stderr = np.std(bound["total"] - exact["total"], ddof=1) / math.sqrt(len(nll))
        gap = np.mean(exact["total"] - nll)
        assert stderr < 0.03 and 0.75 < gap < 0.85
        assert abs(np.mean(bound["total"] - nll) - gap) < 4 * stderr
        assert np.mean(bound["total"]) > np.mean(nll) + gap - 4 * stderr


@pytest.mark.slow
def test_ve_bound_equals_the_bound_of_the_equivalent_vp_process(gaussian_data):
    """EDM's process (alpha = 1, sigma from 0.002 to 80) with the Gaussian denoiser in VE
    coordinates is VDM's linear gamma from 2 ln 0.002 to 2 ln 80 in VP coordinates: the same
    draws give the same bound per example (up to float32 rounding), and both match the exact one."""
    k, nll = gaussian_data
    ve = EDM()
    vp = GammaProcess(gamma_0=2 * math.log(ve.sigma_min), gamma_1=2 * math.log(ve.sigma_max))
    np.testing.assert_allclose(gamma_ends(ve), gamma_ends(vp), rtol=1e-6)
    ve_bound, vp_bound = mc_bound(ve, k), mc_bound(vp, k)
    for name in ve_bound:
        np.testing.assert_allclose(ve_bound[name], vp_bound[name], rtol=1e-4, atol=1e-5)
    exact = per_example(exact_bound_terms(*gamma_ends(ve))["total"], k)
    difference = ve_bound["total"] - exact
    assert abs(np.mean(difference)) < 4 * np.std(difference, ddof=1) / math.sqrt(len(difference))
    assert np.mean(ve_bound["total"]) > np.mean(nll)


# --------------------------------------------------------------------- a vdm model, the evaluator


def _bare_recipe(model, diffusion, input_shape) -> Recipe:
    return Recipe(model=model, input_shape=input_shape, family=diffusion, train_batches=None, save_samples=None)


@pytest.fixture(scope="module")
def vdm_model():
    """A ``vdm`` model with a learned linear schedule, its ends moved to (-10, 4), and a perturbed
    MLP (its output layer starts at zero), on 4-dimensional 8-bit data."""
    schedule = LinearSchedule()
    diffusion = ContinuousDiffusion(process="vdm", weighting="elbo", gamma_schedule="learned_linear",
                                    schedule=schedule)
    model = ScheduledDenoiser(network=MLPDenoiser(hidden=16, num_blocks=1), schedule=schedule)

    @jax.jit
    def make_params(key):
        network = model.init(key, jnp.zeros((1, 4)), jnp.zeros((1,)))["params"]["network"]
        leaves, treedef = jax.tree.flatten(network)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        network = jax.tree.unflatten(treedef, [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
        return {"network": network, "schedule": {"gamma_0": jnp.float32(-10.0), "gamma_1": jnp.float32(4.0)}}

    params = make_params(jax.random.PRNGKey(0))
    pixels = np.random.default_rng(2).integers(0, 256, size=(48, 4))
    return _bare_recipe(model, diffusion, (4,)), params, (pixels / 127.5 - 1.0).astype(np.float32)


def test_evaluator_bound_of_a_vdm_model_is_the_mean_of_its_training_loss(vdm_model):
    recipe, params, data = vdm_model
    diffusion = recipe.family
    evaluator = ELBOEvaluator(recipe, draws=64)
    result = evaluator(params, batches_of(data, 32), seed=5)
    assert result.count == 48 and result.num_batches == 2 and result.family == "continuous"
    np.testing.assert_allclose((result.gamma_0, result.gamma_1), (-10.0, 4.0), atol=1e-5)  # the params' schedule

    def network(p, x, c_noise, cond):
        return recipe.model.apply({"params": p}, x, c_noise, cond)

    losses = jax.jit(jax.vmap(lambda key: diffusion.losses(network, params, jnp.asarray(data), key)))
    training = jax.device_get(losses(jax.random.split(jax.random.PRNGKey(6), 256)))
    for name, loss_name in (("total", "loss"), ("diffusion", "diffusion"), ("reconstruction", "reconstruction")):
        difference = result.per_example[name] - np.mean(training[loss_name], axis=0)
        stderr = np.std(difference, ddof=1) / math.sqrt(len(difference))
        assert abs(np.mean(difference)) < 4 * stderr, (name, np.mean(difference), stderr)
    np.testing.assert_allclose(result.per_example["prior"], training["prior"][0], rtol=1e-5)
    assert 0 < result.bpd_stderr < 0.1 * result.bpd

    # The padding rows' content (off the grid, even) changes nothing; another seed, other draws.
    again = evaluator(params, batches_of(data, 32, garbage=0.3), seed=5)
    np.testing.assert_array_equal(again.per_example["total"], result.per_example["total"])
    other = evaluator(params, batches_of(data, 32), seed=6)
    assert np.abs(other.per_example["total"] - result.per_example["total"]).max() > 1e-4
    record = result.to_json()
    assert record["bound"] == BOUND and record["nfe_per_example"] == 64 and record["num_examples"] == 48
    assert record["bpd"] == pytest.approx(record["diffusion_bpd"] + record["prior_bpd"] + record["reconstruction_bpd"])
    assert record["bpd_stderr"] == pytest.approx(np.std(result.per_example["total"], ddof=1) / math.sqrt(48))
    with pytest.raises(ValueError, match="not on the 8-bit grid"):
        evaluator(params, batches_of(data + 0.001, 32))


def test_model_view_reads_both_families_at_scalar_and_per_example_times(vdm_model):
    recipe, params, data = vdm_model
    config = toy_config().copy_and_resolve_references()
    config.diffusion.timesteps = 20
    discrete = toy_recipe(config)
    discrete_params = jax.jit(lambda key: init_params(discrete.model, key, discrete.input_shape))(jax.random.PRNGKey(0))
    x = jnp.asarray(data[:6, :2])
    for model, model_params, inputs in ((recipe, params, jnp.asarray(data[:6])), (discrete, discrete_params, x)):
        process, denoise_x0 = model_view(model.family, network_fn(model.model), model_params)
        t = 0.5 * (process.t_min + process.t_max)
        at_times = jax.jit(lambda x, scalar, times: (denoise_x0(x, scalar), denoise_x0(x, times)))  # noqa: B023
        scalar, per_example = at_times(inputs, jnp.float32(t), jnp.full((6,), t))
        np.testing.assert_allclose(scalar, per_example, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="one time per example"):
            denoise_x0(inputs, jnp.full((5,), t))
    # The discrete chain's continuous view runs from its step 0 to its step T - 1.
    result = ELBOEvaluator(discrete, draws=2)(discrete_params, batches_of(data[:6, :2], 4))
    alphas_cumprod = np.cumprod(1.0 - discrete.family.schedule.source.values)
    log_snr = np.log(alphas_cumprod) - np.log1p(-alphas_cumprod)
    np.testing.assert_allclose((result.gamma_0, result.gamma_1), -log_snr[[0, -1]], rtol=1e-4)
    assert result.count == 6 and np.all(np.isfinite(result.per_example["total"]))
    assert result.to_json()["model"].startswith("a discrete chain on its continuous view")
    naive = dataclasses.replace(recipe, family=NaiveDiffusion(num_levels=4))
    for build in (lambda: model_view(naive.family, network_fn(naive.model), params), lambda: ELBOEvaluator(naive),
                  lambda: ODEBoundEvaluator(naive)):
        with pytest.raises(ValueError, match="family is 'naive'"):
            build()


# ---------------------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_reports_the_bounds_of_a_continuous_model(tmp_path):
    """A continuous (vdm) toy run: eval/elbo.json and eval/ode_nll.json, no T-step nll.json, sample
    quality without a chain's T; the comparison table gets the continuous bound's column."""
    config = toy_config().copy_and_resolve_references()
    set_family(config, "continuous", process="vdm", weighting="elbo")
    config.sample.update(solver="heun", steps="2")
    config.eval.update(elbo=True, elbo_draws=4, ode_nll=True, ode_rtol=1e-3, ode_atol=1e-3, num_samples=64,
                       sample_steps="heun:2")
    validate(config)
    recipe = toy_recipe(config)
    state = jax.jit(make_init_fn(recipe, make_optimizer(config.train)))(jax.random.PRNGKey(0))
    workdir = workdir_with_checkpoint(str(tmp_path / "run"), config, state)
    pixels = np.random.default_rng(0).integers(64, 192, size=(6, 2))
    recipe = dataclasses.replace(recipe, eval_batches=lambda: batches_of((pixels / 127.5 - 1).astype(np.float32), 4))

    result = evaluate(config, workdir, recipe)
    eval_dir = os.path.join(workdir, "eval")
    assert result["nll"] is None and not os.path.exists(os.path.join(eval_dir, "nll.json"))
    with open(os.path.join(eval_dir, "elbo.json")) as f:
        elbo = json.load(f)
    assert elbo == result["elbo"] and elbo["bound"] == "continuous VDM bound (T = inf)"
    assert elbo["num_examples"] == 6 and elbo["draws"] == elbo["nfe_per_example"] == 4 and elbo["params"] == "ema"
    assert elbo["bpd"] > 0 and elbo["bpd_stderr"] > 0 and elbo["gamma_0"] == pytest.approx(-13.3)
    assert elbo["model"].startswith("a continuous-time model")
    ode = result["ode_nll"]
    assert os.path.exists(os.path.join(eval_dir, "ode_nll.json")) and ode["num_examples"] == 6 and ode["bpd"] > 0
    quality = result["sample_quality"]
    assert quality["timesteps"] is None and quality["results"][0]["nfe"] == 5  # K x NFE per step + 1
    assert quality["results"][0]["solver"] == "heun" and np.isfinite(quality["results"][0]["mmd"])

    report = write_report([workdir], str(tmp_path / "report.md"))
    assert "NLL, continuous bound (bits/dim)" in report and f"{elbo['bpd']:.4g}" in report
    assert "NLL, PF-ODE (bits/dim)" in report


@pytest.mark.slow
def test_t_step_bound_of_a_vdm_model_is_vdm_discrete_loss(vdm_model):
    """``num_steps = T``: the evaluator's diffusion term is ``vdm.vdm_loss(num_steps=T)`` with the
    evaluator's own draws (the low-discrepancy s of each example discretised to i/T), and its
    prior and reconstruction terms are those of L_inf (the same ends)."""
    recipe, params, data = vdm_model
    result = ELBOEvaluator(recipe, draws=8, num_steps=10)(params, batches_of(data, 48), seed=5)
    infinite = ELBOEvaluator(recipe, draws=8)(params, batches_of(data, 48), seed=5)
    record = result.to_json()
    assert record["bound"] == "VDM bound, T = 10 steps" and record["num_steps"] == 10
    np.testing.assert_allclose(result.per_example["prior"], infinite.per_example["prior"], rtol=1e-6)
    np.testing.assert_allclose(result.per_example["reconstruction"], infinite.per_example["reconstruction"], rtol=1e-6)
    # The same draws through vdm_loss directly (continuous_bound's own recipe for them).
    process, denoise_x0 = model_view(recipe.family, network_fn(recipe.model), params)
    gamma_fn, eps_fn = vp_coordinates(process, denoise_x0)
    key = jax.random.fold_in(jax.random.PRNGKey(5), 0)
    key_u, key_draws = jax.random.split(key)
    x = jnp.asarray(data)
    u = jax.random.uniform(key_u, x.shape[:1])

    @jax.jit
    def direct():
        total = 0.0
        for j in range(8):
            key_eps, key_0 = jax.random.split(jax.random.fold_in(key_draws, j))
            terms = vdm.vdm_loss(eps_fn, gamma_fn, x, None, num_steps=10, t=jnp.mod(u + j / 8, 1.0),
                                 eps=jax.random.normal(key_eps, x.shape), eps_0=jax.random.normal(key_0, x.shape))
            total = total + terms["diffusion"] / 8
        return total

    total = direct()
    np.testing.assert_allclose(result.per_example["diffusion"], np.asarray(total), rtol=2e-5, atol=1e-6)
