"""Generating samples from a trained model, sharded over the devices: the discrete chain
(DDPM ancestral / DDIM on a respaced schedule) or any continuous-time solver of
``diffusion.solvers`` over a time grid (of a discrete model's continuous view or of a
continuous-time model's process), or naive diffusion's iterative sampler.

A ``SamplerChoice`` says how samples are drawn; ``make_sampler`` compiles it. What a
compiled sampler is specialised on (changing it recompiles): the solver and its static
options (UniPC's order, the corrector steps), the number of steps K (the scan's length and
the grid's shape), the batch shape, the clipping / thresholding choice, and the model.
What it is not specialised on: the grid's values, the guidance weight, eta and the other
stochastic parameters, and the key. They are arguments of the compiled function.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax.diffusion import solvers
from diffjax.diffusion.continuous import ContinuousDiffusion
from diffjax.diffusion.guidance import classifier_guided_x0
from diffjax.diffusion.naive import NaiveDiffusion
from diffjax.diffusion.noisy_classifier import NoisyClassification, chain_grad_fn, classifier_log_prob, process_grad_fn
from diffjax.diffusion.processes import discrete_process
from diffjax.diffusion.samplers import classifier_free_guidance, sample
from diffjax.diffusion.schedules import respace
from diffjax.models.denoiser import make_denoise_fn
from diffjax.runtime.mesh import data_sharding, replicated_sharding
from diffjax.runtime.sampler_choice import (
    GRID_NAMES,
    SOLVER_OPTION_DEFAULTS,
    SamplerChoice,
    accepted_options,
    solver_grid,
)

__all__ = [
    "GRID_NAMES", "SOLVER_OPTION_DEFAULTS", "GuidanceClassifier", "SamplerChoice", "make_sampler", "model_family",
    "solver_grid",
]


@dataclasses.dataclass(frozen=True)
class GuidanceClassifier:
    """A trained noise-conditional classifier p_phi(y | x_t), for ``make_sampler``'s classifier
    guidance (``run.restore.restore_classifier`` loads one from its workdir).

    Attributes:
      model: the Flax classifier (``models.classifier.NoisyClassifier``): logits [B, K] of the
        variance-preserving state and ``continuous.noise_conditioning(log_snr)``.
      params: its params (the EMA ones), replicated over the mesh.
      num_classes: K.
      input_shape: one example's shape, as it was trained.
      workdir: where it was restored from, recorded with the samples ("" if not from one).
    """

    model: Any
    params: Any
    num_classes: int
    input_shape: tuple[int, ...]
    workdir: str = ""


def model_family(diffusion) -> str:
    """"discrete" (a ``runtime.recipe.Diffusion``: a chain), "continuous"
    (``diffusion.continuous.ContinuousDiffusion``), "naive" (``diffusion.naive.NaiveDiffusion``) or
    "classifier" (``diffusion.noisy_classifier.NoisyClassification``)."""
    if isinstance(diffusion, ContinuousDiffusion):
        return "continuous"
    if isinstance(diffusion, NaiveDiffusion):
        return "naive"
    if isinstance(diffusion, NoisyClassification):
        return "classifier"
    return "discrete"


def make_sampler(recipe, mesh: Mesh, *, num_samples: int, choice: SamplerChoice,
                 classifier: GuidanceClassifier | None = None) -> Callable[..., np.ndarray]:
    """A compiled ``draw(params, key, labels=None) -> samples`` (numpy [N, *input_shape]);
    ``draw.num_labels`` is the number of classes its labels range over (a conditional model's, or
    the guiding classifier's; 0 when it takes no labels).

    The discrete chain (``choice.solver == ""``) is the recipe's schedule respaced by
    ``choice.steps`` run in one ``lax.scan`` (``samplers.sample``); a solver runs over
    ``solver_grid(choice, ...)`` on the schedule's continuous view
    (``processes.discrete_process``: the network is called with fractional steps between
    the trained ones on a continuous grid) and ends with the denoising step to x_0 at the
    grid's last time. Both start from x_T drawn from ``key`` (N(0, I) scaled to the prior at the
    grid's first time; or a given x_T), so
    the same key gives every choice the same x_T. The N samples are split over the devices along
    ``data`` (N is rounded up to a multiple of the device count and cut back).
    Class-conditional models get ``labels`` (int32 [N]; default 0, 1, 2, ... cycling).

    Classifier guidance (``choice.classifier_scale`` = s != 0, with ``classifier``) steers the
    sampler toward ``labels`` (the same default), for a conditional or an unconditional model:
    the chain's ancestral step by Algorithm 1 (mean + s Sigma grad log p_phi), DDIM and every
    solver by Algorithm 2 (the data prediction, after clipping, shifted by s sigma^2 / alpha
    grad log p_phi: ``diffusion.guidance``), the gradient taken by ``jax.grad`` inside the
    compiled sampler, where the classifier reads the state as ``diffusion.noisy_classifier``
    says. The classifier's params and s are arguments of the compiled function.

    The model family (``model_family(recipe.diffusion)``) decides what is allowed: a discrete
    model takes the chain or a solver; a continuous one (``ContinuousDiffusion``) only a solver,
    on its own process (``make_process(params)``; a learned VDM schedule's grid is made per call
    from the given params, so EMA params use the EMA schedule) and a continuous grid; naive
    diffusion its own iterative sampler from uniform noise (``choice.solver == ""``,
    ``choice.steps`` the number of levels visited, "" for all of them).

    Args:
      recipe: the experiment's ``Recipe``.
      mesh: the data mesh.
      num_samples: N.
      choice: how to sample (``SamplerChoice.from_settings(config.sample)``).
      classifier: the classifier of classifier guidance (needed iff ``choice.classifier_scale``).

    Raises:
      ValueError: a choice the model cannot take, classifier guidance without a classifier, or a
        classifier trained on other data; before anything is compiled.
    """
    diffusion = recipe.diffusion
    family = model_family(diffusion)
    choice.check(diffusion.schedule.num_timesteps if family == "discrete" else None, family=family)
    class_guided = choice.classifier_scale != 0
    if class_guided and classifier is None:
        raise ValueError("classifier guidance (classifier_scale != 0) needs a trained noise-conditional classifier "
                         "(sample.classifier_workdir)")
    if class_guided and tuple(classifier.input_shape) != tuple(recipe.input_shape):
        raise ValueError(f"the classifier was trained on data of shape {tuple(classifier.input_shape)}, the model on "
                         f"{tuple(recipe.input_shape)}")
    if class_guided and recipe.num_classes and classifier.num_classes != recipe.num_classes:
        raise ValueError(f"the classifier knows {classifier.num_classes} classes, the conditional model "
                         f"{recipe.num_classes}")
    conditional = recipe.num_classes > 0
    num_labels = recipe.num_classes if conditional else classifier.num_classes if class_guided else 0
    log_prob = classifier_log_prob(classifier.model) if class_guided else None
    devices = mesh.devices.size
    padded = -(-num_samples // devices) * devices
    shape = (padded, *recipe.input_shape)
    if family == "discrete":
        schedule = diffusion.schedule
        denoise = make_denoise_fn(
            recipe.model, num_timesteps=schedule.original_num_timesteps, rescale_timesteps=recipe.rescale_timesteps
        )
    else:
        def denoise(params, x, c_noise, cond):
            return recipe.model.apply({"params": params}, x, c_noise, cond)
    guided = recipe.num_classes > 0 and choice.guidance_weight != 0
    null = jnp.full((padded,), recipe.num_classes, jnp.int32)

    def network(guidance_weight):
        """The denoiser, guided with the traced weight w when guidance was asked for."""
        return classifier_free_guidance(denoise, guidance_weight, null) if guided else denoise

    def finish(denoise_x0):
        if choice.dynamic_threshold > 0:
            return solvers.dynamic_threshold(denoise_x0, choice.dynamic_threshold)
        return solvers.clip_x0(denoise_x0) if choice.clip_denoised else denoise_x0

    def guide(denoise_x0, process, labels, classifier_args):
        """The (finished) data prediction with Algorithm 2's classifier guidance when asked for."""
        if not class_guided:
            return denoise_x0
        classifier_params, scale = classifier_args
        return classifier_guided_x0(denoise_x0, process_grad_fn(log_prob, classifier_params, labels, process), scale,
                                    process)

    def model_cond(labels):
        return labels if conditional else None

    grid_of_params = None
    if family == "naive":
        num_steps = choice.num_steps(diffusion)

        def draw(params, key, labels, guidance_weight, classifier_args, x_T):
            def predict(x, network_time):
                return network(guidance_weight)(params, x, network_time, model_cond(labels))

            return diffusion.sample(predict, x_T, num_steps)

        arguments = ()
    elif family == "continuous":
        options = accepted_options(choice.solver, dict(choice.solver_options))

        def draw(params, key, labels, guidance_weight, classifier_args, x_T, drawn, grid, options):
            process = diffusion.make_process(params)
            # A drawn x_T ~ N(0, I) becomes the prior at grid[0], N(0, (alpha^2 + sigma^2) I): N(0, I) for a VP
            # process, sigma_max^2 + 1 for EDM's (ode_likelihood.prior_variance, the continuous bound's prior).
            prior_std = jnp.sqrt(process.alpha(grid[0]) ** 2 + process.sigma(grid[0]) ** 2)
            x_T = x_T * jnp.where(drawn, prior_std, 1.0)

            def denoise_x0(x, t):
                t_batch = jnp.full((x.shape[0],), t, dtype=jnp.asarray(t).dtype)
                return diffusion.predict_x0(network(guidance_weight), params, process, x, t_batch, model_cond(labels))

            step = functools.partial(solvers.SOLVERS[choice.solver], **options)
            guided_x0 = guide(finish(denoise_x0), process, labels, classifier_args)
            return solvers.solve(step, process, guided_x0, x_T, grid, key=jax.random.fold_in(key, 1),
                                 denoise_to_zero=True)

        if diffusion.learned_schedule:  # the grid depends on the (EMA) schedule: made per call from params
            grid_of_params = jax.jit(lambda params: solver_grid(choice, diffusion.make_process(params)))
            grid = jnp.zeros((int(choice.steps) + 1,), jnp.float32)
        else:
            grid = solver_grid(choice, diffusion.make_process())
        arguments = (grid, {k: jnp.float32(v) for k, v in options.items()})
    elif choice.solver:
        process = discrete_process(schedule)
        options = accepted_options(choice.solver, dict(choice.solver_options))

        def draw(params, key, labels, guidance_weight, classifier_args, x_T, grid, options):
            denoise_x0 = solvers.x0_predictor(network(guidance_weight), params, diffusion.spec, process,
                                              model_cond(labels))
            step = functools.partial(solvers.SOLVERS[choice.solver], **options)
            guided_x0 = guide(finish(denoise_x0), process, labels, classifier_args)
            return solvers.solve(step, process, guided_x0, x_T, grid, key=jax.random.fold_in(key, 1),
                                 denoise_to_zero=True)

        arguments = (solver_grid(choice, schedule), {k: jnp.float32(v) for k, v in options.items()})
    else:
        chain, _ = respace(schedule, choice.steps)

        def draw(params, key, labels, guidance_weight, classifier_args, x_T, eta):
            guidance = {}
            if class_guided:
                classifier_params, scale = classifier_args
                guidance = dict(classifier_grad=chain_grad_fn(log_prob, classifier_params, labels, chain),
                                classifier_scale=scale)
            return sample(
                network(guidance_weight), params, chain, diffusion.spec, jax.random.fold_in(key, 1), shape,
                model_cond(labels), method=choice.method, eta=eta, clip_denoised=choice.clip_denoised, x_T=x_T,
                **guidance,
            )

        arguments = (jnp.float32(choice.eta),)

    compiled = jax.jit(draw, out_shardings=data_sharding(mesh))
    replicated = replicated_sharding(mesh)
    if family == "naive":
        noise = jax.jit(lambda key: diffusion.prior_sample(key, shape), out_shardings=data_sharding(mesh))
    else:
        noise = jax.jit(lambda key: jax.random.normal(key, shape, jnp.float32), out_shardings=data_sharding(mesh))
    traced_names = () if family == "naive" else ("grid", "solver_options") if choice.solver else ("eta",)

    def run(params, key, labels=None, *, x_T=None, standard_x_T=False, guidance_weight=None, classifier_scale=None,
            **traced):
        """Samples [N, *input_shape] of ``params`` from ``key`` (x_T drawn from it: the prior at the
        grid's first time, N(0, (alpha^2 + sigma^2) I), i.e. N(0, I) but for the variance-exploding
        process; or ``x_T`` [N, *input_shape] given: the state at the grid's first time, e.g. a
        latent of ``diffusion.latent.encode``, or, with ``standard_x_T``, a standard-normal draw
        (e.g. slerps of two) that is scaled to the prior like a drawn one). The traced settings
        may be changed per call without recompiling: ``guidance_weight``, and ``grid``
        (float [K + 1]) and ``solver_options`` (a dict of the solver's options) for a solver,
        ``eta`` for the chain; ``classifier_scale`` when built with a nonzero one; the others keep the
        values of ``choice``. ``labels`` (int32 [N]) are the classes of a conditional model and the
        targets of classifier guidance (default 0, 1, 2, ... cycling)."""
        unknown = set(traced) - set(traced_names)
        if unknown:
            raise TypeError(f"unknown traced settings {sorted(unknown)}; this sampler takes {traced_names}")
        values = dict(zip(traced_names, arguments))
        if grid_of_params is not None and "grid" not in traced:
            values["grid"] = grid_of_params(params)
        if "grid" in traced:
            values["grid"] = jnp.asarray(traced["grid"], jnp.float32)
            if values["grid"].shape != arguments[0].shape:
                raise ValueError(f"the grid has shape {values['grid'].shape}; this sampler was built for {arguments[0].shape}")
        if "solver_options" in traced:
            extra = set(traced["solver_options"]) - set(values["solver_options"])
            if extra:
                raise ValueError(f"{choice.solver} does not take the options {sorted(extra)}")
            values["solver_options"] = {**values["solver_options"],
                                        **{k: jnp.float32(v) for k, v in traced["solver_options"].items()}}
        if "eta" in traced:
            values["eta"] = jnp.float32(traced["eta"])
        if guidance_weight is not None and not guided:
            raise ValueError("this sampler was built without guidance (an unconditional model, or guidance_weight 0 "
                             "in its choice): build it with a nonzero guidance_weight to change the weight per call")
        weight = jnp.float32(choice.guidance_weight if guidance_weight is None else guidance_weight)
        if classifier_scale is not None and not class_guided:
            raise ValueError("this sampler was built without classifier guidance (classifier_scale 0 in its choice): "
                             "build it with a nonzero classifier_scale and a classifier to change the scale per call")
        classifier_args = None
        if class_guided:
            scale = choice.classifier_scale if classifier_scale is None else classifier_scale
            classifier_args = (classifier.params, jnp.float32(scale))
        if num_labels:
            labels = np.arange(padded) % num_labels if labels is None else np.resize(np.asarray(labels), padded)
            if labels.min() < 0 or labels.max() >= num_labels:
                raise ValueError(f"labels must be classes in [0, {num_labels}), got {labels.min()}..{labels.max()}")
            labels = jax.device_put(jnp.asarray(labels, jnp.int32), replicated)
        else:
            labels = None
        drawn = x_T is None or standard_x_T
        if x_T is None:
            x_T = noise(key)
        else:
            if x_T.shape != (num_samples, *recipe.input_shape):
                raise ValueError(f"x_T has shape {x_T.shape}; expected {(num_samples, *recipe.input_shape)}")
            x_T = np.concatenate([np.asarray(x_T, np.float32), np.zeros((padded - num_samples, *x_T.shape[1:]), np.float32)])
            x_T = jax.device_put(x_T, data_sharding(mesh))
        given = () if family != "continuous" else (jnp.asarray(drawn),)
        samples = compiled(params, key, labels, weight, classifier_args, x_T, *given,
                           *(values[name] for name in traced_names))
        if jax.process_count() > 1:
            samples = multihost_utils.process_allgather(samples, tiled=True)
        return np.asarray(samples)[:num_samples]

    run.compiled = compiled  # for tests and benchmarks: ``run.compiled._cache_size()`` counts compilations
    run.num_labels = num_labels  # the classes ``labels`` range over (0: the sampler takes none)
    return run
