"""A trained Gaussian diffusion model seen as (noise process, data prediction), whatever its family.

The likelihood evaluators (``evaluation.ode_nll``, ``evaluation.elbo``) need only the model's
noise process x_t = alpha_t x_0 + sigma_t eps and its data prediction x0_hat(x_t, t):

* a ``discrete`` model (the T-step chain: ``runtime.recipe.Diffusion``) on its continuous view,
  ``processes.discrete_process(schedule)``, its network called at fractional steps between the
  trained ones and its output read per ``spec`` (``solvers.x0_predictor``);
* a ``continuous`` model (``diffusion.continuous.ContinuousDiffusion``) on its own process,
  built from params (a learned VDM schedule lives in ``params["schedule"]``, so EMA params give
  the EMA schedule), read by ``ContinuousDiffusion.predict_x0``.

A ``naive`` model (``diffusion.naive.NaiveDiffusion``) has no Gaussian process and no
likelihood: ``denoiser_view`` refuses it. Call ``denoiser_view`` inside the jitted function
that takes the params, so that a learned schedule is traced, not baked in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import split_output, x0_from_mean_part
from diffjax.diffusion.processes import NoiseProcess, discrete_process
from diffjax.diffusion.solvers.core import x0_predictor
from diffjax.models.denoiser import make_denoise_fn
from diffjax.runtime.sampling import model_family

__all__ = ["GAUSSIAN_FAMILIES", "denoiser_view", "gaussian_family"]

GAUSSIAN_FAMILIES = ("discrete", "continuous")
"""The model families with a Gaussian noise process (and so a likelihood)."""

X0Fn = Callable[[jax.Array, jax.Array], jax.Array]


def gaussian_family(recipe, what: str = "a likelihood") -> str:
    """The family of ``recipe.diffusion`` ("discrete" or "continuous").

    Raises:
      ValueError: the family has no Gaussian noise process ("naive"), naming it and ``what``
        was asked for.
    """
    family = model_family(recipe.diffusion)
    if family not in GAUSSIAN_FAMILIES:
        raise ValueError(f"{what} needs a Gaussian diffusion model (family one of {GAUSSIAN_FAMILIES}); "
                         f"this model's family is {family!r}, which has no likelihood")
    return family


def denoiser_view(recipe, params: Any, cond: Any = None) -> tuple[NoiseProcess, X0Fn]:
    """(process, denoise_x0) of a recipe's model with ``params``.

    Args:
      recipe: the experiment's ``Recipe`` (its model, diffusion, ``rescale_timesteps``).
      params: the model's params (with ``schedule`` for a learned VDM schedule).
      cond: labels [B] of a class-conditional model, or None.

    Returns:
      ``process``, the ``NoiseProcess`` the model was trained on (its ``t_min``, ``t_max`` are
      the ends where its denoiser is defined), and ``denoise_x0(x, t)`` -> x0_hat [B, ...] for
      x [B, ...] and t a scalar time or one time per example [B].

    Raises:
      ValueError: a naive model (no likelihood).
    """
    family = gaussian_family(recipe)
    diffusion = recipe.diffusion
    if family == "discrete":
        schedule, spec = diffusion.schedule, diffusion.spec
        process = discrete_process(schedule)
        denoise = make_denoise_fn(
            recipe.model, num_timesteps=schedule.original_num_timesteps, rescale_timesteps=recipe.rescale_timesteps
        )
        at_time = x0_predictor(denoise, params, spec, process, cond)

        def per_example(x, t):
            output = denoise(params, x, process.model_timestep(t), cond)
            alpha, sigma = process.alpha_sigma(t, x.ndim)
            return x0_from_mean_part(spec, x, split_output(spec, output, x.shape)[0], alpha, sigma)
    else:
        process = diffusion.make_process(params)

        def network(network_params, x, c_noise, labels):
            return recipe.model.apply({"params": network_params}, x, c_noise, labels)

        def per_example(x, t):
            return diffusion.predict_x0(network, params, process, x, t, cond)

        def at_time(x, t):
            return per_example(x, jnp.full((x.shape[0],), t, dtype=jnp.asarray(t).dtype))

    def denoise_x0(x: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        if t.ndim == 0:
            return at_time(x, t)
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must be a scalar or one time per example {x.shape[:1]}, got shape {t.shape}")
        return per_example(x, t)

    return process, denoise_x0
