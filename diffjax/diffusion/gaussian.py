"""The Gaussian forward process, its posterior, and the reverse step a denoiser defines.

Shapes: ``x`` is a batch [B, ...] (images [B, H, W, C], toy data [B, D]); ``t`` is int32
[B], an index into the schedule's tables (0 = the first noising step). Per-step
coefficients are gathered at ``t`` and broadcast over the non-batch axes.

How a denoiser's output is read (``DiffusionSpec``, the eps/x_0/v conversions) lives in
``diffjax.diffusion.parameterization``; its names are importable from here too.

References: DDPM (Ho et al. 2020) eqs. 4, 6, 7; improved DDPM (Nichol & Dhariwal 2021)
section 3.1.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import DiffusionSpec, read_output
from diffjax.diffusion.schedules import Schedule, at, check_batch

__all__ = ["p_mean_variance", "q_mean_variance", "q_posterior_mean_variance", "q_sample"]


# ------------------------------------------------------------------ forward process


def q_mean_variance(
    schedule: Schedule, x0: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (DDPM eq. 4).

    Args:
      schedule: the chain.
      x0: [B, ...] data.
      t: [B] int steps.

    Returns:
      (mean [B, ...], variance [B, 1, ...], log_variance [B, 1, ...]).
    """
    check_batch(x0, t)
    mean = at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
    # 1 - alpha_bar from its float64-derived square root: 1 - alpha_bar in float32 loses
    # digits at small t.
    variance = jnp.square(at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim))
    log_variance = at(schedule.log_one_minus_alphas_cumprod, t, x0.ndim)
    return mean, variance, log_variance


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Sample x_t ~ q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.

    Args:
      schedule: the chain.
      x0: [B, ...] data.
      t: [B] int steps.
      noise: [B, ...] standard normal, the eps of the objective.

    Returns:
      x_t [B, ...].
    """
    check_batch(x0, t)
    chex.assert_equal_shape([x0, noise])
    return (
        at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_posterior_mean_variance(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The true posterior q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7).

    mean = coef1_t x_0 + coef2_t x_t, variance = beta~_t; the log variance is the clipped
    one (log beta~_1 at t = 0, where beta~_0 = 0).

    Args:
      schedule: the chain.
      x0: [B, ...] data (or a prediction of it).
      x_t: [B, ...] noisy data at step t.
      t: [B] int steps.

    Returns:
      (mean [B, ...], variance [B, 1, ...], log_variance_clipped [B, 1, ...]).
    """
    check_batch(x_t, t)
    chex.assert_equal_shape([x0, x_t])
    mean = (
        at(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
        + at(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t
    )
    variance = at(schedule.posterior_variance, t, x_t.ndim)
    log_variance = at(schedule.posterior_log_variance_clipped, t, x_t.ndim)
    return mean, variance, log_variance


# ------------------------------------------------------------------ reverse step


def p_mean_variance(
    spec: DiffusionSpec,
    schedule: Schedule,
    output: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    clip_denoised: bool = False,
) -> dict[str, jax.Array]:
    """The reverse step p(x_{t-1} | x_t) that a denoiser's output defines.

    ``read_output`` reads ``output`` as x_0-hat (optionally clipped to [-1, 1]), eps-hat
    and the log variance; the mean is the true posterior mean given x_0-hat (DDPM eq. 7,
    improved DDPM section 3.1).

    Arguments as ``read_output``: ``output`` [B, ..., C or 2C] is the denoiser's output for
    (x_t [B, ..., C], t [B]) and ``clip_denoised`` clips x_0-hat (sampling and evaluation).

    Returns:
      dict with ``mean`` [B, ..., C], ``variance`` and ``log_variance`` (broadcastable to
      [B, ..., C]: [B, 1, ..., 1] when fixed), ``pred_x0`` and ``pred_eps`` [B, ..., C].
    """
    prediction = read_output(spec, schedule, output, x_t, t, clip_denoised)
    mean, _, _ = q_posterior_mean_variance(schedule, prediction.x0, x_t, t)
    return dict(
        mean=mean,
        variance=jnp.exp(prediction.log_variance),
        log_variance=prediction.log_variance,
        pred_x0=prediction.x0,
        pred_eps=prediction.eps,
    )
