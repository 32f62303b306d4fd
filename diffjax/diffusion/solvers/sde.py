"""Stochastic solvers of the reverse SDE: EDM's stochastic sampler (Algorithm 2), Euler
ancestral, DPM-Solver++(2M) SDE. Their parameters are keyword arguments (traced or bound with
``functools.partial``); step i draws its noise from ``step_key(carry)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes import NoiseProcess
from diffjax.diffusion.solvers.core import History, X0Fn, advance, half_log_snr, step_key
from diffjax.diffusion.solvers.ode import heun_update

__all__ = ["dpmpp_2m_sde_step", "edm_stochastic_step", "euler_ancestral_step"]


def edm_stochastic_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History,
    *, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) in y = x / alpha, sigma~.

    gamma = min(S_churn / K, sqrt(2) - 1) where S_tmin <= sigma~ <= S_tmax (else 0); the
    noise level is raised to sigma^ = (1 + gamma) sigma~ by adding sqrt(sigma^2 - sigma~^2)
    S_noise z, then ``heun_step``'s update runs from sigma^ to sigma~_{t'} (Euler when it is
    0). NFE 2 per step (1 on a step to sigma~ = 0). With S_churn = 0 it is ``heun_step``
    exactly. The S_* parameters may be traced.
    """
    s_cur = process.edm_sigma(t_cur)
    in_range = jnp.logical_and(s_cur >= s_tmin, s_cur <= s_tmax)
    gamma = jnp.where(in_range, jnp.minimum(s_churn / carry.num_steps, jnp.sqrt(2.0) - 1.0), 0.0)
    churned = gamma > 0
    s_hat = s_cur * (1.0 + gamma)
    t_hat = jnp.where(churned, process.t_from_edm_sigma(s_hat), t_cur).astype(jnp.asarray(t_cur).dtype)
    z = jax.random.normal(step_key(carry), x.shape, x.dtype)
    y_hat = x / process.alpha(t_cur) + jnp.sqrt(jnp.maximum(s_hat**2 - s_cur**2, 0.0)) * s_noise * z
    x_hat = jnp.where(churned, process.alpha(t_hat) * y_hat, x).astype(x.dtype)
    x_next, x0 = heun_update(process, denoise_x0, x_hat, t_hat, t_next)
    return x_next, advance(carry, x0, t_hat)


def euler_ancestral_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History, *, eta=1.0, s_noise=1.0
):
    """k-diffusion's ``sample_euler_ancestral`` in y = x / alpha and sigma~ = ``edm_sigma``.

    sigma_up = min(sigma~', eta sqrt(sigma~'^2 (sigma~^2 - sigma~'^2) / sigma~^2)),
    sigma_down = sqrt(sigma~'^2 - sigma_up^2); an Euler step of dy/dsigma~ = (y - D)/sigma~
    to sigma_down, then sigma_up S_noise z added: y' = y + (sigma_down - sigma~)(y - D)/sigma~
    + sigma_up S_noise z, x' = alpha' y'. eta = 1 is ancestral sampling (the posterior's
    variance in EDM's sigma); eta = 0 is DDIM (Euler in (y, sigma~)), to float rounding.
    """
    x0 = denoise_x0(x, t_cur)
    s_cur, s_next = process.edm_sigma(t_cur), process.edm_sigma(t_next)
    s_up = jnp.minimum(s_next, eta * jnp.sqrt(s_next**2 * (s_cur**2 - s_next**2) / s_cur**2))
    s_down = jnp.sqrt(s_next**2 - s_up**2)
    y = x / process.alpha(t_cur)
    z = jax.random.normal(step_key(carry), x.shape, x.dtype)
    y_next = y + (s_down - s_cur) * (y - x0) / s_cur + s_up * s_noise * z
    return (process.alpha(t_next) * y_next).astype(x.dtype), advance(carry, x0, t_cur)


def dpmpp_2m_sde_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History,
    *, eta=1.0, s_noise=1.0, lower_order_final: bool = True,
):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, SDE-DPM-Solver++(2M); k-diffusion's
    ``sample_dpmpp_2m_sde``, midpoint form) in data prediction, h = lambda_{t'} - lambda_t:

        x' = (sigma'/sigma) e^{-eta h} x + alpha' (1 - e^{-(1 + eta) h}) D~
             + sigma' sqrt(1 - e^{-2 eta h}) S_noise z,

    D~ = x0_i + 1/(2r) (x0_i - x0_{i-1}), r = h_{i-1}/h (first order on the first step and,
    with ``lower_order_final``, on the last). eta = 1 is the reverse SDE's exact solution for
    a constant D (the data-prediction SDE-DPM-Solver); eta = 0 is ``dpmpp_2m_step`` exactly.
    """
    x0 = denoise_x0(x, t_cur)
    lam_prev, lam_cur, lam_next = (half_log_snr(process, t) for t in (carry.t, t_cur, t_next))
    h = lam_next - lam_cur
    first = carry.step == 0
    last = jnp.logical_and(lower_order_final, carry.step == carry.num_steps - 1)
    r = jnp.where(first, 1.0, (lam_cur - lam_prev) / h)
    combined = jnp.where(jnp.logical_or(first, last), x0, x0 + (0.5 / r) * (x0 - carry.x0))
    sigma_ratio = jnp.exp(process.log_sigma(t_next) - process.log_sigma(t_cur))
    z = jax.random.normal(step_key(carry), x.shape, x.dtype)
    noise = process.sigma(t_next) * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)) * s_noise * z
    x_next = (
        sigma_ratio * jnp.exp(-eta * h) * x - process.alpha(t_next) * jnp.expm1(-(1.0 + eta) * h) * combined + noise
    )
    return x_next.astype(x.dtype), advance(carry, x0, t_cur)
