"""The Gaussian forward process, its posterior, and how a denoiser's output is read.

Shapes: ``x`` is a batch [B, ...] (images [B, H, W, C], toy data [B, D]); ``t`` is int32
[B], an index into the schedule's tables (0 = the first noising step). Per-step
coefficients are gathered at ``t`` and broadcast over the non-batch axes.

References: DDPM (Ho et al. 2020) eqs. 4, 6, 7, 11; improved DDPM (Nichol & Dhariwal
2021) section 3.1; v-prediction (Salimans & Ho 2022, appendix D).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from diffjax.diffusion.schedules import Schedule

__all__ = [
    "MEAN_TYPES",
    "VAR_TYPES",
    "DiffusionSpec",
    "at",
    "p_mean_variance",
    "predict_eps_from_v",
    "predict_eps_from_x0",
    "predict_v",
    "predict_x0_from_eps",
    "predict_x0_from_v",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "split_output",
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


def at(table: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """Gather ``table[t]`` and shape it [B, 1, ..., 1] to broadcast over a rank-``ndim`` batch.

    Args:
      table: [T] float32.
      t: [B] int.
      ndim: rank of the batch the result multiplies (e.g. 4 for NHWC images).

    Returns:
      [B] + [1] * (ndim - 1).
    """
    chex.assert_rank(t, 1)
    return table[t].reshape(t.shape + (1,) * (ndim - 1))


def _check_batch(x: jax.Array, t: jax.Array) -> None:
    chex.assert_rank(t, 1)
    if x.ndim < 2 or x.shape[0] != t.shape[0]:
        raise ValueError(f"x must be a batch [B, ...] matching t [B]; got x {x.shape} and t {t.shape}")


# ------------------------------------------------------------------ forward process


def q_mean_variance(
    schedule: Schedule, x0: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (DDPM eq. 4).

    Args:
      schedule: the chain.
      x0: [B, ...] data.
      t: [B] int steps.

    Returns:
      (mean [B, ...], variance [B, 1, ...], log_variance [B, 1, ...]).
    """
    _check_batch(x0, t)
    mean = at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
    # 1 - alpha_bar from its float64-derived square root: 1 - alpha_bar in float32 loses
    # digits at small t.
    variance = jnp.square(at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim))
    log_variance = at(schedule.log_one_minus_alphas_cumprod, t, x0.ndim)
    return mean, variance, log_variance


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Sample x_t ~ q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.

    Args:
      schedule: the chain.
      x0: [B, ...] data.
      t: [B] int steps.
      noise: [B, ...] standard normal, the eps of the objective.

    Returns:
      x_t [B, ...].
    """
    _check_batch(x0, t)
    chex.assert_equal_shape([x0, noise])
    return (
        at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_posterior_mean_variance(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The true posterior q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7).

    mean = coef1_t x_0 + coef2_t x_t, variance = beta~_t; the log variance is the clipped
    one (log beta~_1 at t = 0, where beta~_0 = 0).

    Args:
      schedule: the chain.
      x0: [B, ...] data (or a prediction of it).
      x_t: [B, ...] noisy data at step t.
      t: [B] int steps.

    Returns:
      (mean [B, ...], variance [B, 1, ...], log_variance_clipped [B, 1, ...]).
    """
    _check_batch(x_t, t)
    chex.assert_equal_shape([x0, x_t])
    mean = (
        at(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
        + at(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t
    )
    variance = at(schedule.posterior_variance, t, x_t.ndim)
    log_variance = at(schedule.posterior_log_variance_clipped, t, x_t.ndim)
    return mean, variance, log_variance


# ---------------------------------------------------------------- parameterisations


def predict_x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x_0 = x_t / sqrt(alpha_bar_t) - sqrt(1/alpha_bar_t - 1) eps (DDPM eq. 4 inverted). Shapes [B, ...]."""
    return (
        at(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
        - at(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
    )


def predict_eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1/alpha_bar_t - 1). Shapes [B, ...]."""
    return (
        at(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0
    ) / at(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)


def predict_v(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022). Shapes [B, ...]."""
    return (
        at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * eps
        - at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
    )


def predict_x0_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v. Shapes [B, ...]."""
    return (
        at(schedule.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
        - at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v
    )


def predict_eps_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v. Shapes [B, ...]."""
    return (
        at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t
        + at(schedule.sqrt_alphas_cumprod, t, x_t.ndim) * v
    )


def split_output(spec: DiffusionSpec, output: jax.Array, data_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array | None]:
    """Split a denoiser output into (mean prediction, variance values or None).

    Args:
      spec: the static spec.
      output: [B, ..., C] or [B, ..., 2C] when the variance is learned.
      data_shape: shape of x_t, [B, ..., C].

    Returns:
      (prediction [B, ..., C], variance values [B, ..., C] or None).
    """
    expected = data_shape[:-1] + (spec.output_channels(data_shape[-1]),)
    if output.shape != expected:
        raise ValueError(
            f"denoiser output has shape {output.shape}; {spec} expects {expected} for data {data_shape}"
        )
    if not spec.learns_variance:
        return output, None
    channels = data_shape[-1]
    return output[..., :channels], output[..., channels:]


def _model_log_variance(
    spec: DiffusionSpec, schedule: Schedule, var_values: jax.Array | None, t: jax.Array, ndim: int
) -> jax.Array:
    if spec.var_type == "fixed_small":
        return at(schedule.posterior_log_variance_clipped, t, ndim)
    if spec.var_type == "fixed_large":
        # improved DDPM: beta_t, except beta~_1 at t = 0 for a better decoder likelihood.
        log_variance_large = jnp.concatenate(
            [schedule.posterior_log_variance_clipped[1:2], schedule.log_betas[1:]]
        )
        return at(log_variance_large, t, ndim)
    if spec.var_type == "learned":
        return var_values
    # learned_range: log Sigma = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1)/2.
    min_log = at(schedule.posterior_log_variance_clipped, t, ndim)
    max_log = at(schedule.log_betas, t, ndim)
    frac = (var_values + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def p_mean_variance(
    spec: DiffusionSpec,
    schedule: Schedule,
    output: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    clip_denoised: bool = False,
) -> dict[str, jax.Array]:
    """The reverse step p(x_{t-1} | x_t) that a denoiser's output defines.

    The prediction is turned into x_0-hat (optionally clipped to [-1, 1]) and the mean is
    the true posterior mean given x_0-hat (DDPM eq. 7, improved DDPM section 3.1); eps-hat
    is recomputed from the (clipped) x_0-hat.

    Args:
      spec: how to read ``output``.
      schedule: the chain; ``t`` indexes it.
      output: the denoiser's output for (x_t, t): [B, ..., C] or [B, ..., 2C].
      x_t: [B, ..., C].
      t: [B] int steps.
      clip_denoised: clip x_0-hat to [-1, 1] (sampling and evaluation; not training).

    Returns:
      dict with ``mean`` [B, ..., C], ``variance`` and ``log_variance`` (broadcastable to
      [B, ..., C]: [B, 1, ..., 1] when fixed), ``pred_x0`` and ``pred_eps`` [B, ..., C].
    """
    _check_batch(x_t, t)
    prediction, var_values = split_output(spec, output, x_t.shape)
    if spec.mean_type == "eps":
        pred_x0 = predict_x0_from_eps(schedule, x_t, t, prediction)
    elif spec.mean_type == "x0":
        pred_x0 = prediction
    else:
        pred_x0 = predict_x0_from_v(schedule, x_t, t, prediction)
    if clip_denoised:
        pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    if spec.mean_type == "eps" and not clip_denoised:
        pred_eps = prediction
    else:
        pred_eps = predict_eps_from_x0(schedule, x_t, t, pred_x0)
    mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
    log_variance = _model_log_variance(spec, schedule, var_values, t, x_t.ndim)
    return dict(
        mean=mean,
        variance=jnp.exp(log_variance),
        log_variance=log_variance,
        pred_x0=pred_x0,
        pred_eps=pred_eps,
    )
