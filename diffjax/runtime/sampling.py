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
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax.diffusion import solvers, time_grids
from diffjax.diffusion.continuous import ContinuousDiffusion
from diffjax.diffusion.guidance import classifier_guided_x0
from diffjax.diffusion.naive import NaiveDiffusion
from diffjax.diffusion.noisy_classifier import NoisyClassification, chain_grad_fn, classifier_log_prob, process_grad_fn
from diffjax.diffusion.processes import NoiseProcess, discrete_process
from diffjax.diffusion.samplers import classifier_free_guidance, sample
from diffjax.diffusion.schedules import Schedule, respace
from diffjax.models.denoiser import make_denoise_fn
from diffjax.runtime.mesh import data_sharding, replicated_sharding

__all__ = [
    "GRID_NAMES", "SOLVER_OPTION_DEFAULTS", "GuidanceClassifier", "SamplerChoice", "make_sampler", "model_family",
    "solver_grid",
]

SOLVER_OPTION_DEFAULTS = {
    "eta": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0, "snr": 0.16,
}
"""The stochastic solvers' traced keyword options and their defaults (``config.sample.solver_options``):
eta (Euler ancestral, DPM-Solver++(2M) SDE), S_churn / S_tmin / S_tmax / S_noise (EDM's
Algorithm 2; S_noise also scales the others' noise) and snr (score_sde's Langevin corrector).
Each solver receives the ones its step function accepts."""

DISCRETE_GRID_PREFIX = "discrete_"
GRID_NAMES = (*time_grids.GRIDS, *(DISCRETE_GRID_PREFIX + rule for rule in time_grids.DISCRETE_RULES))
"""``config.sample.grid``: a continuous grid of ``time_grids.GRIDS`` (fractional model steps
between the trained ones) or ``discrete_<rule>`` (the trained integer steps strided by
``time_grids.discrete_grid``'s rule)."""

_ENTRY = re.compile(r"^([a-z0-9_]+):(\d+)(?::([a-z_]+))?$")


@dataclasses.dataclass(frozen=True)
class SamplerChoice:
    """How samples are drawn.

    Attributes:
      solver: "" for the discrete chain (``method`` on the schedule respaced by ``steps``),
        else a key of ``solvers.SOLVERS`` run for ``steps`` steps over ``grid``.
      steps: a respacing string for the chain ("ddim50", "250", ""), or the number of
        solver steps K ("10").
      method: the chain's step, "ddpm" (ancestral, the model's own variance) or "ddim".
      eta: the chain's DDIM eta.
      clip_denoised: clip the data prediction to [-1, 1] (both paths).
      dynamic_threshold: > 0: Imagen's dynamic thresholding at this percentile instead of
        clipping (solvers only).
      guidance_weight: classifier-free guidance w (conditional models).
      classifier_scale: classifier guidance s (0: off; needs a ``GuidanceClassifier``).
      grid: a name of ``GRID_NAMES`` (solvers only).
      rho: the Karras grid's rho.
      solver_options: (name, value) pairs of ``SOLVER_OPTION_DEFAULTS`` (solvers only).
    """

    solver: str = ""
    steps: str = "ddim50"
    method: str = "ddim"
    eta: float = 0.0
    clip_denoised: bool = True
    dynamic_threshold: float = 0.0
    guidance_weight: float = 0.0
    classifier_scale: float = 0.0
    grid: str = "uniform_log_snr"
    rho: float = 7.0
    solver_options: tuple[tuple[str, float], ...] = tuple(SOLVER_OPTION_DEFAULTS.items())

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], entry: str | None = None) -> SamplerChoice:
        """The choice of a mapping of sample settings keyed by this class's field names
        (``config.sample``, or a dict; other keys are ignored). ``entry`` (an item of
        ``config.eval.sample_steps``) overrides it: "SOLVER:K" (e.g. "dpmpp_2m:10") picks that
        solver and K, "SOLVER:K:GRID" (e.g. "heun:4:karras") also the grid; anything else is
        a respacing of the discrete chain with the settings' ``method``."""
        s = settings
        options = {**SOLVER_OPTION_DEFAULTS, **dict(s["solver_options"])}
        choice = cls(
            solver=s["solver"], steps=str(s["steps"]), method=s["method"], eta=float(s["eta"]),
            clip_denoised=bool(s["clip_denoised"]), dynamic_threshold=float(s["dynamic_threshold"]),
            guidance_weight=float(s["guidance_weight"]), classifier_scale=float(s.get("classifier_scale", 0.0)),
            grid=s["grid"], rho=float(s["rho"]),
            solver_options=tuple(sorted((k, float(v)) for k, v in options.items())),
        )
        if entry is None:
            return choice
        match = _ENTRY.match(entry)
        if match:
            grid = match.group(3) or choice.grid
            return dataclasses.replace(choice, solver=match.group(1), steps=match.group(2), grid=grid)
        return dataclasses.replace(choice, solver="", steps=entry)

    def check(self, num_timesteps: int | None, family: str = "discrete") -> None:
        """Raise ``ValueError`` naming what is wrong for a model of ``family`` ("discrete":
        trained on T = ``num_timesteps``; "continuous"; "naive")."""
        if family in ("naive", "classifier") and self.classifier_scale:
            raise ValueError(f"classifier guidance steers a Gaussian diffusion model's sampler, not a {family} model")
        if family == "classifier":
            raise ValueError("a noise-conditional classifier draws no samples: it guides a diffusion model's sampler "
                             "(sample.classifier_workdir and sample.classifier_scale of that model's command)")
        if family == "naive":
            if self.solver:
                raise ValueError(f"naive diffusion has its own iterative sampler, not the solver {self.solver!r}: "
                                 "set sample.solver='' and steps to the number of levels visited ('' for all)")
            if self.steps and not self.steps.isdigit():
                raise ValueError(f"naive diffusion takes steps = a number of levels or '', got {self.steps!r}")
            return
        if family == "continuous" and not self.solver:
            raise ValueError("a continuous-time model is sampled by a solver (sample.solver, or SOLVER:K entries "
                             f"in eval.sample_steps), not by the discrete chain ({self.label!r})")
        if family == "continuous" and self.grid.startswith(DISCRETE_GRID_PREFIX):
            raise ValueError(f"the grid {self.grid!r} strides a discrete chain; a continuous-time model takes "
                             f"one of {sorted(time_grids.GRIDS)}")
        if not self.solver:
            if self.method not in ("ddpm", "ddim"):
                raise ValueError(f"unknown sampling method {self.method!r}; expected 'ddpm' or 'ddim'")
            return
        if self.solver not in solvers.SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; known solvers: {sorted(solvers.SOLVERS)}")
        if not self.steps.isdigit() or int(self.steps) < 1:
            raise ValueError(f"a solver takes a number of steps K >= 1, got steps={self.steps!r}")
        if self.grid not in GRID_NAMES:
            raise ValueError(f"unknown grid {self.grid!r}; known grids: {list(GRID_NAMES)}")
        if self.grid.startswith(DISCRETE_GRID_PREFIX) and int(self.steps) >= num_timesteps:
            raise ValueError(f"a discrete grid has fewer than T = {num_timesteps} steps, got {self.steps}")
        unknown = set(dict(self.solver_options)) - set(SOLVER_OPTION_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown solver options {sorted(unknown)}; known: {sorted(SOLVER_OPTION_DEFAULTS)}")
        if not 0.0 <= self.dynamic_threshold < 1.0:
            raise ValueError(f"dynamic_threshold is a percentile in (0, 1) or 0 (off), got {self.dynamic_threshold}")

    @property
    def deterministic(self) -> bool:
        """Whether x_T determines the sample (DDIM with eta = 0, a deterministic solver)."""
        if not self.solver:
            return self.method == "ddim" and self.eta == 0
        return self.solver not in solvers.STOCHASTIC

    @property
    def label(self) -> str:
        """"dpmpp_2m:10:uniform_log_snr" or the chain's respacing ("ddim50", "100", "full")."""
        return f"{self.solver}:{self.steps}:{self.grid}" if self.solver else (self.steps or "full")

    def num_steps(self, model) -> int:
        """Steps taken: K for a solver, the respaced chain's length for a discrete model (its
        ``Schedule`` or its ``Diffusion``), the levels visited for naive diffusion."""
        if self.solver:
            return int(self.steps)
        if isinstance(model, NaiveDiffusion):
            return int(self.steps) if self.steps else model.num_levels
        schedule = model if isinstance(model, Schedule) else model.schedule
        return respace(schedule, self.steps)[0].num_timesteps

    def nfe(self, model) -> int:
        """Network evaluations per sample (a guided model's two passes count once, as in the
        papers): K x the solver's NFE per step + 1 (the final denoising to x_0), or the
        chain's length."""
        if not self.solver:
            return self.num_steps(model)
        return solvers.NFE_PER_STEP[self.solver] * int(self.steps) + 1

    def settings(self) -> dict[str, Any]:
        """The settings that made the samples, for the records next to them."""
        common = {"label": self.label, "clip_denoised": self.clip_denoised, "guidance_weight": self.guidance_weight,
                  "classifier_scale": self.classifier_scale}
        if not self.solver:
            return {**common, "sampler": "chain", "method": self.method, "steps": self.steps, "eta": self.eta}
        return {**common, "sampler": "solver", "solver": self.solver, "steps": int(self.steps), "grid": self.grid,
                "rho": self.rho, "dynamic_threshold": self.dynamic_threshold,
                "solver_options": _accepted_options(self.solver, dict(self.solver_options))}


def _accepted_options(solver: str, options: Mapping[str, float]) -> dict[str, float]:
    """The options the solver's step takes as keyword arguments."""
    step = solvers.SOLVERS[solver]
    bound = step.keywords if isinstance(step, functools.partial) else {}
    function = step.func if isinstance(step, functools.partial) else step
    parameters = inspect.signature(function).parameters
    return {k: v for k, v in options.items() if k in parameters and k not in bound}


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


def solver_grid(choice: SamplerChoice, model: Schedule | NoiseProcess) -> jax.Array:
    """The time grid [K + 1] of a solver choice for a model trained on a discrete ``Schedule``,
    or on a continuous ``NoiseProcess``."""
    num_steps = int(choice.steps)
    if isinstance(model, NoiseProcess):
        process = model
    else:
        schedule, process = model, discrete_process(model)
        if choice.grid.startswith(DISCRETE_GRID_PREFIX):
            return time_grids.discrete_grid(schedule.num_timesteps, num_steps, choice.grid[len(DISCRETE_GRID_PREFIX):])
    if choice.grid == "karras":
        return time_grids.karras(process, num_steps, rho=choice.rho)
    return time_grids.GRIDS[choice.grid](process, num_steps)


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
        options = _accepted_options(choice.solver, dict(choice.solver_options))

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
        options = _accepted_options(choice.solver, dict(choice.solver_options))

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
