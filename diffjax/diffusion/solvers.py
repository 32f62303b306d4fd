"""Solvers of the probability-flow ODE and the reverse SDE in the continuous view (``processes``).

Every solver is one step function with the same signature,

    step(process, denoise_x0, x, t_cur, t_next, carry) -> (x_next, carry)

with ``process`` a ``processes.NoiseProcess``, ``denoise_x0(x, t) -> x0_hat`` the data
prediction (EDM's D; build it from a diffjax denoiser with ``x0_predictor``), ``x`` [B, ...]
the state at time ``t_cur`` (a scalar), ``t_next`` < ``t_cur`` the time it is moved to, and
``carry`` a ``History`` (the data prediction and time of the previous step, for multistep
solvers, and the step's index). ``solve`` drives any step over a time grid (``time_grids``:
a float32 array from t_max down to t_min) inside one ``jax.lax.scan``; the grid is data, so a
jitted ``solve`` compiles once per (step, grid length) whatever the grid's values.

The probability-flow ODE of x_t = alpha_t x_0 + sigma_t eps (Song et al. 2021, eq. 13;
Karras et al. 2022, eq. 4 with s = alpha) in data prediction D = E[x_0 | x_t] is

    dx/dt = alpha_t' D + sigma_t' (x - alpha_t D) / sigma_t
          = (log sigma_t)' x + ((log alpha_t)' - (log sigma_t)') alpha_t D,

and in EDM's scaled variable y = x / alpha_t with sigma~_t = sigma_t / alpha_t as time it is
dy/dsigma~ = (y - D) / sigma~ (Karras et al. 2022, eq. 3 after the change of variable).

The solvers (NFE = denoiser calls per step):

* ``euler_step`` (1): explicit Euler in t on the first form above; (log alpha)' and
  (log sigma)' come from ``jax.jvp`` of the process (on a ``DiscreteVP`` they are the slopes
  of its piecewise-linear table: the segment above t_cur on a knot). First order.
* ``ddim_step`` (1): DDIM = first-order DPM-Solver++ (Lu et al. 2022b, eq. 9 with k = 1),
  x_{t'} = (sigma_{t'}/sigma_t) x - alpha_{t'} (e^{-h} - 1) D(x, t), h = l_{t'} - l_t, with
  l = log(alpha / sigma) the *half* log-SNR (``process.log_snr`` is 2 l). It is also Euler in
  EDM's (y, sigma~) (k-diffusion's ``sample_euler``; Karras et al. 2022, section 3). First order.
* ``heun_step`` (2): EDM's Heun (Karras et al. 2022, Algorithm 1, deterministic) in (y, sigma~):
  an Euler step then the trapezoidal correction, skipped (a plain Euler step, 1 NFE) when
  sigma~_{t'} = 0. For ``processes.EDM`` (alpha = 1) y is x and sigma~ is sigma. Second order.
* ``dpmpp_2m_step`` (1): DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): D_i = (1 + 1/(2r))
  x0_i - 1/(2r) x0_{i-1}, r = h_{i-1}/h_i, in the first-order formula; first-order on the
  first step (no history) and, with ``lower_order_final`` (default), on the last step
  (the lower-order final step that keeps few-step sampling stable). Second order.
* ``dpmpp_3m_step`` (1): DPM-Solver++(3M): the Taylor expansion of x0 in lambda to second
  order (Lu et al. 2022b, eq. 8), its derivatives from the quadratic through the last three
  predictions, each term integrated exactly; orders 1, 2 on the first two steps and, with
  ``lower_order_final``, 2, 1 on the last two. Third order. The weight of the
  second-derivative term is the exact integral's (h^2 - 2h + 2 - 2e^{-h})/(2h^2) (times
  h^2 x0''/2); the weight phi_2/h - 1/2 of the 3M update in DPM-Solver's and k-diffusion's
  code (as recalled, not re-checked here) is half of it, and with that half weight the
  measured order on Gaussian data is ~1.9 (Karras grids, K = 32..256), not 3.

The stochastic solvers (their parameters are keyword arguments, bound with
``functools.partial``, and may be traced; the noise of step i is drawn from
``fold_in(key, i)`` of ``solve``'s ``key``):

* ``edm_stochastic_step`` (2): EDM's Algorithm 2 (S_churn, S_tmin, S_tmax, S_noise): noise
  added to raise sigma~ by gamma, then the Heun step; ``heun_step`` when S_churn = 0.
* ``euler_ancestral_step`` (1): k-diffusion's Euler ancestral in (y, sigma~): an Euler step
  to sigma_down, then sigma_up fresh noise (eta scales sigma_up); DDIM when eta = 0.
* ``dpmpp_2m_sde_step`` (1): DPM-Solver++(2M) SDE (k-diffusion's midpoint form) in data
  prediction; ``dpmpp_2m_step`` when eta = 0.

Options of the data-prediction solvers, as wrappers of ``denoise_x0``: ``clip_x0`` (clip D
to [-1, 1]) and ``dynamic_threshold`` (Imagen's per-example percentile thresholding).

Endpoint convention: the trajectory ends at the grid's last time (t_min, where sigma > 0);
``solve(..., denoise_to_zero=True)`` returns D(x, t_min) instead, one more NFE (EDM's last
step to sigma_N = 0; DDPM's and DDIM's last step from step 0 to x_0).

References: Song et al. 2021 (score_sde) eq. 13; Song et al. 2021 (DDIM) eq. 13; Karras et
al. 2022 (EDM) eqs. 3-4 and Algorithm 1; Lu et al. 2022a (DPM-Solver) and 2022b
(DPM-Solver++) section 4 and Algorithm 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import DiffusionSpec, split_output, x0_from_mean_part
from diffjax.diffusion.processes import DiscreteVP, NoiseProcess, expand_to_rank

__all__ = [
    "History",
    "NFE_PER_STEP",
    "SOLVERS",
    "STOCHASTIC",
    "clip_x0",
    "ddim_step",
    "dpmpp_2m_sde_step",
    "dpmpp_2m_step",
    "dpmpp_3m_step",
    "dynamic_threshold",
    "edm_stochastic_step",
    "euler_ancestral_step",
    "euler_step",
    "heun_step",
    "solve",
    "step_key",
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
    """

    x0: jax.Array
    t: jax.Array
    step: jax.Array
    num_steps: jax.Array
    x0_older: jax.Array
    t_older: jax.Array
    key: jax.Array


def _advance(carry: History, x0: jax.Array, t_cur: jax.Array) -> History:
    return carry._replace(x0=x0, t=t_cur, step=carry.step + 1, x0_older=carry.x0, t_older=carry.t)


def step_key(carry: History) -> jax.Array:
    """The PRNG key of the step about to run: ``fold_in(carry.key, carry.step)``."""
    return jax.random.fold_in(carry.key, carry.step)


def _half_log_snr(process: NoiseProcess, t) -> jax.Array:
    """DPM-Solver's lambda_t = log(alpha_t / sigma_t)."""
    return process.log_alpha(t) - process.log_sigma(t)


def _first_order_update(process: NoiseProcess, x, t_cur, t_next, x0) -> jax.Array:
    """x_{t'} = (sigma_{t'}/sigma_t) x - alpha_{t'} expm1(-h) x0, h = lambda_{t'} - lambda_t."""
    h = _half_log_snr(process, t_next) - _half_log_snr(process, t_cur)
    sigma_ratio = jnp.exp(process.log_sigma(t_next) - process.log_sigma(t_cur))
    return (sigma_ratio * x - process.alpha(t_next) * jnp.expm1(-h) * x0).astype(x.dtype)


def euler_step(process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History):
    """x_{t'} = x + (t' - t) [(log sigma)' x + ((log alpha)' - (log sigma)') alpha D(x, t)]."""
    x0 = denoise_x0(x, t_cur)
    one = jnp.ones_like(t_cur)
    log_alpha, d_log_alpha = jax.jvp(process.log_alpha, (t_cur,), (one,))
    _, d_log_sigma = jax.jvp(process.log_sigma, (t_cur,), (one,))
    velocity = d_log_sigma * x + (d_log_alpha - d_log_sigma) * jnp.exp(log_alpha) * x0
    return (x + (t_next - t_cur) * velocity).astype(x.dtype), _advance(carry, x0, t_cur)


def ddim_step(process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History):
    """DDIM (eta = 0) as first-order DPM-Solver++: see ``_first_order_update``."""
    x0 = denoise_x0(x, t_cur)
    return _first_order_update(process, x, t_cur, t_next, x0), _advance(carry, x0, t_cur)


def _heun_update(process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next):
    """EDM's Algorithm 1 step from (x, t_cur) to t_next; returns (x_next, D(x, t_cur))."""
    alpha_cur, alpha_next = process.alpha(t_cur), process.alpha(t_next)
    s_cur, s_next = process.edm_sigma(t_cur), process.edm_sigma(t_next)
    y = x / alpha_cur
    x0 = denoise_x0(x, t_cur)
    slope = (y - x0) / s_cur
    y_euler = y + (s_next - s_cur) * slope

    def corrected(y_euler):
        slope_next = (y_euler - denoise_x0((alpha_next * y_euler).astype(x.dtype), t_next)) / s_next
        return y + (s_next - s_cur) * 0.5 * (slope + slope_next)

    y_next = jax.lax.cond(s_next > 0, corrected, lambda y_euler: y_euler, y_euler)
    return (alpha_next * y_next).astype(x.dtype), x0


def heun_step(process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History):
    """EDM's Algorithm 1 step in y = x / alpha, sigma~ = sigma / alpha (Euler when sigma~_{t'} = 0)."""
    x_next, x0 = _heun_update(process, denoise_x0, x, t_cur, t_next)
    return x_next, _advance(carry, x0, t_cur)


def dpmpp_2m_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History, *, lower_order_final: bool = True
):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2); first order on the first step and,
    with ``lower_order_final``, on the last."""
    x0 = denoise_x0(x, t_cur)
    lam_prev, lam_cur, lam_next = (_half_log_snr(process, t) for t in (carry.t, t_cur, t_next))
    # r = h_{i-1} / h_i; on the first step there is no h_{i-1}: any finite r, the update is first order.
    first = carry.step == 0
    last = jnp.logical_and(lower_order_final, carry.step == carry.num_steps - 1)
    r = jnp.where(first, 1.0, (lam_cur - lam_prev) / (lam_next - lam_cur))
    second_order = x0 + (0.5 / r) * (x0 - carry.x0)
    combined = jnp.where(jnp.logical_or(first, last), x0, second_order)
    return _first_order_update(process, x, t_cur, t_next, combined), _advance(carry, x0, t_cur)


def dpmpp_3m_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History, *, lower_order_final: bool = True
):
    """DPM-Solver++(3M): the data prediction x0(lambda) expanded to second order about lambda_i
    (Lu et al. 2022b, eq. 8 with k = 3), its derivatives those of the quadratic through the
    last three (lambda, x0) pairs, each power integrated exactly:

        x_{i+1} = (sigma'/sigma) x + alpha' [(1 - e^{-h}) x0_i + (h - 1 + e^{-h}) x0'
                  + (h^2 - 2h + 2 - 2 e^{-h}) x0''/2],

    x0' = f[i, i-1] + h_{i-1} f[i, i-1, i-2] and x0''/2 = f[i, i-1, i-2] (divided differences
    in lambda). The order used is min(3, step + 1) and, with ``lower_order_final``, also
    at most the number of steps left (DPM-Solver's ``lower_order_final``): steps 0, 1 are
    first and second order (the 2M formula), the last two second and first order.
    """
    x0 = denoise_x0(x, t_cur)
    lam_older, lam_prev, lam_cur, lam_next = (
        _half_log_snr(process, t) for t in (carry.t_older, carry.t, t_cur, t_next)
    )
    h, h_0, h_1 = lam_next - lam_cur, lam_cur - lam_prev, lam_prev - lam_older
    order = jnp.minimum(3, carry.step + 1)
    if lower_order_final:
        order = jnp.minimum(order, carry.num_steps - carry.step)
    # Divided differences; the denominators are replaced where the history does not exist yet.
    safe_h0 = jnp.where(order >= 2, h_0, 1.0)
    safe_h1 = jnp.where(order >= 3, h_1, 1.0)
    f_01 = (x0 - carry.x0) / safe_h0
    f_12 = (carry.x0 - carry.x0_older) / safe_h1
    f_012 = (f_01 - f_12) / (safe_h0 + safe_h1)
    # 2M's derivative (DPM-Solver++(2M), Algorithm 2: 1/(2r) (x0_i - x0_{i-1}) in the first-order
    # formula) on order-2 steps, the quadratic's derivatives on order-3 steps.
    neg_phi_1 = -jnp.expm1(-h)  # 1 - e^{-h}
    second = x0 + (0.5 * h) * f_01
    third_derivative = (h + jnp.expm1(-h)) * (f_01 + h_0 * f_012) + (h * h - 2.0 * h - 2.0 * jnp.expm1(-h)) * f_012
    sigma_ratio = jnp.exp(process.log_sigma(t_next) - process.log_sigma(t_cur))
    alpha_next = process.alpha(t_next)
    low = jnp.where(order == 1, x0, second)
    x_low = sigma_ratio * x + alpha_next * neg_phi_1 * low
    x_third = sigma_ratio * x + alpha_next * (neg_phi_1 * x0 + third_derivative)
    x_next = jnp.where(order == 3, x_third, x_low)
    return x_next.astype(x.dtype), _advance(carry, x0, t_cur)


# ----------------------------------------------------------------------------- stochastic


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
    x_next, x0 = _heun_update(process, denoise_x0, x_hat, t_hat, t_next)
    return x_next, _advance(carry, x0, t_hat)


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
    return (process.alpha(t_next) * y_next).astype(x.dtype), _advance(carry, x0, t_cur)


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
    lam_prev, lam_cur, lam_next = (_half_log_snr(process, t) for t in (carry.t, t_cur, t_next))
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
    return x_next.astype(x.dtype), _advance(carry, x0, t_cur)


SOLVERS = {
    "euler": euler_step, "ddim": ddim_step, "heun": heun_step, "dpmpp_2m": dpmpp_2m_step, "dpmpp_3m": dpmpp_3m_step,
    "edm_stochastic": edm_stochastic_step, "euler_ancestral": euler_ancestral_step, "dpmpp_2m_sde": dpmpp_2m_sde_step,
}
"""The solvers by name; ``NFE_PER_STEP`` gives their denoiser calls per step. The last three
are stochastic (``STOCHASTIC``): ``solve`` gives them its ``key``."""

STOCHASTIC = ("edm_stochastic", "euler_ancestral", "dpmpp_2m_sde")
"""The stochastic solvers of ``SOLVERS``; their parameters (S_churn, eta, ...) are keyword
arguments, bound with ``functools.partial``."""

NFE_PER_STEP = {
    "euler": 1, "ddim": 1, "heun": 2, "dpmpp_2m": 1, "dpmpp_3m": 1, "edm_stochastic": 2, "euler_ancestral": 1,
    "dpmpp_2m_sde": 1,
}
"""Denoiser calls per step (``heun``, ``edm_stochastic``: 1 on a step that lands on sigma~ = 0)."""


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


# ------------------------------------------------------- options of data-prediction solvers


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
