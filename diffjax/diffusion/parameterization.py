"""How a denoiser's output is read: the one place that branches on ``DiffusionSpec``.

A denoiser's output [B, ..., C] or [B, ..., 2C] holds a *mean part* (its first C channels:
a prediction of eps, x_0 or v, per ``spec.mean_type``) and, when the variance is learned,
a *variance part* (the next C channels, per ``spec.var_type``). ``read_output`` turns it
into every view the rest of the library needs (x_0-hat, eps-hat, v-hat and the log
variance of the reverse step); the posterior, the losses, the samplers and the likelihood
all go through it, so nothing else branches on the spec.

The conversions between eps, x_0 and v all follow from the forward process

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,
    v   = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0,

(Salimans & Ho 2022, appendix D): (x_t, v) is (x_0, eps) rotated by the angle phi_t
with cos phi_t = sqrt(alpha_bar_t). Each conversion takes the schedule (the chain), ``t``
(int32 [B], an index into its tables) and two arrays [B, ...] of one shape (data or
predictions of it), and returns that shape; the coefficients are the schedule's tables
(float32, computed in float64), gathered at ``t`` and broadcast over the non-batch axes.

The same conversions in continuous time (``x0_from_eps``, ``eps_from_x0``, ``v_from_x0_eps``,
``x0_from_v``, ``eps_from_v``, and the score: ``score_from_eps``, ``eps_from_score``,
``score_from_x0``, ``x0_from_score``) take alpha_t and sigma_t of a noise process
(``processes``) instead of a schedule and a step.

References: DDPM (Ho et al. 2020) eqs. 4, 11; improved DDPM (Nichol & Dhariwal 2021)
section 3.1; v-prediction (Salimans & Ho 2022, appendix D).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion.schedules import Schedule, at, check_batch

__all__ = [
    "MEAN_TYPES",
    "VAR_TYPES",
    "DiffusionSpec",
    "Prediction",
    "join_output",
    "model_log_variance",
    "mse_ratio_to_x0",
    "predict_eps_from_v",
    "predict_eps_from_x0",
    "predict_v",
    "predict_x0_from_eps",
    "predict_x0_from_v",
    "prediction_target",
    "read_output",
    "split_output",
    "eps_from_score",
    "eps_from_v",
    "eps_from_x0",
    "score_from_eps",
    "score_from_x0",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_score",
    "x0_from_mean_part",
    "x0_from_v",
]

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """How a denoiser's output is read: a static (hashable) choice.

    Attributes:
      mean_type: what the first C output channels predict: ``eps`` (the noise), ``x0``
        (the clean data) or ``v`` (sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0).
      var_type: the reverse-process variance: ``fixed_small`` (beta~_t), ``fixed_large``
        (beta_t, with beta~_1 at t = 0), ``learned`` (the next C channels are log
        variances) or ``learned_range`` (they are v in [-1, 1] interpolating log beta_t
        and log beta~_t as (v + 1)/2).
    """

    mean_type: str = "eps"
    var_type: str = "fixed_small"

    def __post_init__(self):
        if self.mean_type not in MEAN_TYPES:
            raise ValueError(f"unknown mean_type {self.mean_type!r}; expected one of {MEAN_TYPES}")
        if self.var_type not in VAR_TYPES:
            raise ValueError(f"unknown var_type {self.var_type!r}; expected one of {VAR_TYPES}")

    @property
    def learns_variance(self) -> bool:
        """Whether the denoiser outputs variance channels (2C outputs)."""
        return self.var_type in ("learned", "learned_range")

    def output_channels(self, data_channels: int) -> int:
        """Channels the denoiser must output for data with ``data_channels`` channels."""
        return 2 * data_channels if self.learns_variance else data_channels


# ------------------------------------------------------------------- conversions


def _scaled(table: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """table[t] x: a table [T] gathered at t [B] times x [B, ...] -> [B, ...]."""
    return at(table, t, x.ndim) * x


def predict_x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x_0 = x_t / sqrt(alpha_bar_t) - sqrt(1/alpha_bar_t - 1) eps: DDPM eq. 4 solved for x_0.

    x_t, eps [B, ...] and t [B] -> x_0 [B, ...].
    """
    return _scaled(schedule.sqrt_recip_alphas_cumprod, t, x_t) - _scaled(schedule.sqrt_recipm1_alphas_cumprod, t, eps)


def predict_eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1/alpha_bar_t - 1): DDPM eq. 4 solved for eps.

    x_t, x0 [B, ...] and t [B] -> eps [B, ...]. Undefined where alpha_bar_t = 1 (no noise);
    at small t it divides by sqrt(1/alpha_bar_t - 1) ~ sqrt(beta_1), amplifying errors in x0.
    """
    return (_scaled(schedule.sqrt_recip_alphas_cumprod, t, x_t) - x0) / at(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)


def predict_v(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, appendix D).

    x0, eps [B, ...] and t [B] -> v [B, ...]. v is d x_t / d phi for x_t = cos(phi) x_0 +
    sin(phi) eps, the velocity of the rotation.
    """
    return _scaled(schedule.sqrt_alphas_cumprod, t, eps) - _scaled(schedule.sqrt_one_minus_alphas_cumprod, t, x0)


def predict_x0_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v: the rotation (x_0, eps) -> (x_t, v) undone.

    x_t, v [B, ...] and t [B] -> x_0 [B, ...].
    """
    return _scaled(schedule.sqrt_alphas_cumprod, t, x_t) - _scaled(schedule.sqrt_one_minus_alphas_cumprod, t, v)


def predict_eps_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v: the other row of the inverse rotation.

    x_t, v [B, ...] and t [B] -> eps [B, ...]; with ``predict_x0_from_v``, the inverse of
    (x_0, eps) -> (x_t, v).
    """
    return _scaled(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) + _scaled(schedule.sqrt_alphas_cumprod, t, v)


def prediction_target(
    spec: DiffusionSpec, schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array
) -> jax.Array:
    """What the mean part should predict for x_t = q_sample(schedule, x0, t, noise): the
    target of L_simple's MSE (DDPM eq. 14).

    eps: ``noise``; x0: ``x0``; v: sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0.

    Args:
      spec: the static spec; its ``mean_type`` picks the target.
      schedule: the chain; ``t`` indexes it.
      x0: [B, ...] data.
      t: [B] int steps.
      noise: [B, ...] the eps that made x_t.

    Returns:
      [B, ...], shaped like the mean part of the output.
    """
    if spec.mean_type == "eps":
        return noise
    if spec.mean_type == "x0":
        return x0
    return predict_v(schedule, x0, t, noise)


def mse_ratio_to_x0(spec: DiffusionSpec, snr: jax.Array) -> jax.Array:
    """The squared error of the mean part over that of the x_0-hat it implies, at fixed x_t.

    At fixed (x_t, t) each prediction is an affine function of x_0-hat: d eps/d x_0 =
    -sqrt(SNR_t) and d v/d x_0 = -1/sqrt(1 - alpha_bar_t) = -sqrt(SNR_t + 1), so an MSE
    in the spec's space is this ratio times the x_0 MSE: SNR for eps, 1 for x0, SNR + 1
    for v. A weight w on the x_0 MSE is ``w / mse_ratio_to_x0(spec, snr)`` on the MSE of
    the mean part (min-SNR weighting, Hang et al. 2023).

    Args:
      spec: the static spec; its ``mean_type`` picks the ratio.
      snr: [B] SNR_t = alpha_bar_t / (1 - alpha_bar_t).

    Returns:
      [B].
    """
    if spec.mean_type == "eps":
        return snr
    if spec.mean_type == "x0":
        return jnp.ones_like(snr)
    return snr + 1.0


# ---------------------------------------------- conversions in continuous time
#
# The same conversions in the continuous view (``processes``): x_t = alpha x_0 + sigma eps
# with any alpha, sigma (arrays broadcasting against x, e.g. [B, 1, ..., 1] from
# ``NoiseProcess.alpha_sigma(t, ndim)``, or scalars), not only alpha^2 + sigma^2 = 1. x_0 is
# EDM's denoiser D(x; sigma) (of x / alpha), v = alpha eps - sigma x_0, and the score of the
# marginal p_t is grad log p_t(x_t) = E[-(x_t - alpha x_0)/sigma^2 | x_t] = -eps-hat / sigma
# (Song et al. 2021, eq. 7; Karras et al. 2022, eq. 3). The discrete functions above keep
# their own float32 tables (computed in float64), so they are not rewritten through these.


def x0_from_eps(x_t: jax.Array, eps: jax.Array, alpha, sigma) -> jax.Array:
    """x_0 = (x_t - sigma eps) / alpha."""
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: jax.Array, x0: jax.Array, alpha, sigma) -> jax.Array:
    """eps = (x_t - alpha x_0) / sigma (undefined at sigma = 0)."""
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0: jax.Array, eps: jax.Array, alpha, sigma) -> jax.Array:
    """v = alpha eps - sigma x_0 (Salimans & Ho 2022, appendix D)."""
    return alpha * eps - sigma * x0


def x0_from_v(x_t: jax.Array, v: jax.Array, alpha, sigma) -> jax.Array:
    """x_0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2): alpha x_t - sigma v for a VP process."""
    return (alpha * x_t - sigma * v) / (alpha**2 + sigma**2)


def x0_from_mean_part(spec: DiffusionSpec, x_t: jax.Array, mean_part: jax.Array, alpha, sigma) -> jax.Array:
    """The data prediction x_0 [B, ...] from a denoiser's mean part [B, ...] read per
    ``spec.mean_type`` (eps, x0 or v) with the continuous alpha_t, sigma_t (broadcastable)."""
    if spec.mean_type == "eps":
        return x0_from_eps(x_t, mean_part, alpha, sigma)
    if spec.mean_type == "v":
        return x0_from_v(x_t, mean_part, alpha, sigma)
    return mean_part


def eps_from_v(x_t: jax.Array, v: jax.Array, alpha, sigma) -> jax.Array:
    """eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2): sigma x_t + alpha v for a VP process."""
    return (sigma * x_t + alpha * v) / (alpha**2 + sigma**2)


def score_from_eps(eps: jax.Array, sigma) -> jax.Array:
    """grad log p_t(x_t) = -eps / sigma, for eps the posterior mean E[eps | x_t]."""
    return -eps / sigma


def eps_from_score(score: jax.Array, sigma) -> jax.Array:
    """eps = -sigma score: the inverse of ``score_from_eps``."""
    return -sigma * score


def score_from_x0(x_t: jax.Array, x0: jax.Array, alpha, sigma) -> jax.Array:
    """grad log p_t(x_t) = (alpha x_0 - x_t) / sigma^2, for x_0 = E[x_0 | x_t] (Tweedie)."""
    return score_from_eps(eps_from_x0(x_t, x0, alpha, sigma), sigma)


def x0_from_score(x_t: jax.Array, score: jax.Array, alpha, sigma) -> jax.Array:
    """x_0 = (x_t + sigma^2 score) / alpha: Tweedie's formula."""
    return x0_from_eps(x_t, eps_from_score(score, sigma), alpha, sigma)


# ----------------------------------------------------------- reading an output


def split_output(spec: DiffusionSpec, output: jax.Array, data_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array | None]:
    """Split a denoiser output into its mean part and its variance part (None when fixed).

    Args:
      spec: the static spec.
      output: [B, ..., C] or [B, ..., 2C] when the variance is learned.
      data_shape: shape of x_t, [B, ..., C].

    Returns:
      (mean part [B, ..., C], variance part [B, ..., C] or None).

    Raises:
      ValueError: ``output`` is not shaped as ``spec`` expects for ``data_shape``.
    """
    expected = tuple(data_shape[:-1]) + (spec.output_channels(data_shape[-1]),)
    if output.shape != expected:
        raise ValueError(
            f"denoiser output has shape {output.shape}; {spec} expects {expected} for data {tuple(data_shape)}"
        )
    if not spec.learns_variance:
        return output, None
    channels = data_shape[-1]
    return output[..., :channels], output[..., channels:]


def join_output(mean_part: jax.Array, var_part: jax.Array | None) -> jax.Array:
    """The inverse of ``split_output``: [B, ..., C] and [B, ..., C] (or None) -> the output."""
    return mean_part if var_part is None else jnp.concatenate([mean_part, var_part], axis=-1)


def model_log_variance(
    spec: DiffusionSpec, schedule: Schedule, var_part: jax.Array | None, t: jax.Array, ndim: int
) -> jax.Array:
    """log Sigma_theta(x_t, t) of the reverse step, per ``spec.var_type``.

    fixed_small: log beta~_t (clipped: log beta~_1 at t = 0). fixed_large: log beta_t, with
    log beta~_1 at t = 0 (improved DDPM, for a better decoder likelihood). learned: the
    variance part itself. learned_range: frac log beta_t + (1 - frac) log beta~_t with
    frac = (r + 1)/2 and r in [-1, 1] the variance part (improved DDPM eq. 15).

    Args:
      spec: the static spec.
      schedule: the chain; ``t`` indexes it.
      var_part: [B, ..., C] the variance part, or None for a fixed variance.
      t: [B] int steps.
      ndim: rank of x_t.

    Returns:
      [B, ..., C] when learned, [B, 1, ..., 1] when fixed.
    """
    if spec.var_type == "fixed_small":
        return at(schedule.posterior_log_variance_clipped, t, ndim)
    if spec.var_type == "fixed_large":
        log_variance_large = jnp.concatenate(
            [schedule.posterior_log_variance_clipped[1:2], schedule.log_betas[1:]]
        )
        return at(log_variance_large, t, ndim)
    if spec.var_type == "learned":
        return var_part
    min_log = at(schedule.posterior_log_variance_clipped, t, ndim)
    max_log = at(schedule.log_betas, t, ndim)
    frac = (var_part + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


class Prediction(NamedTuple):
    """What a denoiser's output says about (x_t, t): see ``read_output``.

    Attributes:
      x0: x_0-hat [B, ..., C] (clipped to [-1, 1] when asked).
      eps: eps-hat [B, ..., C], consistent with ``x0``.
      v: v-hat [B, ..., C], consistent with ``x0`` and ``eps``.
      log_variance: log Sigma_theta, [B, ..., C] when learned, [B, 1, ..., 1] when fixed.
    """

    x0: jax.Array
    eps: jax.Array
    v: jax.Array
    log_variance: jax.Array


def read_output(
    spec: DiffusionSpec, schedule: Schedule, output: jax.Array, x_t: jax.Array, t: jax.Array, clip_denoised: bool = False
) -> Prediction:
    """Read a denoiser's output as x_0-hat, eps-hat, v-hat and the reverse step's log variance.

    The mean part becomes x_0-hat (optionally clipped to [-1, 1]), and eps-hat is
    recomputed from it (``predict_eps_from_x0``, as improved DDPM does), except that an
    unclipped eps prediction is returned as it is. v-hat is ``predict_v`` of the two,
    except that an unclipped v prediction is returned as it is. So with clipping all three
    describe the clipped x_0-hat, and without it they are the model's own prediction and
    its exact conversions (up to float32 rounding).

    Args:
      spec: how to read ``output``.
      schedule: the chain; ``t`` indexes it.
      output: the denoiser's output for (x_t, t): [B, ..., C] or [B, ..., 2C].
      x_t: [B, ..., C].
      t: [B] int steps.
      clip_denoised: clip x_0-hat to [-1, 1] (sampling and evaluation; not training).

    Returns:
      A ``Prediction``.
    """
    check_batch(x_t, t)
    mean_part, var_part = split_output(spec, output, x_t.shape)
    if spec.mean_type == "eps":
        pred_x0 = predict_x0_from_eps(schedule, x_t, t, mean_part)
    elif spec.mean_type == "x0":
        pred_x0 = mean_part
    else:
        pred_x0 = predict_x0_from_v(schedule, x_t, t, mean_part)
    if clip_denoised:
        pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    if spec.mean_type == "eps" and not clip_denoised:
        pred_eps = mean_part
    else:
        pred_eps = predict_eps_from_x0(schedule, x_t, t, pred_x0)
    if spec.mean_type == "v" and not clip_denoised:
        pred_v = mean_part
    else:
        pred_v = predict_v(schedule, pred_x0, t, pred_eps)
    log_variance = model_log_variance(spec, schedule, var_part, t, x_t.ndim)
    return Prediction(x0=pred_x0, eps=pred_eps, v=pred_v, log_variance=log_variance)
