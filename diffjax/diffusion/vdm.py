"""Variational diffusion models (Kingma, Salimans, Poole & Ho 2021, "VDM"): schedules and the bound.

Conventions (VDM's): the noise schedule is gamma(t) = -lambda(t), minus the log-SNR, increasing
in t in [0, 1], and

    z_t = alpha_t x + sigma_t eps,   sigma_t^2 = sigmoid(gamma_t),   alpha_t^2 = sigmoid(-gamma_t),

so alpha_t^2 + sigma_t^2 = 1 and SNR(t) = alpha_t^2 / sigma_t^2 = exp(-gamma_t). VDM's CIFAR-10
ends are gamma(0) = -13.3, gamma(1) = 5 (``GAMMA_0``, ``GAMMA_1``).

The bound on the negative log-likelihood of 8-bit data x (VDM eq. 11, all terms per example):

    -log p(x) <= KL(q(z_1 | x) || N(0, I))  +  E_q(z_0|x)[-log p(x | z_0)]  +  L_T(x),

the prior, reconstruction and diffusion losses. ``vdm_loss`` estimates all three and their sum
(``total``) with one draw each; every term is in bits/dim (nats over D ln 2, D the number of
dimensions of one example), like the rest of diffjax.

* Diffusion loss, continuous time (eq. 17 in its eps form):
  L_inf = (1/2) E_{t ~ U(0,1), eps} [gamma'(t) ||eps - eps_hat(z_t; t)||^2].
* Diffusion loss with T steps (eq. 13/15 written for eps: SNR(s) - SNR(t) times
  ||x - x_hat||^2 = sigma_t^2/alpha_t^2 ||eps - eps_hat||^2 gives the weight
  SNR(s)/SNR(t) - 1 = expm1(gamma_t - gamma_s)):
  L_T = (T/2) E_{i ~ U{1..T}, eps} [expm1(gamma(t) - gamma(s)) ||eps - eps_hat(z_t; t)||^2],
  t = i/T, s = (i-1)/T. As T -> infinity, L_T -> L_inf (from above, at rate 1/T for a smooth
  integrand: tests/diffusion/test_vdm.py measures it).
* Prior loss KL(q(z_1|x) || N(0, I)) = (1/2) sum_i (sigma_1^2 + alpha_1^2 x_i^2 - 1 - log sigma_1^2)
  = (1/2) sum_i (alpha_1^2 (x_i^2 - 1) - log sigmoid(gamma_1)).
* Reconstruction loss -log p(x | z_0) with VDM's factorised decoder (appendix):
  p(x_i | z_0,i) proportional to q(z_0,i | x_i) = N(z_0,i; alpha_0 x_i, sigma_0^2), normalised
  over the 256 values x_i can take, i.e. a softmax over k of -(z_0,i / alpha_0 - v_k)^2 /
  (2 exp(gamma_0)) (dividing by alpha_0 leaves the noise variance sigma_0^2 / alpha_0^2 =
  exp(gamma_0)).

Times are drawn uniformly, i.i.d. or with VDM's low-discrepancy sampler
t_i = mod(u + i/B, 1), u ~ U(0, 1) (``sample_times(antithetic=True)``): every t_i is uniform,
so each term stays unbiased, and the batch covers [0, 1] evenly, which lowers the variance of
the batch mean.

Data scaling. diffjax keeps 8-bit data on the grid v_k = 2k/255 - 1 (k = 0..255, spacing
2/255, both ends +-1: ``grid="diffjax"``). VDM's code maps k to (2k + 1)/256 - 1, the centres of
256 equal bins of [-1, 1] (spacing 2/256, ends +-255/256: ``grid="vdm"``). The two are related by
x_vdm = (255/256) x_diffjax (``to_vdm_grid``). Each is an exact bound for data on its own grid
(the decoder normalises over that grid's 256 values), and the discrete likelihood of the 8-bit
image does not depend on the grid; the numbers differ slightly because a given gamma means a
different noise level relative to the spacing of the values (the grids differ by 0.4%). To
reproduce VDM's numbers, map x with ``to_vdm_grid`` and pass ``grid="vdm"``.

The learned schedules' parameters live in ``diffjax.models.noise_schedule`` (Flax); the
functions here take a schedule as any function ``gamma_fn(t)`` of a float array of any shape,
applied elementwise. ``with_variance_gradient`` implements VDM's variance minimisation (section
5.2): see its docstring.

Shapes: x, eps, eps_hat are [B, ...]; t and gamma values are [B]; losses are [B] bits/dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "GAMMA_0",
    "GAMMA_1",
    "GRIDS",
    "alpha_sigma",
    "bound_terms",
    "continuous_diffusion_loss",
    "decoder_log_probs",
    "diffuse",
    "discrete_diffusion_loss",
    "discretise_times",
    "fourier_features",
    "gamma_and_derivative",
    "gaussian_reconstruction_loss",
    "grid_values",
    "linear_gamma",
    "prior_loss",
    "reconstruction_loss",
    "rescale_to_endpoints",
    "sample_times",
    "to_vdm_grid",
    "vdm_loss",
    "with_variance_gradient",
]

GAMMA_0 = -13.3
"""VDM's gamma(0) on CIFAR-10 (SNR_max = e^13.3)."""
GAMMA_1 = 5.0
"""VDM's gamma(1) on CIFAR-10 (SNR_min = e^-5)."""
GRIDS = ("diffjax", "vdm")
NUM_VALUES = 256


# ----------------------------------------------------------------------------- schedules


def alpha_sigma(gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha, sigma) of gamma: alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma)."""
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def linear_gamma(t: jax.Array, gamma_0: Any = GAMMA_0, gamma_1: Any = GAMMA_1) -> jax.Array:
    """gamma(t) = gamma_0 + (gamma_1 - gamma_0) t, written (1 - t) gamma_0 + t gamma_1 so that both
    ends are exact in floating point. gamma_0 and gamma_1 may be traced (the learned linear
    schedule: ``models.noise_schedule.LinearSchedule``)."""
    return (1.0 - t) * gamma_0 + t * gamma_1


def rescale_to_endpoints(g_t: jax.Array, g_at_0: jax.Array, g_at_1: jax.Array, gamma_0: Any, gamma_1: Any) -> jax.Array:
    """VDM's rescaling of an increasing function g to a schedule with the given ends:

    s(t) = (g(t) - g(0)) / (g(1) - g(0)) in [0, 1],   gamma(t) = (1 - s) gamma_0 + s gamma_1.

    At t = 0, s = 0 exactly and gamma = gamma_0 exactly; at t = 1, s = 1 exactly (x/x = 1 in IEEE
    arithmetic) and gamma = gamma_1 exactly, whatever g's parameters are.
    """
    s = (g_t - g_at_0) / (g_at_1 - g_at_0)
    return linear_gamma(s, gamma_0, gamma_1)


def gamma_and_derivative(gamma_fn: Callable[[jax.Array], jax.Array], t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(gamma(t), dgamma/dt) by one forward-mode pass (``jax.jvp`` with a tangent of ones).

    ``gamma_fn`` must act elementwise (each output depends on its own t only), as every
    schedule here does; then the jvp with ones is the derivative at each t.
    """
    return jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))


def sample_times(key: jax.Array, batch_size: int, antithetic: bool = True, dtype=None) -> jax.Array:
    """[B] times in [0, 1): i.i.d. uniform, or VDM's low-discrepancy t_i = mod(u + i/B, 1)."""
    dtype = dtype or jnp.zeros(()).dtype
    if not antithetic:
        return jax.random.uniform(key, (batch_size,), dtype)
    u = jax.random.uniform(key, (), dtype)
    return jnp.mod(u + jnp.arange(batch_size, dtype=dtype) / batch_size, 1.0)


def discretise_times(t: jax.Array, num_steps: int) -> jax.Array:
    """t in [0, 1) -> the step ends i/T with i = ceil(t T) in {1, ..., T} (t = 0 goes to 1/T), so a
    uniform t gives a uniform step index."""
    return jnp.maximum(jnp.ceil(t * num_steps), 1.0) / num_steps


# ----------------------------------------------------------------------------- losses


def _expand(per_example: jax.Array, ndim: int) -> jax.Array:
    return jnp.reshape(per_example, per_example.shape + (1,) * (ndim - per_example.ndim))


def _bits_per_dim(nats_per_example: jax.Array, x: jax.Array) -> jax.Array:
    return nats_per_example / (math.prod(x.shape[1:]) * math.log(2.0))


def _sum_flat(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def diffuse(x: jax.Array, gamma: jax.Array, eps: jax.Array) -> jax.Array:
    """z = alpha x + sigma eps for per-example gamma [B] (or a scalar) and x, eps [B, ...]."""
    alpha, sigma = alpha_sigma(jnp.asarray(gamma))
    return _expand(alpha, x.ndim) * x + _expand(sigma, x.ndim) * eps


def continuous_diffusion_loss(eps: jax.Array, eps_hat: jax.Array, dgamma_dt: jax.Array) -> jax.Array:
    """One-sample estimate of L_inf per example, (1/2) gamma'(t) ||eps - eps_hat||^2, in bits/dim.

    Args:
      eps: [B, ...] the noise that made z_t.
      eps_hat: [B, ...] the network's prediction at (z_t, t).
      dgamma_dt: [B] gamma'(t).
    """
    chex.assert_equal_shape([eps, eps_hat])
    return _bits_per_dim(0.5 * dgamma_dt * _sum_flat(jnp.square(eps - eps_hat)), eps)


def discrete_diffusion_loss(
    eps: jax.Array, eps_hat: jax.Array, gamma_t: jax.Array, gamma_s: jax.Array, num_steps: int
) -> jax.Array:
    """One-sample estimate of L_T per example, (T/2) expm1(gamma_t - gamma_s) ||eps - eps_hat||^2,
    in bits/dim, for t = i/T drawn uniformly from {1/T, ..., 1} and s = t - 1/T.

    Args:
      eps, eps_hat: [B, ...].
      gamma_t, gamma_s: [B] gamma(t) and gamma(t - 1/T).
      num_steps: T.
    """
    chex.assert_equal_shape([eps, eps_hat])
    weight = 0.5 * num_steps * jnp.expm1(gamma_t - gamma_s)
    return _bits_per_dim(weight * _sum_flat(jnp.square(eps - eps_hat)), eps)


def prior_loss(x: jax.Array, gamma_1: jax.Array) -> jax.Array:
    """KL(q(z_1 | x) || N(0, I)) per example in bits/dim; gamma_1 a scalar or [B]."""
    gamma_1 = _expand(jnp.asarray(gamma_1), x.ndim)
    alpha_sq = jax.nn.sigmoid(-gamma_1)
    kl = 0.5 * (alpha_sq * (jnp.square(x) - 1.0) - jax.nn.log_sigmoid(gamma_1))
    return _bits_per_dim(_sum_flat(kl), x)


def grid_values(grid: str = "diffjax", dtype=None) -> jax.Array:
    """The 256 values of 8-bit data on ``grid``: 2k/255 - 1 (diffjax) or (2k + 1)/256 - 1 (VDM)."""
    k = jnp.arange(NUM_VALUES, dtype=dtype or jnp.zeros(()).dtype)
    if grid == "diffjax":
        return 2.0 * k / 255.0 - 1.0
    if grid == "vdm":
        return (2.0 * k + 1.0) / 256.0 - 1.0
    raise ValueError(f"unknown grid {grid!r}; expected one of {GRIDS}")


def _grid_index(x: jax.Array, grid: str) -> jax.Array:
    """The k with grid_values(grid)[k] = x (x on the grid)."""
    k = jnp.round((x + 1.0) * 127.5) if grid == "diffjax" else jnp.round((x + 1.0) * 128.0 - 0.5)
    return jnp.clip(k, 0, NUM_VALUES - 1).astype(jnp.int32)


def to_vdm_grid(x: jax.Array) -> jax.Array:
    """diffjax's 8-bit grid 2k/255 - 1 to VDM's (2k + 1)/256 - 1: x * 255/256."""
    return x * (255.0 / 256.0)


def decoder_log_probs(z_0: jax.Array, gamma_0: jax.Array, grid: str = "diffjax") -> jax.Array:
    """log p(x_i = v_k | z_0,i) for all 256 values v_k: [B, ..., 256] (VDM's factorised decoder)."""
    gamma_0 = _expand(jnp.asarray(gamma_0), z_0.ndim)
    alpha_0, _ = alpha_sigma(gamma_0)
    values = grid_values(grid, z_0.dtype)
    logits = -0.5 * jnp.square(z_0[..., None] / alpha_0[..., None] - values) * jnp.exp(-gamma_0)[..., None]
    return jax.nn.log_softmax(logits, axis=-1)


def reconstruction_loss(x: jax.Array, z_0: jax.Array, gamma_0: jax.Array, grid: str = "diffjax") -> jax.Array:
    """-log p(x | z_0) per example in bits/dim, x [B, ...] on ``grid``, z_0 ~ q(z_0 | x) [B, ...]."""
    chex.assert_equal_shape([x, z_0])
    log_probs = decoder_log_probs(z_0, gamma_0, grid)
    picked = jnp.take_along_axis(log_probs, _grid_index(x, grid)[..., None], axis=-1)[..., 0]
    return _bits_per_dim(-_sum_flat(picked), x)


def gaussian_reconstruction_loss(x: jax.Array, z_0: jax.Array, gamma_0: jax.Array) -> jax.Array:
    """-log p(x | z_0) per example in bits/dim for continuous data (a density, may be negative):
    the Gaussian decoder p(x | z_0) = N(x; z_0 / alpha_0, exp(gamma_0)) (the noise variance of
    z_0 / alpha_0 is sigma_0^2 / alpha_0^2 = exp(gamma_0)). x, z_0 [B, ...]; gamma_0 scalar."""
    chex.assert_equal_shape([x, z_0])
    gamma_0 = jnp.asarray(gamma_0, x.dtype)
    mean = z_0 * jnp.exp(0.5 * jax.nn.softplus(gamma_0))  # z_0 / alpha_0, alpha_0^2 = sigmoid(-gamma_0)
    nats = 0.5 * (jnp.square(x - mean) * jnp.exp(-gamma_0) + gamma_0 + math.log(2.0 * math.pi))
    return _bits_per_dim(_sum_flat(nats), x)


def bound_terms(diffusion: jax.Array, x: jax.Array, ends: jax.Array, eps_0: jax.Array, *, grid: str = "diffjax",
                discrete_data: bool = True) -> dict[str, jax.Array]:
    """VDM's bound (eq. 11: prior + reconstruction + diffusion) per example, in bits/dim, from its
    diffusion term: the one assembly of the bound, used by training (``continuous.ContinuousDiffusion``)
    and by evaluation (``vdm_loss``).

    Args:
      diffusion: [B] the diffusion loss (L_inf or L_T) in bits/dim.
      x: [B, ...] the data (8-bit values on ``grid`` when ``discrete_data``).
      ends: [2] gamma(0), gamma(1).
      eps_0: [B, ...] standard normal: z_0 = diffuse(x, gamma_0, eps_0).
      discrete_data: the 8-bit decoder (``reconstruction_loss``), else the Gaussian decoder's density
        (``gaussian_reconstruction_loss``; the bound is then on a density and may be negative).

    Returns:
      dict of [B]: ``diffusion``, ``prior``, ``reconstruction`` and ``total`` (their sum).
    """
    gamma_0, gamma_1 = ends[0], ends[1]
    prior = prior_loss(x, gamma_1)
    z_0 = diffuse(x, gamma_0, eps_0)
    if discrete_data:
        reconstruction = reconstruction_loss(x, z_0, gamma_0, grid)
    else:
        reconstruction = gaussian_reconstruction_loss(x, z_0, gamma_0)
    return dict(diffusion=diffusion, prior=prior, reconstruction=reconstruction,
                total=diffusion + prior + reconstruction)


def vdm_loss(
    eps_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    gamma_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    key: jax.Array | None,
    *,
    num_steps: int | None = None,
    antithetic: bool = True,
    grid: str = "diffjax",
    t: jax.Array | None = None,
    eps: jax.Array | None = None,
    eps_0: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """The VDM bound per example, in bits/dim, with one draw of t, eps and z_0 per example.

    Args:
      eps_fn: ``eps_fn(z_t, t, gamma_t) -> eps_hat`` ([B, ...], [B], [B] -> [B, ...]); parameters
        are closed over (VDM's network is conditioned on gamma_t; either input may be ignored).
      gamma_fn: the schedule, elementwise on any shape (``linear_gamma`` with fixed ends, or a
        ``models.noise_schedule`` module's ``apply`` with its parameters bound).
      x: [B, ...] 8-bit data on ``grid``.
      key: split into (times, eps, eps_0) keys; may be None when t, eps and eps_0 are given.
      num_steps: T for L_T, or None for L_inf.
      antithetic: VDM's low-discrepancy times (else i.i.d.).
      grid: "diffjax" (2k/255 - 1) or "vdm" ((2k + 1)/256 - 1), see the module docstring.
      t, eps, eps_0: optional draws in place of the key's: t [B] in [0, 1) (discretised when
        ``num_steps`` is set), eps and eps_0 [B, ...] standard normal.

    Returns:
      dict of [B] bits/dim: ``diffusion`` (L_inf or L_T), ``prior``, ``reconstruction`` and
      ``total`` (their sum, the bound on -log2 p(x) / D).
    """
    batch_size = x.shape[0]
    if key is not None:
        key_t, key_eps, key_0 = jax.random.split(key, 3)
        t = sample_times(key_t, batch_size, antithetic, x.dtype) if t is None else t
        eps = jax.random.normal(key_eps, x.shape, x.dtype) if eps is None else eps
        eps_0 = jax.random.normal(key_0, x.shape, x.dtype) if eps_0 is None else eps_0
    elif t is None or eps is None or eps_0 is None:
        raise ValueError("vdm_loss needs a key or all of t, eps and eps_0")
    chex.assert_shape(t, (batch_size,))
    chex.assert_equal_shape([x, eps, eps_0])

    if num_steps is None:
        gamma_t, dgamma_dt = gamma_and_derivative(gamma_fn, t)
    else:
        t = discretise_times(t, num_steps)
        gamma_t, gamma_s = gamma_fn(t), gamma_fn(t - 1.0 / num_steps)
    eps_hat = eps_fn(diffuse(x, gamma_t, eps), t, gamma_t)
    if num_steps is None:
        diffusion = continuous_diffusion_loss(eps, eps_hat, dgamma_dt)
    else:
        diffusion = discrete_diffusion_loss(eps, eps_hat, gamma_t, gamma_s, num_steps)

    return bound_terms(diffusion, x, gamma_fn(jnp.array([0.0, 1.0], x.dtype)), eps_0, grid=grid)


# ----------------------------------------------------------------------------- network inputs


def fourier_features(z: jax.Array, n_min: int = 7, n_max: int = 8, include_input: bool = True) -> jax.Array:
    """VDM's Fourier features of the network input (appendix): sin(2^n pi z) and cos(2^n pi z) for
    n = n_min, ..., n_max, per channel, concatenated on the last axis after z itself.

    VDM uses n in {7, 8} on z_t scaled like the data in [-1, 1]: with a value spacing of about
    2/256, 2^7 pi z moves by about pi between neighbouring 8-bit values, so these features resolve
    the fine (least significant bit) detail a plain network input smooths over.

    Args:
      z: [..., C].
      n_min, n_max: the range of n (inclusive).
      include_input: put z itself first (VDM's network input); else only the features.

    Returns:
      [..., C (1 + 2 N)] with include_input, else [..., 2 N C], N = n_max - n_min + 1; the order
      is [z, sin (n = n_min .. n_max, each C channels), cos (same)].
    """
    if n_max < n_min:
        raise ValueError(f"n_max ({n_max}) < n_min ({n_min})")
    freqs = math.pi * 2.0 ** jnp.arange(n_min, n_max + 1, dtype=z.dtype)  # [N]
    angles = z[..., None, :] * freqs[:, None]  # [..., N, C]
    shape = z.shape[:-1] + (-1,)
    features = [jnp.sin(angles).reshape(shape), jnp.cos(angles).reshape(shape)]
    return jnp.concatenate(([z] if include_input else []) + features, axis=-1)


# ----------------------------------------------------------------------------- variance minimisation


def with_variance_gradient(loss_fn: Callable[[Any, Any], jax.Array]) -> Callable[[Any, Any], jax.Array]:
    """VDM's variance minimisation of the schedule (section 5.2), in one backward pass.

    VDM learns the schedule's ends by the bound (the continuous diffusion loss depends on the
    schedule only through gamma(0) and gamma(1)) and the shape of the schedule between them by
    minimising the variance of the loss estimate: with the ends fixed, E[L] does not depend on the
    shape's parameters eta, so grad_eta Var[L] = grad_eta E[L^2] = E[2 L grad_eta L], and the
    per-example L and grad_eta L are by-products of the ordinary backward pass.

    Given ``loss_fn(schedule_values, args) -> L`` [B] (per-example losses), this returns ``f`` with
    the same value whose gradient is:

    * w.r.t. ``args`` (e.g. the denoiser's parameters, the ends gamma_0 and gamma_1): that of L;
    * w.r.t. ``schedule_values`` (a pytree of arrays with leading axis B, e.g. the normalised
      shape s(t) and its derivative s'(t) of ``rescale_to_endpoints`` at each example's t, through
      which the shape parameters enter): that of L^2, i.e. per example 2 L_i dL_i/d(values_i).

    So ``jax.grad(lambda p: jnp.mean(f(values(p), args(p))))`` gives the denoiser and the ends the
    gradient of the mean loss (the bound) and the shape parameters the gradient of the mean of
    L^2, the variance gradient, from one forward and one backward pass of the denoiser.
    Implemented as a ``jax.custom_vjp`` whose backward pass calls the VJP of ``loss_fn`` once and
    scales the cotangent of ``schedule_values`` by 2 L per example, which is exact because
    example i's values enter only L_i. Everything the gradient should flow through must be in
    ``schedule_values`` or ``args``; ``loss_fn`` may close over constants (data, noise, times).
    Use the diffusion loss in nats or bits/dim consistently: the scale of L scales the gradient.
    """

    @jax.custom_vjp
    def f(schedule_values, args):
        return loss_fn(schedule_values, args)

    def forward(schedule_values, args):
        loss, vjp = jax.vjp(loss_fn, schedule_values, args)
        return loss, (loss, vjp)

    def backward(residuals, cotangent):
        loss, vjp = residuals
        d_values, d_args = vjp(cotangent)
        scale = 2.0 * loss
        d_values = jax.tree_util.tree_map(lambda g: g * _expand(scale, g.ndim).astype(g.dtype), d_values)
        return d_values, d_args

    f.defvjp(forward, backward)
    return f
