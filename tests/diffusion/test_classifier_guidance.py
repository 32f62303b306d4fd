"""Classifier guidance wired through the library: the noise-conditional classifier's reading of a
sampler's state (``diffusion.noisy_classifier``), the guided discrete chain (``samplers.sample``),
the compiled samplers of ``runtime.sampling`` and the classifier network and objective.

The exact checks use tests/diffusion/test_guidance.py's two-class 2-D Gaussian mixture, whose noisy
class posterior p(y | x_t) and conditional / unconditional denoisers are known in closed form:

* ``process_grad_fn`` reads any process's state as the VP state at the same log-SNR: on VP
  cosine, EDM's variance-exploding process and a chain's continuous view its gradient equals the
  analytic grad log p(y | x_t) of that process's own noised mixture (float64, 1e-10).
* On the discrete chain, DDIM guided by Algorithm 2 with the exact classifier at scale 1 and the
  exact unconditional denoiser is DDIM with the exact conditional denoiser, path by path (the
  guided data prediction is E[x_0 | x_t, y] exactly), on a respaced chain, for eta 0 and 1.
* DDPM ancestral guided by Algorithm 1 is mu + s beta~_t grad (the step recomputed by hand).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import processes, samplers, schedules
from diffjax.diffusion.continuous import noise_conditioning
from diffjax.diffusion.gaussian import p_mean_variance
from diffjax.diffusion.noisy_classifier import (
    NoisyClassification,
    chain_grad_fn,
    chain_log_snr,
    chain_step_of_log_snr,
    classifier_log_prob,
    process_grad_fn,
)
from diffjax.diffusion.parameterization import DiffusionSpec
from diffjax.diffusion.schedules import respace
from diffjax.models.classifier import NoisyClassifier
from diffjax.models.configs import get_preset, make_network, make_unet
from diffjax.models.denoiser import abstract_params, count_params
from diffjax.runtime.mesh import make_mesh
from diffjax.runtime.sampling import GuidanceClassifier, SamplerChoice, make_sampler
from diffjax.train.loop import make_init_fn
from diffjax.train.optim import make_optimizer
from tests.diffusion.test_guidance import NULL, analytic_gradient, class_denoiser, log_class_posterior
from tests.support.train_utils import tiny_image_setup


def vp_log_prob(params, x_vp, log_snr, labels):
    """The exact classifier as the noise-conditional classifier sees its input: the VP state at
    log-SNR lambda, alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""
    del params
    return log_class_posterior(jnp, x_vp, jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr)),
                               labels)


def test_process_grad_fn_is_the_exact_gradient_on_every_process():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(12, 2)) * 1.2
    labels = rng.integers(0, 2, 12)
    chain = schedules.named_schedule("linear", 200)
    with jax.enable_x64(True):
        for process, times in ((processes.VPCosine(), (0.1, 0.5, 0.9)), (processes.EDM(), (0.2, 0.5, 0.8)),
                               (processes.discrete_process(chain), (3.5, 60.0, 150.25))):
            grad_fn = jax.jit(process_grad_fn(vp_log_prob, None, jnp.asarray(labels), process))
            for t in times:
                alpha, sigma = float(process.alpha(jnp.float64(t))), float(process.sigma(jnp.float64(t)))
                x = alpha * x0 + sigma * rng.normal(size=x0.shape)  # a state of this process at t
                got = np.asarray(grad_fn(jnp.asarray(x), jnp.float64(t)))
                expected = analytic_gradient(x, alpha, sigma, labels)  # its own noised mixture, not the VP one
                assert got.dtype == np.float64
                # The gradient is a difference of terms (x - alpha m_k) / v_k: float64 cancellation is relative to them.
                terms = np.abs(x).max() / (alpha**2 * 0.16 + sigma**2)
                np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12 * terms)


def test_chain_log_snr_and_gradient_on_a_respaced_chain():
    """lambda_t from a float64 NumPy re-derivation of the linear betas (DDPM: 1e-4 .. 0.02 for
    T = 1000, scaled by 1000 / T), at the kept steps of a respaced chain; the chain's gradient
    is the analytic one at alpha^2 = alpha_bar_t."""
    T = 1000
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    expected_log_snr = np.log(alphas_cumprod) - np.log1p(-alphas_cumprod)
    chain, kept = respace(schedules.named_schedule("linear", T), "ddim25")
    t = jnp.arange(chain.num_timesteps)
    np.testing.assert_allclose(np.asarray(chain_log_snr(chain, t)), expected_log_snr[np.asarray(kept)],
                               rtol=2e-6, atol=2e-6)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(chain.num_timesteps, 2))
    labels = rng.integers(0, 2, chain.num_timesteps)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(chain_grad_fn(vp_log_prob, None, jnp.asarray(labels), chain))(jnp.asarray(x), t))
    a = np.sqrt(alphas_cumprod[np.asarray(kept)])
    expected = np.stack([analytic_gradient(x[i:i + 1], a[i], np.sqrt(1 - a[i] ** 2), labels[i:i + 1])[0]
                         for i in range(len(a))])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_guided_ddim_with_the_exact_classifier_is_the_conditional_ddim(eta):
    full = schedules.named_schedule("linear", 200)
    chain, _ = respace(full, "ddim20")
    spec = DiffusionSpec("eps", "fixed_small")
    denoise = class_denoiser(chain, spec)
    num = 512
    label = 1
    labels = jnp.full((num,), label, jnp.int32)
    null = jnp.full((num,), NULL, jnp.int32)
    key = jax.random.PRNGKey(3)

    @jax.jit
    def guided(scale):
        # The unconditional denoiser (label NULL), steered by the exact classifier; tables at the chain's indices.
        return samplers.sample(lambda p, x, t, c: denoise(p, x, _index(chain, t), null), None, chain, spec, key,
                               (num, 2), labels, method="ddim", eta=eta, clip_denoised=False,
                               classifier_grad=chain_grad_fn(vp_log_prob, None, labels, chain),
                               classifier_scale=scale)

    conditional = samplers.sample(lambda p, x, t, c: denoise(p, x, _index(chain, t), c), None, chain, spec, key,
                                  (num, 2), labels, method="ddim", eta=eta, clip_denoised=False)
    unguided = np.asarray(guided(jnp.float32(0.0)))
    np.testing.assert_allclose(np.asarray(guided(jnp.float32(1.0))), np.asarray(conditional), atol=2e-4, rtol=0)
    assert np.abs(unguided - np.asarray(conditional)).max() > 0.5  # scale 0 is the mixture's own sampler


def _index(chain, original_steps):
    """``class_denoiser`` reads the chain's tables at indices: map the original steps back."""
    return jnp.searchsorted(chain.timestep_map, original_steps)


def test_guided_ddpm_is_algorithm_1():
    """On a 10-step respacing of a T = 100 chain (the guided step reads the respaced tables)."""
    chain, _ = respace(schedules.named_schedule("linear", 100), "10")
    spec = DiffusionSpec("eps", "fixed_small")
    denoise = class_denoiser(chain, spec)
    num, scale = 64, 2.5
    labels = jnp.zeros((num,), jnp.int32)
    null = jnp.full((num,), NULL, jnp.int32)
    grad = chain_grad_fn(vp_log_prob, None, labels, chain)
    key = jax.random.PRNGKey(0)
    got = samplers.sample(lambda p, x, t, c: denoise(p, x, _index(chain, t), null), None, chain, spec, key, (num, 2),
                          labels, method="ddpm", clip_denoised=False, classifier_grad=grad, classifier_scale=scale)
    init_key, loop_key = jax.random.split(key)

    @jax.jit
    def by_hand(x, index):
        t = jnp.full((num,), index, jnp.int32)
        out = p_mean_variance(spec, chain, denoise(None, x, t, null), x, t, False)
        mean = out["mean"] + scale * out["variance"] * grad(x, t)  # Sigma = beta~_t (clipped beta~_1 at t = 0)
        z = jax.random.normal(jax.random.fold_in(loop_key, index), x.shape)
        return mean + (index > 0) * jnp.sqrt(chain.posterior_variance[index]) * z

    x = jax.random.normal(init_key, (num, 2))
    for index in range(chain.num_timesteps - 1, -1, -1):
        x = by_hand(x, index)
    np.testing.assert_allclose(np.asarray(got), np.asarray(x), atol=2e-5)


def test_classifier_network_is_the_unet_encoder_with_a_pooled_head():
    """Parameter count: the digits UNet's params of the same names (conv_in, time_embed, the down
    path and the middle block) + GroupNorm (2 x 64) + the head (64 x 10 + 10); logits [B, K]; no labels."""
    preset = get_preset("digits_classifier")
    preset.pop("arch")
    params = abstract_params(make_network("classifier", out_channels=10, **preset), (8, 8, 1))
    unet = abstract_params(make_unet("digits"), (8, 8, 1))
    shared = {name for name in params if name not in ("norm_out", "head")}
    assert shared <= set(unet)
    assert jax.tree.map(np.shape, {n: params[n] for n in shared}) == jax.tree.map(np.shape, {n: unet[n] for n in shared})
    assert count_params(params) == count_params({n: unet[n] for n in shared}) + 2 * 64 + 64 * 10 + 10 == 318_090
    classifier = make_network("classifier", out_channels=10, **preset)
    logits = jax.eval_shape(lambda p: classifier.apply({"params": p}, jnp.ones((3, 8, 8, 1)), jnp.ones(3)), params)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    with pytest.raises(ValueError, match="no labels"):
        jax.eval_shape(lambda p: classifier.apply({"params": p}, jnp.ones((3, 8, 8, 1)), jnp.ones(3),
                                                  jnp.zeros(3, jnp.int32)), params)


def test_classification_objective_is_the_cross_entropy_at_uniform_steps():
    schedule = schedules.named_schedule("linear", 100)
    objective = NoisyClassification(schedule=schedule, num_classes=3)
    x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (256, 2)), jnp.float32)
    labels = jnp.asarray(np.arange(256) % 3, jnp.int32)

    def network(params, x, c_noise, cond):
        assert cond is None
        return jnp.stack([x[:, 0], x[:, 1], 1e-3 * c_noise], axis=1) * params

    terms = jax.jit(lambda key: objective.losses(network, 2.0, x0, key, labels))(jax.random.PRNGKey(0))
    terms = {k: np.asarray(v) for k, v in terms.items()}
    t = terms["t"]
    assert t.min() >= 0 and t.max() < 100 and len(np.unique(t)) > 50
    # Recompute x_t from the same key to check the loss and accuracy.
    key_t, key_noise = jax.random.split(jax.random.PRNGKey(0))
    noise = np.asarray(jax.random.normal(key_noise, x0.shape))
    a = np.asarray(schedule.sqrt_alphas_cumprod)[t][:, None]
    x_t = a * np.asarray(x0) + np.sqrt(1 - a**2) * noise
    alpha_bar = np.cumprod(1 - np.linspace(1e-4 * 10, 0.02 * 10, 100))[t]  # the linear betas scaled by 1000 / T
    log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)
    c_noise = np.asarray(noise_conditioning(jnp.asarray(log_snr, jnp.float32)))
    np.testing.assert_allclose(c_noise, 1000 * (-log_snr + 13.3) / 18.3, rtol=1e-4)  # VDM's gamma range
    logits = 2.0 * np.stack([x_t[:, 0], x_t[:, 1], 1e-3 * c_noise], axis=1)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(terms["loss"], -log_probs[np.arange(256), np.asarray(labels)], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(terms["accuracy"], (logits.argmax(1) == np.asarray(labels)).astype(np.float32))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_chain_step_of_log_snr_is_the_step_and_interpolates_between(name):
    # float64 NumPy from the betas (Ho et al. eq. 4: alpha_bar_t = prod (1 - beta_s)); ADM's classifiers
    # are told the integer step t: at a step's own log-SNR the map gives exactly t
    schedule = schedules.named_schedule(name, 1000)
    alpha_bar = np.cumprod(1 - np.asarray(schedules.get_betas(name, 1000), np.float64))
    log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)
    steps = jnp.arange(1000)
    exact = np.asarray(jax.jit(chain_step_of_log_snr)(schedule, chain_log_snr(schedule, steps)))
    np.testing.assert_array_equal(exact, np.arange(1000, dtype=np.float32))
    middle = jnp.asarray((log_snr[:-1] + log_snr[1:]) / 2, jnp.float32)  # halfway in lambda between steps
    np.testing.assert_allclose(chain_step_of_log_snr(schedule, middle), np.arange(999) + 0.5, atol=2e-3)
    ends = chain_step_of_log_snr(schedule, jnp.asarray([log_snr[0] + 5, log_snr[-1] - 5], jnp.float32))
    np.testing.assert_array_equal(ends, [0.0, 999.0])  # clamped
    # a respaced chain's steps are the original chain's indices (as ADM's respaced sampler says)
    chain, kept = respace(schedule, "ddim50")
    at_kept = chain_step_of_log_snr(schedule, chain_log_snr(chain, jnp.arange(50)))
    np.testing.assert_array_equal(at_kept, np.asarray(kept, np.float32))


def test_a_chain_step_classifier_is_trained_and_guides_on_its_integer_steps():
    schedule = schedules.named_schedule("cosine", 100)
    objective = NoisyClassification(schedule=schedule, num_classes=3, time_input="chain_step")
    seen = []

    def network(params, x, c_noise, cond):
        seen.append(c_noise)
        return jnp.zeros((x.shape[0], 3)) + params

    terms = objective.losses(network, 0.0, jnp.zeros((64, 2)), jax.random.PRNGKey(1), jnp.zeros(64, jnp.int32))
    np.testing.assert_array_equal(seen[0], np.asarray(terms["t"], np.float32))  # the step itself, as ADM trains
    np.testing.assert_array_equal(objective.network_time(chain_log_snr(schedule, jnp.arange(100))), np.arange(100))
    with pytest.raises(ValueError, match="time_input"):
        NoisyClassification.from_values({"time_input": "step"}, num_classes=3)


@pytest.fixture(scope="module")
def tiny_guided():
    """A tiny digits UNet (its untrained train state) and a tiny classifier with random params (its
    gradient is not zero), on 8x8x1 images."""
    config, recipe = tiny_image_setup()
    state = jax.jit(make_init_fn(recipe, make_optimizer(config.train)))(jax.random.PRNGKey(0))
    model = NoisyClassifier(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                            num_outputs=10, norm_groups=4)
    # Random values for every param (the head's init is zero, which would make the gradient zero); drawn with
    # NumPy on the abstract shapes, so no initialisation is compiled.
    rng = np.random.default_rng(1)
    classifier_params = jax.tree.map(lambda leaf: jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), jnp.float32),
                                     abstract_params(model, (8, 8, 1)))
    classifier = GuidanceClassifier(model=model, params=classifier_params, num_classes=10, input_shape=(8, 8, 1))
    return config, recipe, state, classifier


@pytest.mark.slow
def test_classifier_gradient_of_the_network_is_its_finite_difference(tiny_guided):
    """The gradient the compiled samplers use, of the real classifier network on the chain's
    continuous view: its directional derivative along random directions = a central
    difference (float32, h = 1e-2 on states of scale 1: the difference's error is ~1e-5)."""
    _, recipe, _, classifier = tiny_guided
    process = processes.discrete_process(recipe.family.schedule)
    log_prob = classifier_log_prob(classifier.model)
    labels = jnp.arange(4) % 10
    grad_fn = jax.jit(process_grad_fn(log_prob, classifier.params, labels, process))
    x = jax.random.normal(jax.random.PRNGKey(5), (4, 8, 8, 1))
    t = jnp.float32(7.3)

    @jax.jit
    def total(state):
        lam = jnp.full((4,), process.log_snr(t))
        return log_prob(classifier.params, state / jnp.sqrt(process.alpha(t) ** 2 + process.sigma(t) ** 2), lam,
                        labels).sum()

    gradient = np.asarray(grad_fn(x, t), np.float64)
    assert np.abs(gradient).max() > 1e-3
    for seed in range(3):
        direction = np.asarray(jax.random.normal(jax.random.PRNGKey(10 + seed), x.shape), np.float64)
        h = 1e-2
        finite = (float(total(x + h * direction)) - float(total(x - h * direction))) / (2 * h)
        assert finite == pytest.approx(float((gradient * direction).sum()), rel=2e-3, abs=1e-4)


@pytest.mark.parametrize("entry", ["ddim4", "dpmpp_2m:3"])
@pytest.mark.slow
def test_compiled_sampler_with_classifier_guidance(tiny_guided, entry):
    """Scale 0 (per call) is the unguided sampler exactly, a nonzero scale moves the samples, one
    compilation serves every scale; an unconditional model takes the classifier's labels."""
    config, recipe, state, classifier = tiny_guided
    params = state.params
    mesh = make_mesh()
    base = SamplerChoice.from_settings(config.sample, entry)
    key = jax.random.PRNGKey(0)
    unguided = make_sampler(recipe, mesh, num_samples=8, choice=base)(params, key)
    draw = make_sampler(recipe, mesh, num_samples=8, choice=dataclasses.replace(base, classifier_scale=1.0),
                        classifier=classifier)
    zero = draw(params, key, classifier_scale=0.0)
    strong = draw(params, key, classifier_scale=30.0)
    other_labels = draw(params, key, np.full(8, 3), classifier_scale=30.0)
    assert draw.compiled._cache_size() == 1
    np.testing.assert_allclose(zero, unguided, atol=1e-6)
    assert np.abs(strong - unguided).max() > 1e-3 and np.abs(other_labels - strong).max() > 1e-3
    with pytest.raises(ValueError, match=r"labels must be classes in \[0, 10\)"):
        draw(params, key, np.full(8, 10))


def test_classifier_guidance_errors_before_compiling(tiny_guided):
    config, recipe, state, classifier = tiny_guided
    params = state.params
    mesh = make_mesh()
    guided = dataclasses.replace(SamplerChoice.from_settings(config.sample, "ddim4"), classifier_scale=2.0)
    with pytest.raises(ValueError, match="needs a trained noise-conditional classifier"):
        make_sampler(recipe, mesh, num_samples=8, choice=guided)
    with pytest.raises(ValueError, match="trained on data of shape"):
        make_sampler(recipe, mesh, num_samples=8, choice=guided,
                     classifier=dataclasses.replace(classifier, input_shape=(16, 16, 1)))
    unguided = make_sampler(recipe, mesh, num_samples=8, choice=SamplerChoice.from_settings(config.sample, "ddim4"))
    with pytest.raises(ValueError, match="without classifier guidance"):
        unguided(params, jax.random.PRNGKey(0), classifier_scale=1.0)


@pytest.mark.slow
def test_classifier_trains_evaluates_and_guides_sampling(tiny_guided, tmp_path):
    """The classifier experiment through the launch machinery (a tiny network, two steps): training
    writes Orbax checkpoints and config.json, --mode=eval its accuracy per band, and --mode=sample of a
    diffusion model restores it from its workdir and records it; a workdir without one fails before
    anything is sampled."""
    from diffjax.run.config import validate
    from diffjax.run.evaluate import evaluate
    from diffjax.run.experiments import build_recipe, load_experiment
    from diffjax.run.restore import NoClassifierError, restore_classifier
    from diffjax.run.sample import generate
    from diffjax.train import train_and_evaluate
    from tests.support.train_utils import workdir_with_checkpoint

    experiment = load_experiment("digits_classifier")
    config = experiment.get_config("smoke")
    config.model.update(channels=8, norm_groups=4, channel_mult=(1,), attention_resolutions=())
    config.train.update(num_steps=2, batch_size=16, log_every=1, checkpoint_every=2)
    config.eval.elbo_draws = 1
    validate(config)
    recipe = build_recipe(experiment, config)
    classifier_dir = str(tmp_path / "classifier")
    train_and_evaluate(config, classifier_dir, recipe)
    assert not (tmp_path / "classifier" / "samples").exists()  # a classifier draws no samples
    record = evaluate(config, classifier_dir, recipe)["classifier"]
    assert record["checkpoint_step"] == 2 and len(record["bands"]) == 10
    assert record["num_examples"] == (config.eval.num_examples or 297)  # the smoke variant's first ones
    assert [b["t_min"] for b in record["bands"]] == list(range(0, 1000, 100))
    assert all(0 <= b["accuracy"] <= 1 for b in record["bands"])
    assert (tmp_path / "classifier" / "eval" / "classifier.json").exists()
    mesh = make_mesh()
    classifier = restore_classifier(classifier_dir, mesh)
    assert classifier.num_classes == 10 and classifier.input_shape == (8, 8, 1)

    model_config, model_recipe, state, _ = tiny_guided
    model_config = model_config.copy_and_resolve_references()
    model_dir = workdir_with_checkpoint(str(tmp_path / "model"), model_config, state)
    model_config.sample.update(steps="ddim4", num=8, batch_size=8, classifier_scale=2.0,
                               classifier_workdir=str(tmp_path / "missing"))
    with pytest.raises(NoClassifierError, match="no config.json"):
        generate(model_config, model_dir, model_recipe)
    model_config.sample.classifier_workdir = classifier_dir
    metadata = generate(model_config, model_dir, model_recipe)
    assert metadata["classifier_workdir"] == classifier_dir and metadata["classifier_scale"] == 2.0
    assert "_cls2_" in metadata["npz"]
    with np.load(metadata["npz"]) as f:
        assert f["samples"].shape == (8, 8, 8, 1) and list(f["labels"]) == list(range(8))
