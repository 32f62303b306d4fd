"""Deterministic solvers of the probability-flow ODE: Euler, DDIM, EDM's Heun, DPM-Solver++
2M and 3M (see the package docstring for each one's formula, order and references)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes import NoiseProcess
from diffjax.diffusion.solvers.core import History, X0Fn, advance, first_order_update, half_log_snr, lands_on_zero_noise

__all__ = ["ddim_step", "dpmpp_2m_step", "dpmpp_3m_step", "euler_step", "heun_step", "heun_update"]


def euler_step(process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History):
    """x_{t'} = x + (t' - t) [(log sigma)' x + ((log alpha)' - (log sigma)') alpha D(x, t)]."""
    x0 = denoise_x0(x, t_cur)
    one = jnp.ones_like(t_cur)
    log_alpha, d_log_alpha = jax.jvp(process.log_alpha, (t_cur,), (one,))
    _, d_log_sigma = jax.jvp(process.log_sigma, (t_cur,), (one,))
    velocity = d_log_sigma * x + (d_log_alpha - d_log_sigma) * jnp.exp(log_alpha) * x0
    return (x + (t_next - t_cur) * velocity).astype(x.dtype), advance(carry, x0, t_cur)


def ddim_step(process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History):
    """DDIM (eta = 0) as first-order DPM-Solver++: see ``_first_order_update``."""
    x0 = denoise_x0(x, t_cur)
    return first_order_update(process, x, t_cur, t_next, x0), advance(carry, x0, t_cur)


def heun_update(process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next):
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
    x_next, x0 = heun_update(process, denoise_x0, x, t_cur, t_next)
    return x_next, advance(carry, x0, t_cur)


def dpmpp_2m_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History, *, lower_order_final: bool = True
):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2); first order on the first step, on a step
    that lands on sigma = 0 and, with ``lower_order_final``, on the last."""
    x0 = denoise_x0(x, t_cur)
    lam_prev, lam_cur, lam_next = (half_log_snr(process, t) for t in (carry.t, t_cur, t_next))
    # r = h_{i-1} / h_i; on a first-order step it is not used: any finite r.
    first = carry.step == 0
    last = jnp.logical_or(jnp.logical_and(lower_order_final, carry.step == carry.num_steps - 1),
                          lands_on_zero_noise(process, t_next))
    r = jnp.where(jnp.logical_or(first, last), 1.0, (lam_cur - lam_prev) / (lam_next - lam_cur))
    second_order = x0 + (0.5 / r) * (x0 - carry.x0)
    combined = jnp.where(jnp.logical_or(first, last), x0, second_order)
    return first_order_update(process, x, t_cur, t_next, combined), advance(carry, x0, t_cur)


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
    first and second order (the 2M formula), the last two second and first order. A step
    that lands on sigma = 0 is first order (``lands_on_zero_noise``).
    """
    x0 = denoise_x0(x, t_cur)
    lam_older, lam_prev, lam_cur, lam_next = (
        half_log_snr(process, t) for t in (carry.t_older, carry.t, t_cur, t_next)
    )
    h, h_0, h_1 = lam_next - lam_cur, lam_cur - lam_prev, lam_prev - lam_older
    order = jnp.minimum(3, carry.step + 1)
    if lower_order_final:
        order = jnp.minimum(order, carry.num_steps - carry.step)
    order = jnp.where(lands_on_zero_noise(process, t_next), 1, order)
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
    return x_next.astype(x.dtype), advance(carry, x0, t_cur)
