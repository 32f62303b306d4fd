"""Diffusion objectives as weightings of one per-noise-level loss (Kingma & Gao 2023).

Kingma & Gao ("Understanding Diffusion Objectives as the ELBO with Simple Data Augmentation")
write every usual objective as one loss weighted per noise level, the level being the
log-SNR lambda = log(alpha^2 / sigma^2):

    L_w = 1/2 E_{t ~ U(0,1), eps} [ w(lambda_t) (-d lambda/dt) ||eps-hat - eps||^2 ]
        = 1/2 E_{lambda ~ p(lambda), eps} [ w(lambda) / p(lambda) ||eps-hat - eps||^2 ],

p(lambda) the density of the sampled lambda; w = 1 is the ELBO (VDM's continuous-time
diffusion loss L_inf, Kingma et al. 2021). Here each objective is instead written as the
weight W(lambda) of the per-example x_0 error, **the base of this module**:

    loss(lambda) = W(lambda) mean ||x0-hat - x0||^2       (mean over the non-batch axes),

so that the objective is E_{lambda ~ p} [loss(lambda)]. Since eps-hat - eps = -e^{lambda/2}
(x0-hat - x0) at fixed x_t (x_t = alpha x_0 + sigma eps, SNR = e^lambda), the same loss is
W(lambda) e^{-lambda} mean ||eps-hat - eps||^2 (``base="eps"``), and Kingma & Gao's weighting
is w(lambda) = 2 p(lambda) W(lambda) e^{-lambda} (``kingma_gao_weight``).

The weightings (``WEIGHTINGS``), W as a function of lambda, SNR = e^lambda:

==========  ========================================  =============================================
name        W(lambda) on ||x0-hat - x0||^2            the objective
==========  ========================================  =============================================
``x0_mse``  1                                         x_0-prediction MSE
``eps_mse`` SNR                                       DDPM's L_simple, ||eps-hat - eps||^2 (Ho et
                                                      al. 2020, eq. 14)
``v_mse``   1 + SNR                                   ||v-hat - v||^2, v = alpha eps - sigma x_0
                                                      (Salimans & Ho 2022); VP only (alpha^2 +
                                                      sigma^2 = 1)
``min_snr`` min(SNR, gamma)                           min-SNR-gamma (Hang et al. 2023);
                                                      gamma = 5. The same W for every target:
                                                      min(SNR, gamma)/SNR on the eps MSE,
                                                      min(SNR, gamma) on the x_0 MSE,
                                                      min(SNR, gamma)/(SNR + 1) on the v MSE
``elbo``    SNR / (2 p(lambda))                       the ELBO / VLB in nats per dimension: VDM's
                                                      L_inf = 1/2 E_t[-lambda'(t) ||eps-hat -
                                                      eps||^2], i.e. w = 1 (needs ``log_density``)
``edm``     SNR + 1/sigma_d^2                         EDM's lambda(sigma) = (sigma^2 + sigma_d^2) /
                                                      (sigma sigma_d)^2 at sigma = e^{-lambda/2}
                                                      (Karras et al. 2022, Table 1); sigma_d = 0.5.
                                                      Its log-normal sigma (ln sigma ~ N(-1.2,
                                                      1.2^2)) is lambda ~ N(2.4, 2.4^2):
                                                      ``edm.EDMPrecond().log_snr_log_density``
==========  ========================================  =============================================

Where the density matters: W is the weight of one *sampled* level, so the objective also
depends on how lambda is drawn. The sampling-free weightings above are those of the papers,
each with its own sampler (t uniform in DDPM and min-SNR, EDM's log-normal sigma); only the
ELBO's W depends on p(lambda) itself, because the ELBO is an integral over lambda with weight
1. ``log_density_uniform_t`` gives p(lambda) for t ~ U(t_min, t_max) on any noise process;
Kingma & Gao's w(lambda) of any weighting under any sampler is ``kingma_gao_weight``.

In discrete time the ELBO's term at step t > 0 (DDPM's L_{t-1} with the posterior variance
beta~_t; VDM's discrete-time loss) is ``vlb_step_weight`` = 1/2 (SNR_{t-1} - SNR_t) on the x_0 error.

``losses.training_losses`` is the discrete trainer's implementation; this module is the
continuous bookkeeping that puts every weighting on one footing (tests check they agree).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "TARGETS",
    "WEIGHTINGS",
    "Weighting",
    "kingma_gao_weight",
    "log_density_uniform_t",
    "per_level_loss",
    "target_weight",
    "vlb_step_weight",
    "x0_weight",
]

TARGETS = ("x0", "eps", "v")


def _float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Weighting:
    """One weighting: W(lambda) on the x_0 error, with its formula and reference.

    Attributes:
      name: its key in ``WEIGHTINGS``.
      x0_weight: (log_snr, log_density, gamma, sigma_data) -> W(lambda), shaped like log_snr.
      needs_density: whether W depends on the density of the sampled lambda.
      formula: W(lambda) in words.
      reference: where it comes from.
    """

    name: str
    x0_weight: Callable
    needs_density: bool
    formula: str
    reference: str


def _elbo(lam, log_density, gamma, sigma_data):
    return 0.5 * jnp.exp(lam - log_density)


WEIGHTINGS: dict[str, Weighting] = {
    w.name: w
    for w in (
        Weighting("x0_mse", lambda lam, ld, g, sd: jnp.ones_like(lam), False, "W = 1", "x_0-prediction MSE"),
        Weighting(
            "eps_mse", lambda lam, ld, g, sd: jnp.exp(lam), False, "W = SNR = e^lambda",
            "Ho et al. 2020, eq. 14 (L_simple)",
        ),
        Weighting(
            "v_mse", lambda lam, ld, g, sd: 1.0 + jnp.exp(lam), False, "W = 1 + SNR (alpha^2 + sigma^2 = 1)",
            "Salimans & Ho 2022, appendix D",
        ),
        Weighting(
            "min_snr", lambda lam, ld, g, sd: jnp.minimum(jnp.exp(lam), g), False, "W = min(SNR, gamma)",
            "Hang et al. 2023 (Efficient Diffusion Training via Min-SNR Weighting Strategy)",
        ),
        Weighting(
            "elbo", _elbo, True, "W = SNR / (2 p(lambda)): w(lambda) = 1",
            "Kingma et al. 2021 (VDM), continuous-time L_inf; Kingma & Gao 2023",
        ),
        Weighting(
            "edm", lambda lam, ld, g, sd: jnp.exp(lam) + 1.0 / sd**2, False,
            "W = SNR + 1/sigma_d^2 = (sigma^2 + sigma_d^2)/(sigma sigma_d)^2 at sigma = e^{-lambda/2}",
            "Karras et al. 2022, Table 1 (loss weighting lambda(sigma)); Kingma & Gao 2023, Table 1",
        ),
    )
}
"""The weightings by name; see the module docstring for each formula."""


def _weighting(name: str) -> Weighting:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; expected one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name]


def x0_weight(name: str, log_snr, *, log_density=None, gamma: float = 5.0, sigma_data: float = 0.5) -> jax.Array:
    """W(lambda): the weight of mean ||x0-hat - x0||^2 at log-SNR ``log_snr`` (any shape).

    ``log_density`` (log p(lambda) of the sampled lambda, broadcastable to log_snr) is needed by
    ``elbo`` only. ``gamma``: min-SNR's gamma. ``sigma_data``: EDM's sigma_d.
    """
    weighting = _weighting(name)
    lam = _float(log_snr)
    if weighting.needs_density:
        if log_density is None:
            raise ValueError(f"the {name!r} weighting needs log_density, the log density of the sampled log-SNR")
        log_density = jnp.asarray(log_density, lam.dtype)
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return weighting.x0_weight(lam, log_density, gamma, sigma_data)


def _mse_ratio(target: str, lam: jax.Array) -> jax.Array:
    """||target-hat - target||^2 / ||x0-hat - x0||^2 at fixed x_t of a VP process: 1, SNR, 1 + SNR."""
    if target == "x0":
        return jnp.ones_like(lam)
    if target == "eps":
        return jnp.exp(lam)
    if target == "v":
        return 1.0 + jnp.exp(lam)
    raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")


def target_weight(name: str, target: str, log_snr, **kwargs) -> jax.Array:
    """The weight of the MSE of ``target`` (``x0``, ``eps`` or ``v``) that gives the same loss as
    W(lambda) on the x_0 error: W / (1, SNR, 1 + SNR) (the v ratio for a VP process).

    E.g. ``min_snr``: min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v (Hang
    et al. 2023); ``eps_mse`` on eps and ``v_mse`` on v give 1. ``kwargs``: as ``x0_weight``.
    """
    lam = _float(log_snr)
    return x0_weight(name, lam, **kwargs) / _mse_ratio(target, lam)


def kingma_gao_weight(name: str, log_snr, log_density, **kwargs) -> jax.Array:
    """Kingma & Gao's w(lambda) = 2 p(lambda) W(lambda) e^{-lambda} of a weighting whose lambda
    is drawn with log density ``log_density``; the ELBO gives w = 1. (Their Table 1 drops
    constant factors: EDM's entry N(lambda; 2.4, 2.4^2)(e^{-lambda} + 0.5^2)/0.5^2 is half of
    this, which counts EDM's loss without L_w's 1/2.) ``kwargs``: as ``x0_weight``."""
    lam = _float(log_snr)
    log_density = jnp.asarray(log_density, lam.dtype)
    return 2.0 * jnp.exp(log_density - lam) * x0_weight(name, lam, log_density=log_density, **kwargs)


def _mean_flat(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def per_level_loss(
    name: str,
    x0_hat: jax.Array | None,
    x0: jax.Array | None,
    eps_hat: jax.Array | None,
    eps: jax.Array | None,
    log_snr,
    *,
    log_density=None,
    gamma: float = 5.0,
    sigma_data: float = 0.5,
    base: str = "x0",
) -> jax.Array:
    """The per-example loss of weighting ``name`` at the sampled log-SNR.

    base ``x0``: W(lambda) mean ||x0_hat - x0||^2; base ``eps``: W(lambda) e^{-lambda}
    mean ||eps_hat - eps||^2. The two are equal when (x0_hat, eps_hat) are one prediction read
    both ways at the x_t made from (x0, eps); only the pair of the chosen base is needed (the
    other may be None).

    Args:
      name: a key of ``WEIGHTINGS``.
      x0_hat, x0: [B, ...] the data prediction and the data.
      eps_hat, eps: [B, ...] the noise prediction and the noise.
      log_snr: [B] lambda of each example.
      log_density: [B] log p(lambda) of the sampled lambda (``elbo`` only).
      gamma: min-SNR's gamma.
      sigma_data: EDM's sigma_d.
      base: ``x0`` or ``eps``.

    Returns:
      [B].
    """
    lam = _float(log_snr)
    weight = x0_weight(name, lam, log_density=log_density, gamma=gamma, sigma_data=sigma_data)
    if base == "x0":
        prediction, truth = x0_hat, x0
    elif base == "eps":
        prediction, truth = eps_hat, eps
        weight = weight * jnp.exp(-lam)
    else:
        raise ValueError(f"base must be 'x0' or 'eps', got {base!r}")
    if prediction is None or truth is None:
        raise ValueError(f"base {base!r} needs both its prediction and its truth")
    chex.assert_equal_shape([prediction, truth])
    chex.assert_shape(lam, prediction.shape[:1])
    return weight * _mean_flat(jnp.square(prediction - truth))


def vlb_step_weight(log_snr_prev, log_snr) -> jax.Array:
    """The discrete ELBO's weight on mean ||x0-hat - x0||^2 at a step t > 0, in nats per
    dimension: 1/2 (SNR_{t-1} - SNR_t) (VDM's discrete-time loss), equal to DDPM's L_{t-1} =
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) with the posterior variance beta~_t.

    Written 1/2 SNR_t expm1(lambda_{t-1} - lambda_t) (no cancellation between close steps).
    """
    lam_prev, lam = _float(log_snr_prev), _float(log_snr)
    return 0.5 * jnp.exp(lam) * jnp.expm1(lam_prev - lam)


def log_density_uniform_t(process, log_snr, t_min: float = 0.0, t_max: float = 1.0) -> jax.Array:
    """log p(lambda) of lambda_t when t ~ U(t_min, t_max) on a noise process (``processes``).

    p(lambda) = 1 / ((t_max - t_min) |d lambda/dt|) at t = t(lambda), the derivative by autodiff
    of ``process.log_snr``; -inf where t(lambda) is outside [t_min, t_max]. ``log_snr`` any
    shape -> its shape.
    """
    lam = _float(log_snr)
    t = process.t_from_log_snr(lam)
    dlam_dt = jax.vmap(jax.grad(lambda s: process.log_snr(s)))(jnp.ravel(t)).reshape(t.shape)
    log_p = -jnp.log(jnp.abs(dlam_dt)) - math.log(t_max - t_min)
    return jnp.where((t >= t_min) & (t <= t_max), log_p, -jnp.inf)
