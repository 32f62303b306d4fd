"""DDIM's latent space: deterministic encoding, decoding and interpolation through the
probability-flow ODE (Song et al. 2021, "Denoising Diffusion Implicit Models", section 5).

With a deterministic sampler the map x_T -> x_0 is the flow of an ODE, so it can be run
backwards: integrating the same ODE forward in time (from the data to t_max) gives a latent
x_T that decodes back to the data (DDIM section 5.4, "reconstruction from latent space"),
and two data points can be interpolated by interpolating their latents (section 5.3,
spherical interpolation of x_T, which keeps an interpolant of two N(0, I) draws at their
typical norm).

* ``encode(step, process, denoise_x0, x_0, grid)``: ``solvers.solve`` over ``grid``
  reversed (increasing time), with any deterministic solver step (``SOLVERS["ddim"].step``,
  ``"euler"``, ``"heun"``, ``"dpmpp_2m"``, ``"dpmpp_3m"``, or a ``functools.partial`` of one).
  Every deterministic step is written for either direction: its update is a function of
  (t_cur, t_next) that does not assume t_next < t_cur (DDIM's exponential integrator and
  DPM-Solver++ in h = lambda_{t'} - lambda_t, which is then negative, and r = h_{i-1}/h_i,
  still positive; Euler in t' - t; EDM's Heun in sigma~_{t'} - sigma~_t, whose "sigma~_{t'}
  = 0" branch cannot occur going up). The stochastic solvers are refused: they add noise
  and are not invertible.
* ``decode(step, process, denoise_x0, x_T, grid)``: the ordinary solve over ``grid``.
* ``slerp(x_a, x_b, fractions)`` and ``interpolate(...)``: spherical interpolation of two
  latents and its decoding.

Endpoint convention: the data x_0 is taken as the state at the grid's smallest time t_min
(``grid[-1]``, where sigma > 0 is tiny), not at t = 0. The ODE cannot start at sigma = 0
(lambda = +inf there: the exponential integrators and EDM's slope divide by sigma), and the
difference x_{t_min} - x_0 is O(sigma_{t_min}) (at t_min = 1e-3 of VP-linear, sigma = 0.01;
at step 0 of a linear 1000-step chain, sqrt(1 - alpha_bar_0) = 0.01). DDIM's own encoder
does the same: its first step starts from x_0 with the model evaluated at the first (least
noisy) step of its sequence, where DDIM's alpha_1 < 1, i.e. x_0 stands for the state at the
least-noisy trained step. So ``encode`` and ``decode`` (without ``denoise_to_zero``) are
inverse maps between the states at t_min and t_max up to the solver's discretisation error:
the discretisations up and down are not each other's exact inverses (DDIM's step up
evaluates D at the lower end of a step, its step down at the upper end). The round trip's
error falls with the steps at least at the solver's order: measured (tests/diffusion/test_latent.py)
first order for DDIM and third for EDM's Heun and DPM-Solver++(2M), because a step of order
p errs by C h^{p+1} going up and C (-h)^{p+1} coming back, which cancel to leading order
when p is even.

``decode(..., denoise_to_zero=True)`` returns D(x, t_min) instead (one more NFE), which is
what DDIM's sampler returns (its last step, from step 0 to alpha = 1, outputs the data
prediction). The reconstruction then also contains D(x_{t_min}, t_min) - x_{t_min}, which
is small for data on the data distribution and not for data off it: it is for samples, not
for round trips; the default (False) returns the state that ``encode`` starts from.

References: Song et al. 2021 (DDIM) eqs. 12-14 and section 5; Shoemake 1985
("Animating rotation with quaternion curves", slerp).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.processes import NoiseProcess
from diffjax.diffusion.solvers import SOLVERS, X0Fn, solve

__all__ = ["decode", "encode", "interpolate", "slerp"]

_STOCHASTIC_STEPS = {solver.step: name for name, solver in SOLVERS.items() if solver.stochastic}


def _check_deterministic(step: Callable) -> None:
    """Raise a ValueError if ``step`` (or the function a ``functools.partial`` wraps) is stochastic."""
    function = step
    while hasattr(function, "func"):  # functools.partial, possibly nested
        function = function.func
    if function in _STOCHASTIC_STEPS:
        raise ValueError(
            f"the stochastic solver {_STOCHASTIC_STEPS[function]!r} cannot encode: it adds noise, "
            "so its map from data to latent is not invertible; use a deterministic one "
            "(ddim, euler, heun, dpmpp_2m, dpmpp_3m)"
        )


def _check_grid(process: NoiseProcess, grid: jax.Array) -> None:
    """A concrete grid must decrease and end at sigma > 0 (a traced one is not checked)."""
    try:
        values = np.asarray(grid, dtype=np.float64)
    except jax.errors.TracerArrayConversionError:
        return
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(f"a grid needs at least two times, got shape {values.shape}")
    if not np.all(np.diff(values) < 0):
        raise ValueError(
            "encode takes the sampling grid (decreasing times) and runs it reversed; got a grid that does not decrease"
        )
    if not float(process.sigma(jnp.asarray(grid)[-1])) > 0:
        raise ValueError(
            f"the grid's last time {values[-1]} has sigma = 0: the data is the state at the smallest "
            "time of the grid, which needs sigma > 0 (end the grid at the process's t_min)"
        )


def encode(
    step: Callable, process: NoiseProcess, denoise_x0: X0Fn, x_0: jax.Array, grid: jax.Array,
    *, return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """DDIM's deterministic encoding: x_0 -> x_T by the probability-flow ODE forward in time.

    Args:
      step: a deterministic solver step (the ``step`` of a ``solvers.SOLVERS`` record that is not ``stochastic``,
        or a ``functools.partial`` of one); a stochastic one raises a ValueError.
      process: the noise process.
      denoise_x0: the data prediction ``denoise_x0(x, t)``.
      x_0: [B, ...] the data, taken as the state at ``grid[-1]`` (see the module docstring).
      grid: [K + 1] the *sampling* grid, decreasing from t_max to t_min (``time_grids``), the
        same one ``decode`` takes; it is run reversed, from grid[-1] up to grid[0].
      return_trajectory: also return ``solve``'s trajectory dict (in increasing time).

    Returns:
      x_T [B, ...], the state at grid[0] (with ``return_trajectory`` also the dict).
    """
    _check_deterministic(step)
    _check_grid(process, grid)
    return solve(step, process, denoise_x0, x_0, jnp.asarray(grid)[::-1], return_trajectory=return_trajectory)


def decode(
    step: Callable, process: NoiseProcess, denoise_x0: X0Fn, x_T: jax.Array, grid: jax.Array,
    *, denoise_to_zero: bool = False,
) -> jax.Array:
    """The ordinary deterministic solve x_T -> x_{t_min} over ``grid`` (decreasing).

    With ``denoise_to_zero`` it returns D(x_{t_min}, t_min) (one more NFE), as DDIM's sampler
    does; the default returns the state at t_min, the inverse of ``encode`` (see the module
    docstring).
    """
    _check_deterministic(step)
    return solve(step, process, denoise_x0, x_T, grid, denoise_to_zero=denoise_to_zero)


def slerp(x_a: jax.Array, x_b: jax.Array, fractions: jax.Array) -> jax.Array:
    """Spherical linear interpolation per example, over all of an example's elements.

    With theta the angle between x_a[i] and x_b[i] (flattened),

        slerp(f) = sin((1 - f) theta)/sin(theta) x_a + sin(f theta)/sin(theta) x_b

    (Shoemake 1985; DDIM section 5.3 interpolates x_T this way). theta is
    computed as 2 atan2(|a^ - b^|, |a^ + b^|) (a^, b^ the unit vectors), accurate at all
    angles where arccos of the cosine loses half the digits near 0. Where sin(theta) is
    below 1e-6 in the dtype's terms (x_a and x_b parallel or antiparallel, or either one
    zero) it falls back to the linear interpolation (1 - f) x_a + f x_b, which is slerp's
    limit for parallel inputs (antiparallel inputs have no unique great circle).

    f = 0 and f = 1 give x_a and x_b exactly. For equal-norm inputs every interpolant has
    that norm, and its angle to x_a is f theta.

    Args:
      x_a, x_b: [B, ...] same shape.
      fractions: [F] (a scalar is taken as [1]) interpolation fractions, usually in [0, 1].

    Returns:
      [F, B, ...] in x_a's dtype.
    """
    if x_a.shape != x_b.shape:
        raise ValueError(f"slerp needs equal shapes, got {x_a.shape} and {x_b.shape}")
    dtype = jnp.result_type(x_a, x_b)
    compute = jnp.promote_types(dtype, jnp.float32)
    a = x_a.reshape(x_a.shape[0], -1).astype(compute)  # [B, N]
    b = x_b.reshape(x_b.shape[0], -1).astype(compute)
    f = jnp.atleast_1d(jnp.asarray(fractions, compute))[:, None, None]  # [F, 1, 1]
    norm_a = jnp.linalg.norm(a, axis=-1, keepdims=True)
    norm_b = jnp.linalg.norm(b, axis=-1, keepdims=True)
    unit_a = a / jnp.where(norm_a > 0, norm_a, 1.0)
    unit_b = b / jnp.where(norm_b > 0, norm_b, 1.0)
    theta = 2.0 * jnp.arctan2(
        jnp.linalg.norm(unit_a - unit_b, axis=-1, keepdims=True),
        jnp.linalg.norm(unit_a + unit_b, axis=-1, keepdims=True),
    )  # [B, 1], in [0, pi]
    sin_theta = jnp.sin(theta)
    spherical = jnp.logical_and(sin_theta > 1e-6, jnp.logical_and(norm_a > 0, norm_b > 0))
    safe_sin = jnp.where(spherical, sin_theta, 1.0)
    weight_a = jnp.where(spherical, jnp.sin((1.0 - f) * theta) / safe_sin, 1.0 - f)  # [F, B, 1]
    weight_b = jnp.where(spherical, jnp.sin(f * theta) / safe_sin, f)
    out = weight_a * a + weight_b * b
    # The endpoints by construction, whatever the compiler does to sin(theta)/sin(theta).
    out = jnp.where(f == 0.0, a, jnp.where(f == 1.0, b, out))
    return out.reshape((f.shape[0],) + x_a.shape).astype(dtype)


def interpolate(
    step: Callable, process: NoiseProcess, denoise_x0: X0Fn, x0_a: jax.Array, x0_b: jax.Array,
    grid: jax.Array, fractions: jax.Array, *, denoise_to_zero: bool = False,
) -> jax.Array:
    """Interpolate two data batches through DDIM's latent space: encode both, slerp, decode.

    Args:
      step, process, denoise_x0, grid: as in ``encode`` / ``decode`` (one grid for both).
      x0_a, x0_b: [B, ...] the data to interpolate, pairwise.
      fractions: [F]; 0 gives (up to the round trip's error) x0_a, 1 gives x0_b.
      denoise_to_zero: as in ``decode``.

    Returns:
      [F, B, ...], decoded as one batch of F B examples.
    """
    latents = encode(step, process, denoise_x0, jnp.concatenate([x0_a, x0_b], axis=0), grid)
    batch = x0_a.shape[0]
    mixed = slerp(latents[:batch], latents[batch:], fractions)  # [F, B, ...]
    flat = mixed.reshape((-1,) + x0_a.shape[1:])
    decoded = decode(step, process, denoise_x0, flat, grid, denoise_to_zero=denoise_to_zero)
    return decoded.reshape(mixed.shape)
