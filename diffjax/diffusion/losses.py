"""Likelihood terms and training objectives of DDPM and improved DDPM.

All per-example terms are means over the non-batch axes ("per dimension"), and the
variational terms are in bits (divided by ln 2), as in both papers' code.

Objectives (``Objective.name``):

* ``simple``: L_simple (DDPM eq. 14), the MSE between the mean prediction and its target
  (eps, x_0 or v, per ``DiffusionSpec.mean_type``). With a learned variance the sampled
  VLB term is added with a stop-gradient on the mean, so it trains only the variance
  (improved DDPM's ``MSE``/``RESCALED_MSE`` with ``learn_sigma``); ``hybrid`` names that
  case explicitly.
* ``hybrid``: L_simple + lambda L_vlb (improved DDPM eq. 16, lambda = 0.001). The sampled
  VLB term L_t estimates L_vlb / T, so it is weighted T/1000 (``rescale_vlb=True``, the
  paper) or 1 (``rescale_vlb=False``, improved DDPM code's plain ``MSE``: lambda = 1/T).
* ``vlb``: L_vlb (improved DDPM section 3.2): the sampled term (KL at t > 0, decoder NLL at
  t = 0) times T, an unbiased estimate of the bound without its constant prior term
  (``rescale_vlb=False`` gives weight 1: the un-rescaled ``KL``).

Importance weights from a timestep sampler multiply ``loss`` in the train step.
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp

from diffjax.diffusion.gaussian import p_mean_variance, q_posterior_mean_variance
from diffjax.diffusion.parameterization import (
    DiffusionSpec,
    join_output,
    mse_ratio_to_x0,
    prediction_target,
    split_output,
)
from diffjax.diffusion.schedules import Schedule

__all__ = [
    "BIN_PROBABILITY_FLOOR",
    "OBJECTIVES",
    "WEIGHTINGS",
    "Objective",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "prior_bpd",
    "training_losses",
    "vb_terms_bpd",
]

OBJECTIVES = ("simple", "hybrid", "vlb")
WEIGHTINGS = ("none", "min_snr", "snr")


def mean_flat(x: jax.Array) -> jax.Array:
    """Mean over all non-batch axes: [B, ...] -> [B]."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats.

    0.5 (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2).
    Arguments broadcast against each other. ``expm1`` keeps -1 + e^(logvar1 - logvar2)
    accurate (and exactly 0) when the variances are (nearly) equal.
    """
    return 0.5 * (
        (logvar2 - logvar1)
        + jnp.expm1(logvar1 - logvar2)
        + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def _approx_cdf_logit(x: jax.Array) -> jax.Array:
    """The logit of DDPM's tanh CDF approximation: 0.5 (1 + tanh(y)) = sigmoid(2 y)."""
    return 2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
    """DDPM's tanh approximation of the standard normal CDF, 0.5 (1 + tanh(sqrt(2/pi) (x +
    0.044715 x^3))), evaluated as the equal sigmoid(2 y), which keeps its lower tail exact."""
    return jax.nn.sigmoid(_approx_cdf_logit(x))


BIN_PROBABILITY_FLOOR = 1e-12
"""Every bin's probability is floored here, as in DDPM's and improved DDPM's code: a pixel's
decoder NLL is at most -log(1e-12) ~= 27.63 nats, and it has no gradient below the floor."""


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
    """log p(x) of 8-bit data under a Gaussian discretised to its 256 bins (DDPM section 3.3).

    Data are uint8 values scaled to [-1, 1]: bin centres 2k/255 - 1, width 2/255. The two
    outer bins extend to -inf and +inf, so the probabilities of the 256 bins sum to one.
    The CDF is DDPM's tanh approximation. Every bin's probability, the two edge bins'
    included, is floored at ``BIN_PROBABILITY_FLOOR`` = 1e-12 before the log, as in both
    papers' code, so -log p(x) <= 27.63 nats per pixel and the gradient is zero (not NaN)
    where the floor applies.

    Accuracy above the floor: the edge bins' log F(upper) and log(1 - F(lower)) are log
    sigmoids of the approximation's logit, exact far into the tails. An inner bin's mass is
    taken on the side of the mean where it is a difference of two small tail values, not
    of two numbers near 1, so it stays accurate in float32 far into the tails (the
    approximation is symmetric: F(-z) = 1 - F(z)).

    Args:
      x: data on the bin centres, [...].
      means: Gaussian means, broadcastable to x.
      log_scales: log standard deviations (half the log variance), broadcastable to x.

    Returns:
      Elementwise log-likelihoods in nats, x's shape, all >= log(1e-12).
    """
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    upper = inv_stdv * (centered + 1.0 / 255.0)
    lower = inv_stdv * (centered - 1.0 / 255.0)
    log_floor = math.log(BIN_PROBABILITY_FLOOR)
    # Edge bins: log F(upper) at x = -1, log(1 - F(lower)) = log F(-lower) at x = +1.
    log_cdf_upper = jnp.maximum(jax.nn.log_sigmoid(_approx_cdf_logit(upper)), log_floor)
    log_survival_lower = jnp.maximum(jax.nn.log_sigmoid(-_approx_cdf_logit(lower)), log_floor)
    # Inner bins: F(upper) - F(lower), or equally S(lower) - S(upper) right of the mean.
    right = centered > 0
    big = jnp.where(right, -lower, upper)
    small = jnp.where(right, -upper, lower)
    log_bin_mass = jnp.log(
        jnp.maximum(
            approx_standard_normal_cdf(big) - approx_standard_normal_cdf(small), BIN_PROBABILITY_FLOOR
        )
    )
    return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_survival_lower, log_bin_mass))


def prior_bpd(schedule: Schedule, x0: jax.Array) -> jax.Array:
    """The prior term L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension.

    Args:
      schedule: the chain.
      x0: [B, ...] data.

    Returns:
      [B] bits/dim.
    """
    last = schedule.num_timesteps - 1
    alpha_bar = schedule.alphas_cumprod[last]
    kl = normal_kl(
        jnp.sqrt(alpha_bar) * x0, schedule.log_one_minus_alphas_cumprod[last], 0.0, 0.0
    )
    return mean_flat(kl) / math.log(2.0)


def vb_terms_bpd(
    spec: DiffusionSpec,
    schedule: Schedule,
    output: jax.Array,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    clip_denoised: bool = False,
) -> dict[str, jax.Array]:
    """The VLB term at step t, per example, in bits/dim (improved DDPM ``_vb_terms_bpd``).

    At t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) with the clipped
    posterior log variance. At t = 0: L_0 = -log p(x_0 | x_1), the discretised Gaussian
    decoder.

    Args:
      spec: how to read ``output``.
      schedule: the chain; ``t`` indexes it.
      output: denoiser output for (x_t, t), [B, ..., C or 2C].
      x0: [B, ..., C] data (on the 8-bit grid in [-1, 1] for the decoder term to be exact).
      x_t: [B, ..., C].
      t: [B] int.
      clip_denoised: clip x_0-hat to [-1, 1] (used in evaluation, not in training).

    Returns:
      dict ``vb`` [B] (the term), ``pred_x0`` [B, ..., C], ``pred_eps`` [B, ..., C].
    """
    true_mean, _, true_log_variance = q_posterior_mean_variance(schedule, x0, x_t, t)
    model = p_mean_variance(spec, schedule, output, x_t, t, clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, model["mean"], model["log_variance"]))
    decoder_nll = -mean_flat(
        discretized_gaussian_log_likelihood(x0, model["mean"], 0.5 * model["log_variance"])
    )
    vb = jnp.where(t == 0, decoder_nll, kl) / math.log(2.0)
    return dict(vb=vb, pred_x0=model["pred_x0"], pred_eps=model["pred_eps"])


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective: a static (hashable) choice.

    Attributes:
      name: ``simple``, ``hybrid`` or ``vlb`` (see the module docstring).
      rescale_vlb: weight the sampled VLB term so it estimates the paper's quantity:
        T/1000 in ``hybrid`` (lambda = 0.001) and ``simple`` with a learned variance, T in
        ``vlb``. False gives weight 1 (improved DDPM code's ``MSE`` and ``KL``).
      weighting: extra per-t weight of the MSE term: ``none``; ``min_snr`` (Hang et al.
        2023: min(SNR, gamma)/SNR for eps, min(SNR, gamma) for x_0, min(SNR, gamma)/(SNR+1)
        for v, i.e. the x_0-MSE weight min(SNR, gamma) in every parameterisation); ``snr``
        (the x_0-MSE weight SNR, i.e. uniform eps-MSE: the ELBO's weighting up to a constant).
      snr_gamma: gamma of ``min_snr``.
    """

    name: str = "simple"
    rescale_vlb: bool = True
    weighting: str = "none"
    snr_gamma: float = 5.0

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; expected one of {OBJECTIVES}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {self.weighting!r}; expected one of {WEIGHTINGS}")
        if not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive, got {self.snr_gamma}")


def _mse_weight(spec: DiffusionSpec, objective: Objective, schedule: Schedule, t) -> jax.Array:
    """Per-example weight [B] on the MSE of the mean prediction."""
    if objective.weighting == "none":
        return jnp.ones(t.shape, jnp.float32)
    snr = schedule.alphas_cumprod[t] / jnp.square(schedule.sqrt_one_minus_alphas_cumprod[t])
    # The weight w_x0 of an x_0 MSE, carried over to the MSE of the spec's mean part.
    w_x0 = jnp.minimum(snr, objective.snr_gamma) if objective.weighting == "min_snr" else snr
    return w_x0 / mse_ratio_to_x0(spec, snr)


def training_losses(
    spec: DiffusionSpec,
    objective: Objective,
    schedule: Schedule,
    output: jax.Array,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    noise: jax.Array,
) -> dict[str, jax.Array]:
    """Per-example losses of one training step (improved DDPM ``training_losses``).

    Args:
      spec: how to read ``output``.
      objective: which loss.
      schedule: the chain; ``t`` indexes it.
      output: denoiser output for (x_t, t): [B, ..., C or 2C].
      x0: [B, ..., C] data.
      x_t: [B, ..., C], ``q_sample(schedule, x0, t, noise)``.
      t: [B] int.
      noise: [B, ..., C] the eps that made x_t.

    Returns:
      dict of [B] arrays: ``loss`` (to be multiplied by importance weights and averaged),
      ``mse`` (unweighted MSE of the mean prediction; absent for ``vlb``), ``vb`` (the
      sampled VLB term in bits/dim, before its weight; absent for ``simple`` with a fixed
      variance).
    """
    chex.assert_equal_shape([x0, x_t, noise])
    terms: dict[str, jax.Array] = {}
    num_timesteps = schedule.num_timesteps
    if objective.name == "vlb":
        terms["vb"] = vb_terms_bpd(spec, schedule, output, x0, x_t, t)["vb"]
        terms["loss"] = terms["vb"] * (num_timesteps if objective.rescale_vlb else 1.0)
        return terms

    prediction, var_part = split_output(spec, output, x_t.shape)
    target = prediction_target(spec, schedule, x0, t, noise)
    terms["mse"] = mean_flat(jnp.square(target - prediction))
    terms["loss"] = _mse_weight(spec, objective, schedule, t) * terms["mse"]
    if var_part is not None or objective.name == "hybrid":
        if var_part is None:
            raise ValueError("the hybrid objective needs a learned variance (var_type learned or learned_range)")
        # The VLB term trains only the variance: the mean prediction is frozen in it.
        frozen = join_output(jax.lax.stop_gradient(prediction), var_part)
        terms["vb"] = vb_terms_bpd(spec, schedule, frozen, x0, x_t, t)["vb"]
        vb_weight = num_timesteps / 1000.0 if objective.rescale_vlb else 1.0
        terms["loss"] = terms["loss"] + vb_weight * terms["vb"]
    return terms
