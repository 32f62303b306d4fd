"""What every Gaussian family shares: its data prediction as a function of (x, t), the time grid
of a solver choice, and the continuous-time solver sampler.

A Gaussian family (``base.GaussianFamily``) has a noise process x_t = alpha_t x_0 + sigma_t eps
and a ``predict_x0(network, params, process, x, t [B], cond)``; this module turns those into
``denoise_x0(x, t)`` (the data prediction D that solvers, guidance and likelihoods call) and
into a solver's ``Draw``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.diffusion import solvers, time_grids
from diffjax.diffusion.families.base import Draw, Network
from diffjax.diffusion.processes import NoiseProcess

__all__ = [
    "DISCRETE_GRID_PREFIX", "data_prediction", "finish_x0", "model_view", "solver_draw", "solver_grid", "standard_prior",
]

DISCRETE_GRID_PREFIX = "discrete_"
"""``discrete_<rule>`` grids stride a discrete chain's trained steps (``time_grids.discrete_grid``)."""


def data_prediction(family, network: Network, params: Any, process: NoiseProcess, cond: Any = None):
    """``denoise_x0(x, t)`` -> x0_hat [B, ...] of a Gaussian family's model: x [B, ...], t a
    scalar time (a solver's) or one time per example [B] (a likelihood's)."""

    def denoise_x0(x: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        if t.ndim != 0 and t.shape != x.shape[:1]:
            raise ValueError(f"t must be a scalar or one time per example {x.shape[:1]}, got shape {t.shape}")
        return family.predict_x0(network, params, process, x, t, cond)

    return denoise_x0


def model_view(family, network: Network, params: Any, cond: Any = None, bound: str = "a likelihood"):
    """(process, denoise_x0) of a Gaussian family's model with ``params``: the ``NoiseProcess``
    it was trained on (of the params' schedule when learned; its ``t_min``, ``t_max`` are where
    the denoiser is defined) and its ``data_prediction``. Call it inside the jitted function
    that takes the params, so that a learned schedule is traced, not baked in.

    Raises:
      ValueError: the family has no Gaussian process (naming ``bound``, what was asked for).
    """
    if not family.gaussian:
        raise ValueError(f"{bound} needs a Gaussian diffusion model; this model's family is {family.name!r}, "
                         "which has no likelihood")
    process = family.noise_process(params)
    return process, data_prediction(family, network, params, process, cond)


def solver_grid(choice: Any, process: NoiseProcess, num_timesteps: int | None = None) -> jax.Array:
    """The time grid [K + 1] of a solver choice (``choice.grid``, ``choice.steps`` = K,
    ``choice.rho``) on ``process``; a ``discrete_<rule>`` grid strides the T =
    ``num_timesteps`` trained steps of a discrete chain."""
    num_steps = int(choice.steps)
    if choice.grid.startswith(DISCRETE_GRID_PREFIX):
        if num_timesteps is None:
            raise ValueError(f"the grid {choice.grid!r} strides a discrete chain; this model has none")
        return time_grids.discrete_grid(num_timesteps, num_steps, choice.grid[len(DISCRETE_GRID_PREFIX):])
    if choice.grid == "karras":
        return time_grids.karras(process, num_steps, rho=choice.rho)
    return time_grids.GRIDS[choice.grid](process, num_steps)


def finish_x0(choice: Any, denoise_x0):
    """The data prediction clipped to [-1, 1] or dynamically thresholded, as ``choice`` says."""
    if choice.dynamic_threshold > 0:
        return solvers.dynamic_threshold(denoise_x0, choice.dynamic_threshold)
    return solvers.clip_x0(denoise_x0) if choice.clip_denoised else denoise_x0


def standard_prior(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """x_T ~ N(0, I), float32 [*shape]."""
    return jax.random.normal(key, shape, jnp.float32)


def solver_draw(family, choice: Any, network: Network, guidance: Any, options: Mapping[str, float], *,
                scale_prior: bool) -> Draw:
    """The ``Draw`` of a solver choice on a Gaussian family: ``solvers.solve`` over the choice's
    grid on ``family.noise_process(params)``, from x_T, ending with the denoising step to x_0;
    ``options`` are the solver's traced options (its static ones are bound by
    ``choice.solver_step()``).

    ``scale_prior``: a drawn x_T ~ N(0, I) becomes the prior at grid[0], N(0, (alpha^2 +
    sigma^2) I) (sigma_max^2 + 1 for EDM's process; ode_likelihood's prior); otherwise x_T is
    used as drawn (a discrete chain, variance preserving at its top step)."""

    def fn(params, key, labels, guidance_weight, classifier_args, x_T, drawn, traced):
        grid, cond = traced["grid"], guidance.model_cond(labels)
        process = family.noise_process(params)
        if scale_prior:
            prior_std = jnp.sqrt(process.alpha(grid[0]) ** 2 + process.sigma(grid[0]) ** 2)
            x_T = x_T * jnp.where(drawn, prior_std, 1.0)
        denoise_x0 = data_prediction(family, guidance.network(network, guidance_weight), params, process, cond)
        guided_x0 = guidance.data_prediction(finish_x0(choice, denoise_x0), process, labels, classifier_args)
        step = functools.partial(choice.solver_step(), **traced["solver_options"])
        return solvers.solve(step, process, guided_x0, x_T, grid, key=jax.random.fold_in(key, 1),
                             denoise_to_zero=True)

    grid_of_params = None
    if family.learned_process:  # the grid depends on the (EMA) schedule: made per call from the params
        grid_of_params = jax.jit(lambda params: solver_grid(choice, family.noise_process(params)))
        grid = jnp.zeros((int(choice.steps) + 1,), jnp.float32)
    else:
        grid = solver_grid(choice, family.noise_process(), family.num_timesteps)
    traced = {"grid": grid, "solver_options": {k: jnp.float32(v) for k, v in options.items()}}
    return Draw(fn=fn, traced=traced, prior=standard_prior, grid_of_params=grid_of_params)
