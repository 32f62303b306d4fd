"""Options of the data-prediction solvers, as wrappers of ``denoise_x0``: static clipping
and Imagen's dynamic thresholding. Every solver uses only D, so a wrapped D works with all."""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.diffusion.processes import expand_to_rank
from diffjax.diffusion.solvers.core import X0Fn

__all__ = ["clip_x0", "dynamic_threshold"]


def clip_x0(denoise_x0: X0Fn, low: float = -1.0, high: float = 1.0) -> X0Fn:
    """``denoise_x0`` with its prediction clipped to [low, high] (static thresholding; data in
    [-1, 1]). Wrap before handing it to a solver: every solver uses only D."""

    def clipped(x, t):
        return jnp.clip(denoise_x0(x, t), low, high)

    return clipped


def dynamic_threshold(denoise_x0: X0Fn, percentile: float = 0.995) -> X0Fn:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3) of ``denoise_x0``.

    Per example, s = max(the ``percentile`` quantile of |x0_hat| over its elements (linear
    interpolation, ``jnp.quantile``), 1); x0_hat is clipped to [-s, s] and divided by s. So
    an example already in [-1, 1] is unchanged, a saturated one is pulled back inside.
    ``percentile`` may be traced.
    """

    def thresholded(x, t):
        x0 = denoise_x0(x, t)
        magnitude = jnp.abs(x0).reshape(x0.shape[0], -1)
        s = jnp.maximum(jnp.quantile(magnitude, percentile, axis=1), 1.0)
        s = expand_to_rank(s, x0.ndim).astype(x0.dtype)
        return jnp.clip(x0, -s, s) / s

    return thresholded
