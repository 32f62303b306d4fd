"""Generating samples from a trained model, sharded over the devices: the model family's
sampler for a ``SamplerChoice`` (the discrete chain, any continuous-time solver of
``diffusion.solvers`` on a Gaussian family's process, naive diffusion's iterative sampler),
compiled once, with its inputs padded to the devices.

A ``SamplerChoice`` says how samples are drawn; ``make_sampler`` compiles it. What a
compiled sampler is specialised on (changing it recompiles): the solver and its static
options (UniPC's order, the corrector steps), the number of steps K (the scan's length and
the grid's shape), the batch shape, the clipping / thresholding choice, and the model.
What it is not specialised on: the grid's values, the guidance weight, eta and the other
stochastic parameters, and the key. They are arguments of the compiled function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax.diffusion.continuous import noise_conditioning
from diffjax.diffusion.families.base import Draw
from diffjax.diffusion.families.guidance import Guidance
from diffjax.diffusion.noisy_classifier import classifier_log_prob
from diffjax.models.denoiser import network_fn
from diffjax.runtime.mesh import data_sharding, replicated_sharding
from diffjax.runtime.sampler_choice import SamplerChoice

__all__ = ["GuidanceClassifier", "SamplerChoice", "make_sampler"]


@dataclasses.dataclass(frozen=True)
class GuidanceClassifier:
    """A trained noise-conditional classifier p_phi(y | x_t), for ``make_sampler``'s classifier
    guidance (``run.restore.restore_classifier`` loads one from its workdir).

    Attributes:
      model: the Flax classifier (``models.classifier.NoisyClassifier``): logits [B, K] of the
        variance-preserving state and ``network_time(log_snr)``.
      params: its params (the EMA ones), replicated over the mesh.
      num_classes: K.
      input_shape: one example's shape, as it was trained.
      workdir: where it was restored from, recorded with the samples ("" if not from one).
      network_time: the network's noise input at log-SNR [B] (its family's
        ``NoisyClassification.network_time``).
    """

    model: Any
    params: Any
    num_classes: int
    input_shape: tuple[int, ...]
    workdir: str = ""
    network_time: Callable[[jax.Array], jax.Array] = noise_conditioning


def make_sampler(recipe, mesh: Mesh, *, num_samples: int, choice: SamplerChoice,
                 classifier: GuidanceClassifier | None = None) -> Callable[..., np.ndarray]:
    """A compiled ``draw(params, key, labels=None) -> samples`` (numpy [N, *input_shape]);
    ``draw.num_labels`` is the number of classes its labels range over (a conditional model's, or
    the guiding classifier's; 0 when it takes no labels).

    The family (``recipe.family``) checks the choice and gives its sampler (``make_draw``): the
    discrete chain respaced by ``choice.steps``, a continuous-time solver over the choice's grid
    on the family's noise process (ending with the denoising step to x_0), or naive diffusion's
    own iterative sampler. Every choice starts from x_T drawn from ``key`` by the family's prior
    (or a given x_T), so the same key gives every choice the same x_T. The N samples are split
    over the devices along ``data`` (N is rounded up to a multiple of the device count and cut
    back). Class-conditional models get ``labels`` (int32 [N]; default 0, 1, 2, ... cycling).

    Guidance (``diffusion.families.guidance``): classifier-free guidance with the weight
    ``choice.guidance_weight`` (a conditional model), and classifier guidance
    (``choice.classifier_scale`` = s != 0, with ``classifier``; Gaussian families only) toward
    ``labels`` (the same default), both traced arguments of the compiled function.

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
    family = recipe.family
    family.check_choice(choice)
    class_guided = choice.classifier_scale != 0
    if class_guided:
        _check_classifier(recipe, classifier)
    conditional = recipe.num_classes > 0
    num_labels = recipe.num_classes if conditional else classifier.num_classes if class_guided else 0
    padded = -(-num_samples // mesh.devices.size) * mesh.devices.size
    shape = (padded, *recipe.input_shape)
    guided = conditional and choice.guidance_weight != 0
    guidance = Guidance(
        conditional=conditional,
        null_cond=jnp.full((padded,), recipe.num_classes, jnp.int32) if guided else None,
        classifier_log_prob=classifier_log_prob(classifier.model, classifier.network_time) if class_guided else None,
    )
    options = choice.traced_options() if choice.solver else {}
    draw = family.make_draw(choice, network_fn(recipe.model), guidance, options)
    compiled = jax.jit(draw.fn, out_shardings=data_sharding(mesh))
    noise = jax.jit(lambda key: draw.prior(key, shape), out_shardings=data_sharding(mesh))
    replicated = replicated_sharding(mesh)

    def run(params, key, labels=None, *, x_T=None, standard_x_T=False, guidance_weight=None, classifier_scale=None,
            **traced):
        """Samples [N, *input_shape] of ``params`` from ``key`` (x_T drawn from it by the family's
        prior: N(0, I) scaled to the prior at the grid's first time for a continuous model; or
        ``x_T`` [N, *input_shape] given: the state at the grid's first time, e.g. a latent of
        ``diffusion.latent.encode``, or, with ``standard_x_T``, a standard-normal draw (e.g. slerps
        of two) that is scaled to the prior like a drawn one). The traced settings may be changed
        per call without recompiling: ``guidance_weight``, and ``grid`` (float [K + 1]) and
        ``solver_options`` (a dict of the solver's options) for a solver, ``eta`` for the chain;
        ``classifier_scale`` when built with a nonzero one; the others keep the values of
        ``choice``. ``labels`` (int32 [N]) are the classes of a conditional model and the targets
        of classifier guidance (default 0, 1, 2, ... cycling)."""
        values = _traced_values(draw, params, traced, choice.solver)
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
        labels = _device_labels(labels, num_labels, padded, replicated)
        drawn = x_T is None or standard_x_T
        x_T = noise(key) if x_T is None else _padded_x_T(x_T, (num_samples, *recipe.input_shape), padded, mesh)
        samples = compiled(params, key, labels, weight, classifier_args, x_T, jnp.asarray(drawn), values)
        if jax.process_count() > 1:
            samples = multihost_utils.process_allgather(samples, tiled=True)
        return np.asarray(samples)[:num_samples]

    run.compiled = compiled  # for tests and benchmarks: ``run.compiled._cache_size()`` counts compilations
    run.num_labels = num_labels  # the classes ``labels`` range over (0: the sampler takes none)
    return run


def _check_classifier(recipe, classifier: GuidanceClassifier | None) -> None:
    """Classifier guidance: a Gaussian family, a classifier, trained on this model's data."""
    if not recipe.family.gaussian:
        raise ValueError(f"classifier guidance steers a Gaussian diffusion model's sampler, not a "
                         f"{recipe.family.name} model")
    if classifier is None:
        raise ValueError("classifier guidance (classifier_scale != 0) needs a trained noise-conditional classifier "
                         "(sample.classifier_workdir)")
    if tuple(classifier.input_shape) != tuple(recipe.input_shape):
        raise ValueError(f"the classifier was trained on data of shape {tuple(classifier.input_shape)}, the model on "
                         f"{tuple(recipe.input_shape)}")
    if recipe.num_classes and classifier.num_classes != recipe.num_classes:
        raise ValueError(f"the classifier knows {classifier.num_classes} classes, the conditional model "
                         f"{recipe.num_classes}")


def _traced_values(draw: Draw, params, traced: dict[str, Any], solver: str) -> dict[str, Any]:
    """The draw's traced settings with a call's changes (``grid``, ``solver_options``, ``eta``)."""
    unknown = set(traced) - set(draw.traced)
    if unknown:
        raise TypeError(f"unknown traced settings {sorted(unknown)}; this sampler takes {tuple(draw.traced)}")
    values = dict(draw.traced)
    if draw.grid_of_params is not None and "grid" not in traced:
        values["grid"] = draw.grid_of_params(params)
    if "grid" in traced:
        values["grid"] = jnp.asarray(traced["grid"], jnp.float32)
        if values["grid"].shape != draw.traced["grid"].shape:
            raise ValueError(f"the grid has shape {values['grid'].shape}; this sampler was built for "
                             f"{draw.traced['grid'].shape}")
    if "solver_options" in traced:
        extra = set(traced["solver_options"]) - set(values["solver_options"])
        if extra:
            raise ValueError(f"{solver} does not take the options {sorted(extra)}")
        values["solver_options"] = {**values["solver_options"],
                                    **{k: jnp.float32(v) for k, v in traced["solver_options"].items()}}
    if "eta" in traced:
        values["eta"] = jnp.float32(traced["eta"])
    return values


def _device_labels(labels, num_labels: int, padded: int, replicated):
    """The labels (default 0, 1, 2, ... cycling) padded to the batch and replicated, or None."""
    if not num_labels:
        return None
    labels = np.arange(padded) % num_labels if labels is None else np.resize(np.asarray(labels), padded)
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(f"labels must be classes in [0, {num_labels}), got {labels.min()}..{labels.max()}")
    return jax.device_put(jnp.asarray(labels, jnp.int32), replicated)


def _padded_x_T(x_T, shape: tuple[int, ...], padded: int, mesh: Mesh) -> jax.Array:
    """A given x_T [N, ...] padded with zeros to the device multiple and sharded."""
    if x_T.shape != shape:
        raise ValueError(f"x_T has shape {x_T.shape}; expected {shape}")
    x_T = np.concatenate([np.asarray(x_T, np.float32), np.zeros((padded - shape[0], *shape[1:]), np.float32)])
    return jax.device_put(x_T, data_sharding(mesh))
