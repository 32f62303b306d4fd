"""The exact data prediction of a Gaussian mixture, shared by the solver tests' float32 runs
and their float64 NumPy references (``xp`` is ``jnp`` or ``np``)."""

import numpy as np


def mixture_posterior_mean(xp, x, alpha, sigma, means, variances, weights):
    """E[x_0 | x_t = x] for x_t = alpha x_0 + sigma eps and x_0 ~ sum_k w_k N(m_k, s_k^2 I):
    sum_k r_k(x) [m_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x - alpha m_k)], r_k the
    responsibilities. x [B, D], means [K, D], variances and weights [K]."""
    means, variances, log_weights = (xp.asarray(a, x.dtype) for a in (means, variances, np.log(weights)))
    dimension = means.shape[-1]
    component_var = alpha**2 * variances + sigma**2  # [K]
    residual = x[:, None, :] - alpha * means[None]  # [B, K, D]
    log_density = log_weights - 0.5 * (residual**2).sum(-1) / component_var - 0.5 * dimension * xp.log(component_var)
    log_density = log_density - log_density.max(axis=1, keepdims=True)
    responsibility = xp.exp(log_density)
    responsibility = responsibility / responsibility.sum(axis=1, keepdims=True)
    given_k = means[None] + (alpha * variances / component_var)[None, :, None] * residual
    return (responsibility[:, :, None] * given_k).sum(1)
