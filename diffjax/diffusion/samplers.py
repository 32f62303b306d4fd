"""Samplers of the reverse process: DDPM ancestral and DDIM, as pure steps driven by one scan.

Every step has the signature

    step(spec, schedule, output, x_t, t, key, clip_denoised, *, noise=None) -> (x_{t-1}, pred_x0)

with ``output`` the denoiser's output for (x_t, t), ``x_t`` [B, ...], ``t`` int32 [B] an
index of ``schedule`` and ``key`` the step's PRNG key; ``noise`` [B, ...], when given, is
the step's standard normal draw in place of one drawn from ``key`` (e.g. to reproduce
another implementation's step from its noise; ``key`` may then be None). ``sample`` runs
any step from pure noise at the last index down to index 0 inside ``jax.lax.scan``: one
compiled program, whatever the number of steps. On a respaced schedule the denoiser is
called with ``schedule.timestep_map[t]``, the step of the process it was trained on.

References: DDPM Algorithm 2; DDIM (Song et al. 2021) eq. 12 and 16; classifier-free
guidance (Ho & Salimans 2021) eq. 6.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from diffjax.diffusion.gaussian import p_mean_variance
from diffjax.diffusion.guidance import classifier_guided_ddpm_step, classifier_x0_shift
from diffjax.diffusion.parameterization import DiffusionSpec, predict_eps_from_x0, read_output
from diffjax.diffusion.schedules import Schedule, at

__all__ = [
    "Denoiser",
    "classifier_free_guidance",
    "ddim_step",
    "ddpm_step",
    "sample",
]

Denoiser = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
"""``denoise(params, x_t, t, cond) -> output``: x_t [B, ...], t int32 [B] (original steps)."""


def _noise_unless_last(x: jax.Array, t: jax.Array) -> jax.Array:
    """[B, 1, ...] mask: 1 where t > 0; no noise is added on the final step to x_0."""
    return (t != 0).astype(x.dtype).reshape(t.shape + (1,) * (x.ndim - 1))


def _standard_normal_draw(key: jax.Array | None, noise: jax.Array | None, x_t: jax.Array) -> jax.Array:
    """A step's z ~ N(0, I) [B, ...]: ``noise`` when given, else drawn from ``key``."""
    if noise is None:
        if key is None:
            raise ValueError("a sampler step needs a PRNG key or its noise")
        return jax.random.normal(key, x_t.shape, x_t.dtype)
    chex.assert_equal_shape([noise, x_t])
    return noise


def ddpm_step(
    spec: DiffusionSpec, schedule: Schedule, output: jax.Array, x_t: jax.Array, t: jax.Array, key: jax.Array | None,
    clip_denoised: bool = True, *, noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Ancestral step x_{t-1} = mu_theta + exp(log Sigma_theta / 2) z (DDPM Algorithm 2).

    Uses the model's variance (fixed or learned, per ``spec``); no noise at t = 0. z is
    ``noise`` [B, ...] when given, else drawn from ``key``.

    Returns:
      (x_{t-1} [B, ...], pred_x0 [B, ...]).
    """
    out = p_mean_variance(spec, schedule, output, x_t, t, clip_denoised)
    z = _standard_normal_draw(key, noise, x_t)
    x_prev = out["mean"] + _noise_unless_last(x_t, t) * jnp.exp(0.5 * out["log_variance"]) * z
    return x_prev, out["pred_x0"]


def ddim_step(
    spec: DiffusionSpec, schedule: Schedule, output: jax.Array, x_t: jax.Array, t: jax.Array, key: jax.Array | None,
    clip_denoised: bool = True, eta: float | jax.Array = 0.0, *, noise: jax.Array | None = None,
    x0_shift: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """DDIM step (DDIM eq. 12), with sigma_t(eta) of eq. 16.

    x_{t-1} = sqrt(a_{t-1}) x0_hat + sqrt(1 - a_{t-1} - sigma^2) eps_hat + sigma z, with
    a = alpha_bar, sigma = eta sqrt((1 - a_{t-1})/(1 - a_t)) sqrt(1 - a_t/a_{t-1}) and
    eps_hat recomputed from the (clipped) x0_hat. eta = 0 is deterministic; eta = 1 has
    the DDPM posterior variance beta~_t. The model's own variance is not used. z is
    ``noise`` [B, ...] when given, else drawn from ``key``.

    Both coefficients are evaluated without cancellation. With 1 - a_t/a_{t-1} = beta_t
    (a_t = a_{t-1} alpha_t, also on a respaced chain) and r = (1 - a_{t-1})/(1 - a_t) =
    beta~_t/beta_t:

      sigma^2 = eta^2 r beta_t = eta^2 beta~_t,
      1 - a_{t-1} - sigma^2 = (1 - a_{t-1}) (1 - eta^2 beta_t/(1 - a_t))
                            = (1 - a_t) r ((1 - eta^2) + eta^2 alpha_t r),

    the last step because (1 - a_t) - beta_t = alpha_t (1 - a_{t-1}). For 0 <= eta <= 1
    both terms of the bracket are >= 0, so no subtraction of close numbers is left (in
    float32 the literal form is off by 6e-5 relative at eta = 1, t = T-1 on the cosine
    schedule, and by up to 5e-4 near t = 0, where 1 - a_{t-1} and 1 - a_t/a_{t-1}
    cancel). At eta = 1 the coefficient is (1 - a_{t-1}) sqrt(alpha_t / (1 - a_t)).
    Every factor is a float32 table computed from float64: beta~_t, beta_t, alpha_t and
    sqrt(1 - a_t).

    ``x0_shift`` [B, ...], when given, is added to the (clipped) x0_hat before eps_hat is
    recomputed from it: classifier guidance's Algorithm 2 (``guidance.classifier_x0_shift``;
    the shift after clipping, as guided_diffusion's ``condition_score``). The returned
    pred_x0 is the unguided one.

    Returns:
      (x_{t-1} [B, ...], pred_x0 [B, ...]).
    """
    prediction = read_output(spec, schedule, output, x_t, t, clip_denoised)
    x0, eps = prediction.x0, prediction.eps
    if x0_shift is not None:
        chex.assert_equal_shape([x0_shift, x_t])
        x0 = x0 + x0_shift
        eps = predict_eps_from_x0(schedule, x_t, t, x0)
    posterior_variance = at(schedule.posterior_variance, t, x_t.ndim)
    variance_ratio = posterior_variance / at(schedule.betas, t, x_t.ndim)  # r = (1 - a_{t-1})/(1 - a_t)
    eta_squared = jnp.square(eta)
    bracket = (1.0 - eta_squared) + eta_squared * at(schedule.alphas, t, x_t.ndim) * variance_ratio
    direction = at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * jnp.sqrt(
        jnp.maximum(variance_ratio * bracket, 0.0)  # < 0 only for eta > 1
    )
    sigma = eta * jnp.sqrt(posterior_variance)
    alpha_bar_prev = at(schedule.alphas_cumprod_prev, t, x_t.ndim)
    mean = jnp.sqrt(alpha_bar_prev) * x0 + direction * eps
    z = _standard_normal_draw(key, noise, x_t)
    x_prev = mean + _noise_unless_last(x_t, t) * sigma * z
    return x_prev, prediction.x0


STEPS = {"ddpm": ddpm_step, "ddim": ddim_step}


def sample(
    denoise: Denoiser,
    params: Any,
    schedule: Schedule,
    spec: DiffusionSpec,
    key: jax.Array,
    shape: tuple[int, ...],
    cond: Any = None,
    *,
    method: str = "ddpm",
    eta: float | jax.Array = 0.0,
    clip_denoised: bool = True,
    return_trajectory: bool = False,
    x_T: jax.Array | None = None,
    classifier_grad: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    classifier_scale: float | jax.Array = 0.0,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Draw samples by running the reverse chain of ``schedule`` from noise to data.

    Args:
      denoise: ``denoise(params, x_t, t, cond)``, called with original steps.
      params: the denoiser's parameters (EMA params, usually).
      schedule: the chain to run, full or respaced.
      spec: how to read the denoiser's output.
      key: PRNG key; the samples are a pure function of it.
      shape: [B, ...] of the samples.
      cond: passed to ``denoise`` unchanged at every step (e.g. labels [B]).
      method: ``ddpm`` (ancestral, the model's variance) or ``ddim`` (with ``eta``).
      eta: DDIM's eta; ignored by ``ddpm``.
      clip_denoised: clip x_0-hat to [-1, 1] at each step.
      return_trajectory: also return every x_t and x_0-hat.
      x_T: start from this [B, ...] instead of noise drawn from ``key``.
      classifier_grad: classifier guidance (Dhariwal & Nichol 2021):
        ``classifier_grad(x_t, t) -> [B, ...]``, grad_x log p_phi(y | x_t) at indices t [B]
        of ``schedule`` (e.g. ``noisy_classifier.chain_grad_fn``). ``ddpm`` shifts its mean by
        s Sigma grad (Algorithm 1, ``guidance.classifier_guided_ddpm_step``), ``ddim`` its
        eps by -s sqrt(1 - alpha_bar_t) grad (Algorithm 2, as an x0 shift of ``ddim_step``).
      classifier_scale: s, a float or a traced scalar.

    Returns:
      x_0 samples [B, ...]; with ``return_trajectory`` also a dict ``x`` [K, B, ...] (x_t
      before each step, index 0 = the start at the last step) and ``pred_x0`` [K, B, ...].
    """
    if method not in STEPS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(STEPS)}")
    step_fn = STEPS[method]
    if method == "ddim":
        step_fn = functools.partial(ddim_step, eta=eta)
    init_key, loop_key = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(init_key, shape, jnp.float32)
    chex.assert_shape(x_T, shape)
    batch_size = shape[0]

    def body(x, index):
        t = jnp.full((batch_size,), index, jnp.int32)
        output = denoise(params, x, schedule.timestep_map[t], cond)
        step_key = jax.random.fold_in(loop_key, index)
        if classifier_grad is None:
            x_prev, pred_x0 = step_fn(spec, schedule, output, x, t, step_key, clip_denoised)
        elif method == "ddpm":
            x_prev, pred_x0 = classifier_guided_ddpm_step(
                spec, schedule, output, x, t, step_key, classifier_grad(x, t), classifier_scale, clip_denoised
            )
        else:
            shift = classifier_x0_shift(schedule, t, classifier_grad(x, t), classifier_scale)
            x_prev, pred_x0 = step_fn(spec, schedule, output, x, t, step_key, clip_denoised, x0_shift=shift)
        return x_prev, (x, pred_x0) if return_trajectory else None

    indices = jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
    x0, trajectory = jax.lax.scan(body, x_T, indices)
    if return_trajectory:
        return x0, dict(x=trajectory[0], pred_x0=trajectory[1])
    return x0


def classifier_free_guidance(
    denoise: Denoiser, guidance_weight: float | jax.Array, null_cond: Any
) -> Denoiser:
    """Wrap a conditional denoiser into its guided version (Ho & Salimans 2021, eq. 6).

    eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null). The combination is applied to the mean
    prediction channels whatever the mean type: x_0 and v are affine functions of eps
    at a fixed (x_t, t) whose coefficients on eps-space do not depend on c, so combining
    them with weights (1 + w, -w), which sum to one, equals combining eps and converting.
    Learned-variance channels are taken from the conditional output. Both passes run as
    one batch of 2B.

    Args:
      denoise: the conditional denoiser.
      guidance_weight: w (0 = the plain conditional model).
      null_cond: the "no condition" value, a pytree shaped like the ``cond`` the wrapper
        will be called with (e.g. labels [B] all equal to the null class).

    Returns:
      ``guided(params, x_t, t, cond)``, shaped like ``denoise``.
    """

    def guided(params, x_t, t, cond):
        both = jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, null_cond)
        output = denoise(params, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both)
        conditional, unconditional = jnp.split(output, 2, axis=0)
        channels = x_t.shape[-1]
        guided_mean = (1.0 + guidance_weight) * conditional[..., :channels] - guidance_weight * unconditional[..., :channels]
        return jnp.concatenate([guided_mean, conditional[..., channels:]], axis=-1)

    return guided
