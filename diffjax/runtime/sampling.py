"""Generating samples from a trained model, sharded over the devices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax.diffusion.samplers import classifier_free_guidance, sample
from diffjax.diffusion.schedules import respace
from diffjax.models.denoiser import make_denoise_fn
from diffjax.runtime.mesh import data_sharding, replicated_sharding

__all__ = ["make_sampler"]


def make_sampler(
    recipe,
    mesh: Mesh,
    *,
    num_samples: int,
    steps: str,
    method: str,
    eta: float = 0.0,
    clip_denoised: bool = True,
    guidance_weight: float = 0.0,
) -> Callable[[Any, jax.Array, Any], np.ndarray]:
    """A compiled ``draw(params, key, labels=None) -> samples`` (numpy [N, *input_shape]).

    The chain is the recipe's schedule respaced by ``steps`` (e.g. "ddim50", "250", ""),
    run in one ``lax.scan``; the N samples are split over the devices along ``data``
    (N is rounded up to a multiple of the device count and cut back). Class-conditional
    models get ``labels`` (int32 [N]; default: 0, 1, 2, ... cycling) and guidance weight w.

    Args:
      recipe: the experiment's ``Recipe``.
      mesh: the data mesh.
      num_samples: N.
      steps: respacing string for sampling.
      method: "ddpm" or "ddim".
      eta: DDIM's eta.
      clip_denoised: clip x_0-hat to [-1, 1].
      guidance_weight: classifier-free guidance w (conditional models only).
    """
    schedule, _ = respace(recipe.diffusion.schedule, steps)
    devices = mesh.devices.size
    padded = -(-num_samples // devices) * devices
    shape = (padded, *recipe.input_shape)
    denoise = make_denoise_fn(
        recipe.model, num_timesteps=schedule.original_num_timesteps, rescale_timesteps=recipe.rescale_timesteps
    )
    if recipe.num_classes > 0 and guidance_weight != 0:
        null = jnp.full((padded,), recipe.num_classes, jnp.int32)
        denoise = classifier_free_guidance(denoise, guidance_weight, null)

    def draw(params, key, labels):
        x_T = jax.lax.with_sharding_constraint(jax.random.normal(key, shape, jnp.float32), data_sharding(mesh))
        return sample(
            denoise, params, schedule, recipe.diffusion.spec, jax.random.fold_in(key, 1), shape, labels,
            method=method, eta=eta, clip_denoised=clip_denoised, x_T=x_T,
        )

    compiled = jax.jit(draw, out_shardings=data_sharding(mesh))
    replicated = replicated_sharding(mesh)

    def run(params, key, labels=None):
        if recipe.num_classes > 0:
            labels = np.arange(padded) % recipe.num_classes if labels is None else np.resize(np.asarray(labels), padded)
            labels = jax.device_put(jnp.asarray(labels, jnp.int32), replicated)
        else:
            labels = None
        samples = compiled(params, key, labels)
        if jax.process_count() > 1:
            samples = multihost_utils.process_allgather(samples, tiled=True)
        return np.asarray(samples)[:num_samples]

    return run
