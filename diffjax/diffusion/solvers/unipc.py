"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models") in data prediction: the predictor UniP-p and the corrector UniC-p.

With lambda = log(alpha / sigma) (``half_log_snr``), the probability-flow ODE's exact solution
from s to t, h = lambda_t - lambda_s, in data prediction (Lu et al. 2022b, eq. 4) is

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda
        = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s
          + alpha_t sum_{k>=1} h^{k+1} phi_{k+1}(-h) x0^{(k)}_s,

phi_k(z) = int_0^1 e^{(1 - u) z} u^{k-1}/(k-1)! du (phi_1(z) = (e^z - 1)/z). UniPC writes the
terms k >= 1 with differences of data predictions, D_m = x0(lambda_m) - x0_s, r_m =
(lambda_m - lambda_s)/h, in the paper's data-prediction convention (h replaced by hh = -h):

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{hh} - 1) x0_s - alpha_t B(hh) sum_m a_m D_m / r_m,

with B(hh) = hh (``variant="bh1"``) or e^{hh} - 1 (``"bh2"``), and a solving the order
conditions sum_m a_m r_m^{k-1} = g_k(hh) / B(hh), g_k(hh) = k! hh phi_{k+1}(hh), k = 1..n
(n the number of differences: R_n(h) a = g / B, R_n the Vandermonde matrix of the r_m). Then the
k-th Taylor term of the exact solution is matched for k <= n. When n = 1 the paper takes
a_1 = 1/2 instead (the limit of g_1 / B as h -> 0 for either B, which keeps the order), so the
variants differ only on such steps: with n >= 2 the solve makes B(hh) a_m independent of B.
With bh2 and a_1 = 1/2 the order-2 predictor is DPM-Solver++(2M) exactly, and the order-3
predictor (whatever B) integrates the quadratic through three predictions exactly, which is
DPM-Solver++(3M) (``dpmpp_3m_step``).

* UniP-p (order p): the differences to the p - 1 previous data predictions
  (t_{i-1}, ..., t_{i-p+1} for a step from t_i); UniP-1 is DDIM.
* UniC-p (order p + 1): after UniP-p has moved x^c_i to x~_{i+1} and D(x~_{i+1}, t_{i+1})
  is evaluated, x_{i+1} is recomputed from x^c_i with the same p - 1 differences plus the
  new point's (r = 1): x^c_{i+1}. The data prediction at t_{i+1} stays the one evaluated at
  x~_{i+1}; it is the next predictor's x0_s (its first term), so the corrector costs no
  evaluation: NFE = 1 per step.

As ``solve`` calls one step per grid interval, the corrector of step i's prediction runs at the
start of step i + 1, right after its evaluation of D(x~_{i+1}, t_{i+1}); the carry holds x^c_i
(``History.x``). The state ``solve`` records before each step (``return_trajectory``) is the
prediction x~, at which D is evaluated. **No corrector follows the last step** (it would need
D at the final time, one more NFE): the result is the last predictor's x~ at grid[-1].

Orders: step i (0-based, K steps) predicts with p_i = min(order, i + 1) (warm-up: DDIM on the
first step) and, with ``lower_order_final`` (DPM-Solver++'s), p_i <= K - i (the last step is
DDIM, the one before it at most second order); a step that lands on sigma = 0 predicts at
first order whatever ``lower_order_final`` says (its h is infinite); the corrector after step i
has that step's p_i. ``order`` and ``variant`` are static (bind them with ``functools.partial``); every order
up to ``order`` is computed and the step's selected with ``jnp.where``, so the scan compiles
once per grid length.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes import NoiseProcess
from diffjax.diffusion.solvers.core import History, X0Fn, advance, first_order_update, half_log_snr, lands_on_zero_noise

__all__ = ["unipc_coefficients", "unipc_step"]

VARIANTS = ("bh1", "bh2")
_TAYLOR_TERMS = 18  # phi_{k+1}(z) = sum_j z^j / (j + k + 1)!: with |z| < 1, the tail is below 1/19! relative


def _scaled_phis(hh, count: int) -> list[jax.Array]:
    """g_k(hh) = k! hh phi_{k+1}(hh) for k = 1..count.

    The recurrence phi_{k+1}(z) = (phi_k(z) - 1/k!)/z (phi_1 = expm1(z)/z) cancels for small |z|
    (in float32 by ~ (count + 1)!/|z|^count ulps), so where |z| < 1 the series
    phi_{k+1}(z) = sum_j z^j/(j + k + 1)! is used instead.
    """
    small = jnp.abs(hh) < 1.0
    z = jnp.where(small, 1.0, hh)  # the recurrence's argument, kept away from 0
    phi = jnp.expm1(z) / z  # phi_1
    out = []
    for k in range(1, count + 1):
        phi = (phi - 1.0 / math.factorial(k)) / z  # phi_{k+1}
        series = jnp.zeros_like(hh) + 1.0 / math.factorial(_TAYLOR_TERMS + k)
        for j in reversed(range(_TAYLOR_TERMS - 1)):  # Horner
            series = series * hh + 1.0 / math.factorial(j + k + 1)
        out.append(math.factorial(k) * hh * jnp.where(small, series, phi))
    return out


def _B(hh, variant: str):
    """B(hh): hh (bh1) or e^hh - 1 (bh2), hh = -h in data prediction."""
    return hh if variant == "bh1" else jnp.expm1(hh)


def _polynomial_from_roots(roots) -> list:
    """The coefficients (constant first) of prod_j (x - roots[j])."""
    coefficients = [1.0]
    for root in roots:
        shifted = [0.0, *coefficients]  # x P(x)
        coefficients = [c - root * p for c, p in zip(shifted, [*coefficients, 0.0])]
    return coefficients


def _solve_transposed_vandermonde(rs: list, rhs: list) -> list:
    """a with sum_m a_m r_m^k = rhs[k], k = 0..n-1 (n = len(rs), distinct r): a_m = sum_k rhs[k]
    [x^k] L_m(x), L_m(x) = prod_{j != m} (x - r_j)/(r_m - r_j) the Lagrange basis of the nodes.
    Then sum_m a_m r_m^j = sum_k rhs[k] [x^k] sum_m r_m^j L_m(x) = sum_k rhs[k] [x^k] x^j = rhs[j]
    (sum_m r_m^j L_m interpolates x^j, j < n, exactly)."""
    out = []
    for m, r_m in enumerate(rs):
        others = [r for j, r in enumerate(rs) if j != m]
        denominator = 1.0
        for r in others:
            denominator = denominator * (r_m - r)
        numerator = sum(c * b for c, b in zip(_polynomial_from_roots(others), rhs))
        out.append(numerator / denominator)
    return out


def unipc_coefficients(rs: list, hh, variant: str) -> list:
    """The paper's a for the nodes r_1..r_n: sum_m a_m r_m^{k-1} = g_k(hh)/B(hh), k = 1..n
    (R_n(h) a = g/B, R_n's row k the (k-1)-th powers of the r_m), or a_1 = 1/2 when n = 1."""
    if len(rs) == 1:
        return [jnp.full_like(hh, 0.5)]
    b = _B(hh, variant)
    return _solve_transposed_vandermonde(rs, [g / b for g in _scaled_phis(hh, len(rs))])


def _update(process, x, t_s, t_t, x0_s, order, past, variant, *, x0_new=None):
    """UniP-p (``x0_new`` None) or UniC-p (``x0_new`` the data prediction at t_t) from (x, t_s)
    to t_t, p the traced ``order`` in 1..len(past) + 1; ``past`` = [(lambda_m, x0_m)] the points
    before t_s, newest first (the first p - 1 of them valid where p is selected).

    x_t = first_order_update - alpha_t B(hh) sum_m a_m D_m / r_m; the weights a_m / r_m of every
    order are computed and the selected order's taken (scalars), then summed once.
    """
    lam_s, lam_t = half_log_snr(process, t_s), half_log_snr(process, t_t)
    h = lam_t - lam_s
    h = jnp.where(h == 0, 1.0, h)  # the first step's unused correction (t_s = t_t): finite, also in gradients
    hh = -h
    # r_m of the past points; where a point is not part of the selected order (no history yet),
    # a stand-in (-1, -2) keeps every system regular and every weight finite.
    rs = [jnp.where(order >= m + 2, (lam_m - lam_s) / h, -(m + 1.0)) for m, (lam_m, _) in enumerate(past)]
    differences = [x0_m - x0_s for _, x0_m in past]
    if x0_new is not None:  # UniC: the new point, r = 1
        differences.append(x0_new - x0_s)
    weights = [jnp.zeros_like(h) for _ in differences]
    for p in range(2 if x0_new is None else 1, len(past) + 2):
        nodes = rs[: p - 1] if x0_new is None else [*rs[: p - 1], jnp.ones_like(h)]
        slots = list(range(p - 1)) if x0_new is None else [*range(p - 1), len(past)]
        for slot, a, r in zip(slots, unipc_coefficients(nodes, hh, variant), nodes):
            weights[slot] = jnp.where(order == p, a / r, weights[slot])
    correction = sum(w * d for w, d in zip(weights, differences))
    x_t = first_order_update(process, x, t_s, t_t, x0_s) - process.alpha(t_t) * _B(hh, variant) * correction
    return x_t.astype(x.dtype)


def _order_of_step(step, num_steps, order: int, lower_order_final: bool):
    p = jnp.minimum(order, step + 1)
    if lower_order_final:
        p = jnp.minimum(p, num_steps - step)
    return p


def unipc_step(
    process: NoiseProcess, denoise_x0: X0Fn, x, t_cur, t_next, carry: History,
    *, order: int = 2, variant: str = "bh2", use_corrector: bool = True, lower_order_final: bool = True,
):
    """One UniPC step in data prediction (see the module docstring): evaluate D at the
    predicted x, correct x with UniC (not on the first step, nor with ``use_corrector=False``),
    then predict x at t_next with UniP.

    Args:
      order: 1, 2 or 3, the predictor's order p (UniC-p then raises the local order to p + 1).
      variant: "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1), in the paper's data-prediction
        convention (h -> -h).
      use_corrector: False gives the plain UniP-p multistep solver.
      lower_order_final: at most order K - i on step i (the last step is DDIM). A step to
        sigma = 0 is DDIM either way.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC is implemented for orders 1, 2, 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    x0 = denoise_x0(x, t_cur)  # D at the prediction x~_i, reused by the corrector and the predictor
    lam_prev, lam_older, lam_oldest = (half_log_snr(process, t) for t in (carry.t, carry.t_older, carry.t_oldest))
    if use_corrector:
        # UniC of the previous step's prediction: from (x^c_{i-1}, t_{i-1}) to t_i, with that step's order.
        previous_order = _order_of_step(carry.step - 1, carry.num_steps, order, lower_order_final)
        corrected = _update(
            process, carry.x, carry.t, t_cur, carry.x0, previous_order,
            [(lam_older, carry.x0_older), (lam_oldest, carry.x0_oldest)][: order - 1], variant, x0_new=x0,
        )
        x = jnp.where(carry.step > 0, corrected, x)
    current_order = _order_of_step(carry.step, carry.num_steps, order, lower_order_final)
    current_order = jnp.where(lands_on_zero_noise(process, t_next), 1, current_order)  # the final denoising
    x_next = _update(
        process, x, t_cur, t_next, x0, current_order, [(lam_prev, carry.x0), (lam_older, carry.x0_older)][: order - 1],
        variant,
    )
    return x_next, advance(carry, x0, t_cur)._replace(x=x)
