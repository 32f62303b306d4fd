"""Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2) for the discrete chain and
for every continuous-time solver.

A classifier p_phi(y | x_t, t) of noisy data tilts the sampler toward class y. Its gradient
g = grad_{x_t} log p_phi(y | x_t, t) (``classifier_gradient``) enters in one of two ways:

* Algorithm 1 (the ancestral step of the discrete chain): the reverse step's mean is moved
  by its covariance times the gradient, x_{t-1} ~ N(mu + s Sigma g, Sigma)
  (``classifier_guided_mean``, ``classifier_guided_ddpm_step``).
* Algorithm 2 (any sampler driven by a noise prediction): eps~ = eps_hat - s sigma_t g.
  Since grad log p_t(x_t) = -eps_hat / sigma_t, this is the score shift

      grad log p_t(x_t) + s grad log p_phi(y | x_t),

  which for s = 1 and the exact classifier is grad log p_t(x_t | y) (Bayes: log p(x | y) =
  log p(x) + log p(y | x) - log p(y), the last term constant in x). The solvers of
  ``diffjax.diffusion.solvers`` read a data prediction, so ``classifier_guided_x0`` writes
  the shift on it (derivation in its docstring).

For s != 1 the shifted score is the score of p_t(x) p_t(y | x)^s, but these densities are not
the noised versions of one distribution (noising does not commute with raising p(y | x) to a
power), so the sampler does not draw the tilted density p(x) p(y | x)^s / Z. tests/diffusion/test_guidance.py
measures the gap on a 2-D two-class mixture: at s = 3 the class mean overshoots the tilted
one by 0.4-0.56 away from the other class and the spread along that axis is 2-3 times smaller.

Every function here is pure and jit-able; ``scale`` may be a traced jnp scalar, so one
compiled sampler serves every guidance scale.

References: Dhariwal & Nichol 2021 ("Diffusion models beat GANs on image synthesis"),
section 4, Algorithms 1 and 2; Song et al. 2021 (score_sde) section 5 and appendix I
(conditional sampling with the score of a classifier); Ho & Salimans 2021 (classifier-free
guidance) eq. 6, in ``samplers.classifier_free_guidance``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.diffusion.gaussian import p_mean_variance
from diffjax.diffusion.parameterization import DiffusionSpec
from diffjax.diffusion.processes import NoiseProcess, expand_to_rank
from diffjax.diffusion.schedules import Schedule
from diffjax.diffusion.solvers.core import X0Fn

__all__ = [
    "GradFn",
    "LogProbFn",
    "classifier_grad_fn",
    "classifier_gradient",
    "classifier_guided_ddpm_step",
    "classifier_guided_mean",
    "classifier_guided_x0",
    "classifier_x0_shift",
]

LogProbFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
"""``log_prob_fn(params, x_t, t, labels) -> [B]``: log p_phi(y_i | x_t,i, t) per example."""

GradFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``grad_fn(x, t) -> [B, ...]``: grad_x log p(y | x, t), x [B, ...], t a scalar time."""


def classifier_gradient(log_prob_fn: LogProbFn, params: Any, x_t: jax.Array, t: jax.Array, labels: Any) -> jax.Array:
    """grad_{x_t} log p_phi(y | x_t, t) per example, [B, ...] like ``x_t``.

    The gradient of sum_i log p_phi(y_i | x_t,i, t) (one ``jax.grad``, as guided_diffusion's
    ``cond_fn`` does): example i's log-probability depends on x_t,i alone, so the gradient of
    the sum in x_t,i is that example's gradient. (A classifier that mixes examples, e.g. batch
    statistics in training mode, breaks this; call it in inference mode.)

    Args:
      log_prob_fn: ``log_prob_fn(params, x_t, t, labels) -> [B]`` log-probabilities of the
        labels (e.g. ``log_softmax(logits)[i, labels[i]]``).
      params: the classifier's parameters (no gradient is taken in them).
      x_t: [B, ...] noisy data.
      t: the time or step as ``log_prob_fn`` takes it (e.g. int32 [B], or a scalar).
      labels: the target classes, passed through (e.g. int32 [B]).

    Returns:
      [B, ...], the dtype of ``x_t``.
    """

    def total_log_prob(x):
        log_probs = log_prob_fn(params, x, t, labels)
        if log_probs.shape != x.shape[:1]:
            raise ValueError(f"log_prob_fn must return [B] = {x.shape[:1]}, got {log_probs.shape}")
        return jnp.sum(log_probs)

    return jax.grad(total_log_prob)(x_t).astype(x_t.dtype)


def classifier_grad_fn(log_prob_fn: LogProbFn, params: Any, labels: Any) -> GradFn:
    """``grad_fn(x, t)`` for ``classifier_guided_x0``: ``classifier_gradient`` at the scalar time
    t broadcast to [B] (the classifier is called with ``t`` as the solver gives it, e.g. a
    continuous time; wrap ``log_prob_fn`` to map it to the steps a classifier was trained on)."""

    def grad_fn(x, t):
        t_batch = jnp.full((x.shape[0],), t, dtype=jnp.asarray(t).dtype)
        return classifier_gradient(log_prob_fn, params, x, t_batch, labels)

    return grad_fn


def classifier_guided_x0(denoise_x0: X0Fn, grad_fn: GradFn, scale, process: NoiseProcess) -> X0Fn:
    """Algorithm 2's guidance on a data prediction, for any solver of ``solvers.SOLVERS``.

    For x_t = alpha_t x_0 + sigma_t eps the data and noise predictions are tied by
    x0_hat = (x_t - sigma_t eps_hat) / alpha_t. Algorithm 2 replaces eps_hat by
    eps~ = eps_hat - s sigma_t g, g = grad_{x_t} log p(y | x_t); substituting,

        x0~ = (x_t - sigma_t eps_hat + s sigma_t^2 g) / alpha_t
            = x0_hat + s (sigma_t^2 / alpha_t) g.

    Equivalently, by Tweedie's formula x0 = (x_t + sigma_t^2 grad log p_t(x_t)) / alpha_t,
    which is affine in the score with slope sigma_t^2 / alpha_t: the shift is the score shift
    grad log p_t(x_t) -> grad log p_t(x_t) + s g, for any Gaussian process (VP, VE: alpha = 1,
    or a discrete chain's ``DiscreteVP``). With s = 1 and the exact p(y | x_t) it is the
    exact conditional data prediction E[x_0 | x_t, y].

    The coefficient is computed as exp(2 log sigma_t - log alpha_t) (no overflow of
    sigma^2 / alpha where alpha is tiny, e.g. VPCosine at t_max: ~ 119).

    Args:
      denoise_x0: the unguided data prediction ``denoise_x0(x, t)`` (e.g. ``x0_predictor``).
      grad_fn: ``grad_fn(x, t) -> [B, ...]`` the classifier's gradient at (x, t) (e.g.
        ``classifier_grad_fn``).
      scale: s, a Python float or a (traced) jnp scalar; 0 leaves ``denoise_x0`` unchanged.
      process: the noise process the solver runs on.

    Returns:
      ``guided(x, t) -> x0~`` [B, ...], shaped and typed like x.
    """

    def guided(x, t):
        x0 = denoise_x0(x, t)
        coefficient = jnp.exp(2.0 * process.log_sigma(t) - process.log_alpha(t))
        shift = (scale * coefficient) * grad_fn(x, t)
        return (x0 + shift).astype(x.dtype)

    return guided


def classifier_x0_shift(schedule: Schedule, t: jax.Array, grad: jax.Array, scale) -> jax.Array:
    """Algorithm 2 on a discrete chain as a shift of the data prediction: s (1 - alpha_bar_t) /
    sqrt(alpha_bar_t) grad (``classifier_guided_x0``'s s sigma^2 / alpha g with alpha^2 =
    alpha_bar_t), [B, ...], for ``samplers.ddim_step(x0_shift=)``.

    Args:
      schedule: the (respaced) chain.
      t: int32 [B] its indices.
      grad: [B, ...] the classifier's gradient at x_t.
      scale: s, a float or a traced scalar.
    """
    coefficient = jnp.square(schedule.sqrt_one_minus_alphas_cumprod[t]) / schedule.sqrt_alphas_cumprod[t]
    return (scale * expand_to_rank(coefficient, grad.ndim) * grad).astype(grad.dtype)


def classifier_guided_mean(mean: jax.Array, variance: jax.Array, grad: jax.Array, scale) -> jax.Array:
    """Algorithm 1's guided mean of an ancestral step: mu + s Sigma grad log p(y | x_t).

    Args:
      mean: [B, ...] the reverse step's mean mu.
      variance: its (diagonal) variance Sigma: [B, ...], [B, 1, ..., 1] (a fixed variance, as
        ``p_mean_variance`` returns it), [B] (broadcast over each example) or a scalar.
      grad: [B, ...] the classifier's gradient at x_t (``classifier_gradient``).
      scale: s, a Python float or a (traced) jnp scalar.

    Returns:
      [B, ...], the dtype of ``mean``.
    """
    variance = expand_to_rank(jnp.asarray(variance), mean.ndim)
    return (mean + scale * variance * grad).astype(mean.dtype)


def classifier_guided_ddpm_step(
    spec: DiffusionSpec, schedule: Schedule, output: jax.Array, x_t: jax.Array, t: jax.Array, key: jax.Array | None,
    grad: jax.Array, scale, clip_denoised: bool = True, *, noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``samplers.ddpm_step`` with Algorithm 1's guidance: x_{t-1} ~ N(mu + s Sigma g, Sigma).

    mu and Sigma are the step's ``p_mean_variance`` (the model's fixed or learned variance;
    on a fixed-small chain at t = 0 the clipped beta~_1 that ``p_mean_variance`` reports, where
    guided_diffusion's ``condition_mean`` reads its unclipped fixed-small variance, 0 at t = 0:
    the two differ by s beta~_1 g in the last step's mean); g [B, ...] is the classifier's gradient at
    (x_t, t) (``classifier_gradient``). No noise at t = 0. z is ``noise`` when given, else
    drawn from ``key``.

    Returns:
      (x_{t-1} [B, ...], pred_x0 [B, ...]: the unguided prediction).
    """
    out = p_mean_variance(spec, schedule, output, x_t, t, clip_denoised)
    mean = classifier_guided_mean(out["mean"], out["variance"], grad, scale)
    if noise is None:
        if key is None:
            raise ValueError("a sampler step needs a PRNG key or its noise")
        noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    nonzero = expand_to_rank((t != 0).astype(x_t.dtype), x_t.ndim)
    x_prev = mean + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise
    return x_prev.astype(x_t.dtype), out["pred_x0"]
