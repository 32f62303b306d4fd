"""The machinery every solver shares: the carry (``History``), the driver (``solve``, one
``lax.scan`` over a time grid), the data prediction of a diffjax denoiser (``x0_predictor``)
and the first-order exponential-integrator update that several solvers build on.

See the package docstring (``diffjax.diffusion.solvers``) for the step signature and the
conventions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import DiffusionSpec, split_output, x0_from_mean_part
from diffjax.diffusion.processes import DiscreteVP, NoiseProcess

__all__ = [
    "History", "X0Fn", "advance", "first_order_update", "half_log_snr", "lands_on_zero_noise", "solve", "step_key",
    "x0_predictor",
]

X0Fn = Callable[[jax.Array, jax.Array], jax.Array]
"""``denoise_x0(x, t) -> x0_hat``: x [B, ...], t a scalar time; the data prediction D."""


class History(NamedTuple):
    """What a step carries to the next one.

    Attributes:
      x0: [B, ...] the data prediction the last step evaluated at its t_cur (zeros before
        the first step).
      t: scalar, that t_cur (the grid's first time before the first step).
      step: int32 scalar, the index of the step about to run (0 for the first).
      num_steps: int32 scalar, the number of steps of the grid.
      x0_older, t_older: the data prediction and time of the step before the last one
        (DPM-Solver++(3M)); zeros and the grid's first time until there is one.
      key: the PRNG key ``solve`` was given; a stochastic step draws its noise from
        ``step_key(carry)`` = ``fold_in(key, step)``, so a fixed key gives fixed samples.
      x0_oldest, t_oldest: the data prediction and time of the step before ``x0_older``'s
        (UniPC-3's corrector); zeros and the grid's first time until there is one.
      x: [B, ...] the state at ``t`` from which the last step moved, where a solver keeps it
        (UniPC: its corrected state x^c, which the next step's corrector starts from); x_T
        before the first step, and left as it is by ``advance``.
    """

    x0: jax.Array
    t: jax.Array
    step: jax.Array
    num_steps: jax.Array
    x0_older: jax.Array
    t_older: jax.Array
    key: jax.Array
    x0_oldest: jax.Array
    t_oldest: jax.Array
    x: jax.Array


def advance(carry: History, x0: jax.Array, t_cur: jax.Array) -> History:
    """The carry after a step that evaluated D = ``x0`` at ``t_cur``."""
    return carry._replace(
        x0=x0, t=t_cur, step=carry.step + 1, x0_older=carry.x0, t_older=carry.t,
        x0_oldest=carry.x0_older, t_oldest=carry.t_older,
    )


def step_key(carry: History) -> jax.Array:
    """The PRNG key of the step about to run: ``fold_in(carry.key, carry.step)``."""
    return jax.random.fold_in(carry.key, carry.step)


def half_log_snr(process: NoiseProcess, t) -> jax.Array:
    """DPM-Solver's lambda_t = log(alpha_t / sigma_t)."""
    return process.log_alpha(t) - process.log_sigma(t)


def lands_on_zero_noise(process: NoiseProcess, t_next) -> jax.Array:
    """Whether a step to ``t_next`` ends at sigma = 0 (lambda = +inf, e.g. t = 0 of a VP process).

    Such a step is the final denoising: the multistep solvers take it at first order (x' = D),
    whatever ``lower_order_final`` says, since their higher-order terms divide by its infinite h.
    """
    return jnp.isposinf(half_log_snr(process, t_next))


def first_order_update(process: NoiseProcess, x, t_cur, t_next, x0) -> jax.Array:
    """x_{t'} = (sigma_{t'}/sigma_t) x - alpha_{t'} expm1(-h) x0, h = lambda_{t'} - lambda_t."""
    h = half_log_snr(process, t_next) - half_log_snr(process, t_cur)
    sigma_ratio = jnp.exp(process.log_sigma(t_next) - process.log_sigma(t_cur))
    return (sigma_ratio * x - process.alpha(t_next) * jnp.expm1(-h) * x0).astype(x.dtype)



def solve(
    step: Callable,
    process: NoiseProcess,
    denoise_x0: X0Fn,
    x_T: jax.Array,
    grid: jax.Array,
    *,
    key: jax.Array | None = None,
    denoise_to_zero: bool = False,
    return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Run ``step`` over the K steps of ``grid`` (K + 1 times, decreasing) in one ``lax.scan``.

    Args:
      step: a solver step (a value of ``SOLVERS``, or a ``functools.partial`` of one).
      process: the noise process.
      denoise_x0: the data prediction ``denoise_x0(x, t)``.
      x_T: [B, ...] the state at grid[0] (for a VP process started at t_max ~ 1: N(0, I);
        for ``EDM``: sigma_max N(0, I)).
      grid: [K + 1] float times from t_max down to t_min (``time_grids``), a traced array.
      key: the PRNG key of a stochastic solver (``PRNGKey(0)`` if None; deterministic
        solvers ignore it); step i draws from ``fold_in(key, i)``.
      denoise_to_zero: return D(x, grid[-1]) (one more NFE) instead of x at grid[-1].
      return_trajectory: also return ``x`` [K, B, ...] (x before each step) and ``x0``
        [K, B, ...] (the data prediction at each step's t_cur).

    Returns:
      x at grid[-1] (or its data prediction) [B, ...]; with ``return_trajectory`` also the dict.
    """
    grid = jnp.asarray(grid)
    num_steps = grid.shape[0] - 1
    if num_steps < 1:
        raise ValueError(f"a grid needs at least two times, got shape {grid.shape}")
    if key is None:
        key = jax.random.PRNGKey(0)
    carry = History(
        x0=jnp.zeros_like(x_T), t=grid[0], step=jnp.int32(0), num_steps=jnp.int32(num_steps),
        x0_older=jnp.zeros_like(x_T), t_older=grid[0], key=key,
        x0_oldest=jnp.zeros_like(x_T), t_oldest=grid[0], x=x_T,
    )

    def body(state, times):
        x, carry = state
        t_cur, t_next = times
        x_next, carry = step(process, denoise_x0, x, t_cur, t_next, carry)
        return (x_next, carry), (x, carry.x0) if return_trajectory else None

    (x, _), trajectory = jax.lax.scan(body, (x_T, carry), (grid[:-1], grid[1:]))
    if denoise_to_zero:
        x = denoise_x0(x, grid[-1])
    if return_trajectory:
        return x, dict(x=trajectory[0], x0=trajectory[1])
    return x


def x0_predictor(
    denoise: Callable, params: Any, spec: DiffusionSpec, process: NoiseProcess, cond: Any = None,
    *, round_steps: bool = False,
) -> X0Fn:
    """The data prediction ``denoise_x0(x, t)`` of a diffjax denoiser ``denoise(params, x_t, t, cond)``.

    The network is called with the step it was trained on: for a ``DiscreteVP`` (a trained
    discrete chain) ``process.model_timestep(t)`` (T t - 1, fractional between knots, as
    DPM-Solver's ``model_wrapper`` does), or ``process.model_step(t)`` (int32, nearest trained
    step) with ``round_steps``; for a continuous process t itself. Its mean part (the first C
    channels: a learned variance is ignored) is read per ``spec`` with alpha_t and
    sigma_t of ``process``: x_0 = (x - sigma eps)/alpha, x_0, or alpha x - sigma v (scaled).

    Args:
      denoise: ``denoise(params, x_t, t, cond)``.
      params, cond: passed through unchanged.
      spec: how the output is read.
      process: the process the network was trained on (``discrete_process(schedule)``).
      round_steps: call the network with integer steps (e.g. a table-based denoiser).

    Returns:
      ``denoise_x0(x, t)`` with x [B, ...] and t a scalar time.
    """

    def denoise_x0(x, t):
        t_batch = jnp.full((x.shape[0],), t, dtype=jnp.asarray(t).dtype)
        if isinstance(process, DiscreteVP):
            network_t = process.model_step(t_batch) if round_steps else process.model_timestep(t_batch)
        else:
            network_t = t_batch
        mean_part, _ = split_output(spec, denoise(params, x, network_t, cond), x.shape)
        alpha, sigma = process.alpha_sigma(t)
        return x0_from_mean_part(spec, x, mean_part, alpha, sigma)

    return denoise_x0

