"""Exact denoisers for data whose distribution is known in closed form.

For data x_0 ~ sum_k pi_k N(mu_k, s_k^2 I), the noisy marginal at step t is again a
mixture, x_t ~ sum_k pi_k N(a mu_k, (a^2 s_k^2 + sigma^2) I) with a = sqrt(alpha_bar_t) and
sigma^2 = 1 - alpha_bar_t, and the optimal (MMSE) noise prediction is

    E[eps | x_t] = sum_k r_k(x_t) sigma (x_t - a mu_k) / (a^2 s_k^2 + sigma^2),

with r_k the posterior responsibility of component k. Sampling with it tests samplers
and likelihoods end to end with no training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.schedules import Schedule

__all__ = ["gaussian_mixture_denoiser"]


def gaussian_mixture_denoiser(schedule: Schedule, means, stds, weights):
    """The exact eps-prediction denoiser of an isotropic Gaussian mixture.

    Args:
      schedule: the schedule the denoiser is queried on, indexed by original steps (a
        full, not respaced, schedule).
      means: [K, D] component means.
      stds: [K] component standard deviations (0 gives point masses).
      weights: [K] mixture weights, summing to 1.

    Returns:
      ``denoise(params, x_t, t, cond) -> eps_hat`` with x_t [B, D] and t int [B]; params and
      cond are ignored. Its outputs are read with ``DiffusionSpec("eps", ...)``.
    """
    means = jnp.asarray(means, jnp.float32)
    variances = jnp.square(jnp.asarray(stds, jnp.float32))
    log_weights = jnp.log(jnp.asarray(weights, jnp.float32))
    if means.ndim != 2 or variances.shape != means.shape[:1] or log_weights.shape != means.shape[:1]:
        raise ValueError(f"need means [K, D], stds [K], weights [K]; got {means.shape}, {np.shape(stds)}, {np.shape(weights)}")
    dim = means.shape[1]

    def denoise(params, x_t, t, cond):
        del params, cond
        a = schedule.sqrt_alphas_cumprod[t][:, None]  # [B, 1]
        sigma = schedule.sqrt_one_minus_alphas_cumprod[t][:, None]
        component_var = jnp.square(a) * variances[None, :] + jnp.square(sigma)  # [B, K]
        residual = x_t[:, None, :] - a[:, :, None] * means[None]  # [B, K, D]
        log_density = (
            log_weights[None]
            - 0.5 * jnp.sum(jnp.square(residual), axis=-1) / component_var
            - 0.5 * dim * jnp.log(component_var)
        )
        responsibility = jax.nn.softmax(log_density, axis=-1)  # [B, K]
        eps_given_k = sigma[:, :, None] * residual / component_var[:, :, None]
        return jnp.sum(responsibility[:, :, None] * eps_given_k, axis=1)

    return denoise
