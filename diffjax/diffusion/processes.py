"""Noise processes in continuous time t in [0, 1]: alpha_t, sigma_t, the log-SNR and its inverse.

A noise process says how data is noised at time t,

    x_t = alpha_t x_0 + sigma_t eps,    eps ~ N(0, I),

and every process here gives, for t (any shape, float32 unless given float64 under
``jax.enable_x64``):

* ``log_alpha(t)``, ``log_sigma(t)``, ``alpha(t)``, ``sigma(t)``;
* ``log_snr(t)`` = lambda_t = log(alpha_t^2 / sigma_t^2), strictly decreasing in t;
* ``t_from_log_snr(lam)``, its inverse (DPM-Solver's ``inverse_lambda``);
* ``edm_sigma(t)`` = sigma_t / alpha_t = exp(-lambda_t / 2), the noise level of EDM's
  scaled variable x_t / alpha_t (Karras et al. 2022, eq. 4 with s(t) = alpha_t), and
  ``t_from_edm_sigma``;
* ``t_min``, ``t_max``: static floats, the default ends of a time grid (where a solver starts,
  ``t_max``, and where its last step lands, ``t_min``).

Processes are frozen Flax dataclasses (pytrees): their constants are static fields, the
discrete process's tables are leaves, so a process can be passed through ``jit`` and ``vmap``.
Every formula is written in a form that keeps float32 precision at both ends (``expm1``,
``softplus``, products of sines instead of differences of cosines).

The processes:

* ``VPLinear``: score_sde's VP SDE, beta(t) = beta_min + t (beta_max - beta_min), so
  log alpha_t = -(1/2) int_0^t beta = -t^2 (beta_max - beta_min)/4 - t beta_min/2 and
  sigma_t^2 = 1 - alpha_t^2. Default ends [1e-3, 1] (score_sde's and DPM-Solver's eps = 1e-3:
  at t = 0 sigma = 0 and lambda = +inf).
* ``VPCosine``: improved DDPM's alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t + s)/(1 + s)) pi/2),
  here alpha_t = sqrt(alpha_bar(t)). At t = 1 alpha = 0 and lambda = -inf; beta(t) =
  pi tan(theta_t)/(1 + s) blows up there, so, as DPM-Solver's ``NoiseScheduleVP('cosine')``
  does, a grid starts at t_max = 0.9946 (lambda ~ -9.56, alpha ~ 0.0084), not at 1. The
  functions themselves are defined on all of [0, 1] (alpha(1) = 0 exactly).
* ``EDM``: variance exploding (alpha = 1) with a log-linear map t <-> sigma,
  sigma(t) = sigma_min (sigma_max / sigma_min)^t, i.e. score_sde's VE SDE; sigma_min = 0.002,
  sigma_max = 80 (EDM's Table 1). Ends [0, 1]: sigma(0) = sigma_min, sigma(1) = sigma_max.
  EDM's own time is sigma itself; ``edm_sigma`` / ``t_from_edm_sigma`` convert.
* ``DiscreteVP``: a discrete ``Schedule`` seen as a continuous process (see ``discrete_process``).

The discrete convention (DPM-Solver's ``NoiseScheduleVP('discrete')``, Lu et al. 2022,
appendix): the step n of a T-step chain (index n in [0, T), alpha_bar_n = prod_{m<=n} (1 -
beta_m), the paper's step n + 1) sits at time t_n = (n + 1)/T, so the chain covers
[1/T, 1]; log alpha_t = (1/2) log alpha_bar is piecewise linear in t between the knots t_n
and extrapolated linearly from the first (last) segment outside them (below the first knot
capped at log alpha = 0, where sigma = 0). Hence alpha_bar is
reproduced exactly on the knots, and the network, trained on integer steps n, is given
``model_timestep(t)`` = T t - 1 (fractional between knots, the trained integer on them;
``model_step(t)`` rounds it). A respaced schedule keeps its original steps: its knots are
(timestep_map[k] + 1)/T_original (non-uniform), so it also returns the original integer
steps the network was trained with. The grid ends are [1/T, 1] for a full chain: 1 is the
noisiest step T - 1, and 1/T is step 0, the least noisy step the network was trained on:
the last step of a solver lands there, beyond it log alpha is only extrapolated.

References: Song et al. 2021 (score_sde) eqs. 11, 29 and appendix B; Nichol & Dhariwal 2021
eq. 17; Karras et al. 2022 (EDM) Table 1; Lu et al. 2022 (DPM-Solver) section 3.4 and
appendix.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffjax.diffusion.schedules import Schedule

__all__ = [
    "DiscreteVP",
    "EDM",
    "NoiseProcess",
    "PROCESSES",
    "VPCosine",
    "VPLinear",
    "discrete_process",
    "expand_to_rank",
    "named_process",
]


def _as_float(t) -> jax.Array:
    """``t`` as a float array: its own float dtype, float32 for Python numbers and ints."""
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.float32)


def _log_sigma_vp(log_alpha: jax.Array) -> jax.Array:
    """log sigma = (1/2) log(1 - alpha^2) of a variance-preserving process, from log alpha."""
    return 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))


def expand_to_rank(coefficient: jax.Array, ndim: int) -> jax.Array:
    """A per-example coefficient [B] shaped [B, 1, ..., 1] to multiply a rank-``ndim`` batch."""
    return jnp.reshape(coefficient, jnp.shape(coefficient) + (1,) * (ndim - jnp.ndim(coefficient)))


class NoiseProcess:
    """What every noise process provides; subclasses define ``log_alpha``, ``log_sigma`` and
    ``t_from_log_snr`` and the static fields ``t_min`` and ``t_max``."""

    t_min: float
    t_max: float

    def log_alpha(self, t) -> jax.Array:
        """log alpha_t, shaped like t."""
        raise NotImplementedError

    def log_sigma(self, t) -> jax.Array:
        """log sigma_t, shaped like t."""
        raise NotImplementedError

    def t_from_log_snr(self, lam) -> jax.Array:
        """The t with log_snr(t) = lam, shaped like lam."""
        raise NotImplementedError

    def alpha(self, t) -> jax.Array:
        """alpha_t, the scale of x_0 in x_t."""
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t) -> jax.Array:
        """sigma_t, the scale of eps in x_t."""
        return jnp.exp(self.log_sigma(t))

    def log_snr(self, t) -> jax.Array:
        """lambda_t = log(alpha_t^2 / sigma_t^2), strictly decreasing in t."""
        return 2.0 * (self.log_alpha(t) - self.log_sigma(t))

    def edm_sigma(self, t) -> jax.Array:
        """EDM's noise level sigma_t / alpha_t = exp(-lambda_t / 2)."""
        return jnp.exp(self.log_sigma(t) - self.log_alpha(t))

    def t_from_edm_sigma(self, edm_sigma) -> jax.Array:
        """The t whose ``edm_sigma`` is ``edm_sigma``."""
        return self.t_from_log_snr(-2.0 * jnp.log(_as_float(edm_sigma)))

    def alpha_sigma(self, t, ndim: int | None = None) -> tuple[jax.Array, jax.Array]:
        """(alpha_t, sigma_t); with ``ndim``, t [B] gives both as [B, 1, ..., 1] for a rank-ndim batch."""
        alpha, sigma = self.alpha(t), self.sigma(t)
        if ndim is None:
            return alpha, sigma
        return expand_to_rank(alpha, ndim), expand_to_rank(sigma, ndim)


@struct.dataclass
class VPLinear(NoiseProcess):
    """score_sde's VP SDE with beta(t) = beta_min + t (beta_max - beta_min).

    log alpha_t = -t^2 (beta_max - beta_min)/4 - t beta_min/2, sigma_t^2 = 1 - alpha_t^2.
    The inverse: with u = softplus(-lambda) = -2 log alpha, t solves
    (beta_max - beta_min) t^2/2 + beta_min t = u, i.e.
    t = 2u / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) u)).
    """

    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    t_max: float = struct.field(pytree_node=False, default=1.0)

    def log_alpha(self, t):
        t = _as_float(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def log_sigma(self, t):
        return _log_sigma_vp(self.log_alpha(t))

    def t_from_log_snr(self, lam):
        u = jax.nn.softplus(-_as_float(lam))
        delta = self.beta_max - self.beta_min
        return 2.0 * u / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * delta * u))


@struct.dataclass
class VPCosine(NoiseProcess):
    """Improved DDPM's cosine process: alpha_t = cos(theta_t) / cos(theta_0), theta_t = (t + s) a,
    a = pi / (2 (1 + s)).

    Written as alpha_t = sin((1 - t) a) / cos(s a) (exactly 0 at t = 1; for t < 1/2,
    log alpha_t = log1p(-2 sin((t + 2 s) a/2) sin(t a/2) / cos(s a)), exact as t -> 0) and
    sigma_t^2 = 1 - alpha_t^2 = sin(t a) sin((t + 2 s) a) / cos^2(s a) (exact at t -> 0).
    The inverse: theta_t - theta_0 = atan2(c sigma^2 / (S + alpha s0), c^2 alpha + S s0) with
    c = cos(s a), s0 = sin(s a), S = sqrt(s0^2 + c^2 sigma^2) = sin(theta_t), alpha^2 =
    sigmoid(lambda) and sigma^2 = sigmoid(-lambda) (the difference of two angles, with no
    cancellation at small t). ``t_max`` = 0.9946 is DPM-Solver's end for this process.
    """

    s: float = struct.field(pytree_node=False, default=0.008)
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    t_max: float = struct.field(pytree_node=False, default=0.9946)

    @property
    def _a(self) -> float:
        return math.pi / (2.0 * (1.0 + self.s))

    def log_alpha(self, t):
        t = _as_float(t)
        a, c = self._a, math.cos(self.s * self._a)
        # Near t = 0, alpha = 1 - 2 sin((t + 2s) a/2) sin(t a/2) / c keeps log alpha's relative
        # precision; near t = 1, sin((1 - t) a) / c keeps alpha's.
        small_t = jnp.log1p(-2.0 * jnp.sin((t + 2.0 * self.s) * a / 2) * jnp.sin(t * a / 2) / c)
        large_t = jnp.log(jnp.sin((1.0 - t) * a)) - math.log(c)
        return jnp.where(t < 0.5, small_t, large_t)

    def log_sigma(self, t):
        t = _as_float(t)
        a = self._a
        log_sin_product = jnp.log(jnp.sin(t * a)) + jnp.log(jnp.sin((t + 2.0 * self.s) * a))
        return 0.5 * log_sin_product - math.log(math.cos(self.s * a))

    def t_from_log_snr(self, lam):
        lam = _as_float(lam)
        c, s0 = math.cos(self.s * self._a), math.sin(self.s * self._a)
        alpha = jnp.sqrt(jax.nn.sigmoid(lam))
        sigma2 = jax.nn.sigmoid(-lam)
        sin_theta = jnp.sqrt(s0**2 + c**2 * sigma2)
        angle = jnp.arctan2(c * sigma2 / (sin_theta + alpha * s0), c**2 * alpha + sin_theta * s0)
        return angle / self._a


@struct.dataclass
class EDM(NoiseProcess):
    """Variance exploding in sigma (alpha = 1): sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    log sigma is linear in t, so lambda = -2 log sigma is too and its inverse is
    t = (-lambda/2 - log sigma_min) / (log sigma_max - log sigma_min). Here ``edm_sigma`` is sigma.
    """

    sigma_min: float = struct.field(pytree_node=False, default=0.002)
    sigma_max: float = struct.field(pytree_node=False, default=80.0)
    t_min: float = struct.field(pytree_node=False, default=0.0)
    t_max: float = struct.field(pytree_node=False, default=1.0)

    def log_alpha(self, t):
        return jnp.zeros_like(_as_float(t))

    def log_sigma(self, t):
        log_min = math.log(self.sigma_min)
        return log_min + _as_float(t) * (math.log(self.sigma_max) - log_min)

    def t_from_log_snr(self, lam):
        log_min = math.log(self.sigma_min)
        return (-0.5 * _as_float(lam) - log_min) / (math.log(self.sigma_max) - log_min)


def _interpolate(x: jax.Array, xp: jax.Array, fp: jax.Array) -> jax.Array:
    """Piecewise-linear f(x) through (xp, fp), xp increasing, extrapolated from the end
    segments (``jnp.interp`` would clamp). Exact on the knots."""
    i = jnp.clip(jnp.searchsorted(xp, x, side="right") - 1, 0, xp.shape[0] - 2)
    x0, x1, f0, f1 = xp[i], xp[i + 1], fp[i], fp[i + 1]
    return f0 + (x - x0) * ((f1 - f0) / (x1 - x0))


@struct.dataclass
class DiscreteVP(NoiseProcess):
    """A discrete chain as a continuous VP process: log alpha piecewise linear between knots.

    Attributes:
      knots: [K] float32, increasing: (original step + 1) / T_original of each step of the chain.
      log_alphas: [K] float32, (1/2) log alpha_bar at the knots (computed in float64).
      original_num_timesteps: T of the process the network was trained on.
      t_min, t_max: the first and last knot (as float64 Python floats).

    Build it with ``discrete_process(schedule)``.
    """

    knots: jax.Array
    log_alphas: jax.Array
    original_num_timesteps: int = struct.field(pytree_node=False)
    t_min: float = struct.field(pytree_node=False)
    t_max: float = struct.field(pytree_node=False)

    def log_alpha(self, t):
        t = _as_float(t)
        # Below the first knot the extrapolation may cross log alpha = 0: cap it there (sigma = 0).
        return jnp.minimum(_interpolate(t, self.knots.astype(t.dtype), self.log_alphas.astype(t.dtype)), 0.0)

    def log_sigma(self, t):
        return _log_sigma_vp(self.log_alpha(t))

    def t_from_log_snr(self, lam):
        lam = _as_float(lam)
        log_alpha = -0.5 * jax.nn.softplus(-lam)
        # log alpha decreases along the knots: interpolate the inverse over the reversed table.
        return _interpolate(log_alpha, self.log_alphas[::-1].astype(lam.dtype), self.knots[::-1].astype(lam.dtype))

    def model_timestep(self, t) -> jax.Array:
        """The (fractional) step of the original chain at time t: T_original t - 1.

        On a knot it is the integer step the network was trained with; between knots it is
        the linear interpolation of the neighbouring steps. DPM-Solver's ``model_wrapper``
        gives (t - 1/N) 1000: the same for N = 1000, rescaled to 1000 steps otherwise; a
        diffjax network is trained on steps 0..T-1 of its own T, so it gets T t - 1.
        """
        return self.original_num_timesteps * _as_float(t) - 1.0

    def model_step(self, t) -> jax.Array:
        """``model_timestep`` rounded to the nearest integer step in [0, T_original), int32."""
        step = jnp.round(self.model_timestep(t))
        return jnp.clip(step, 0, self.original_num_timesteps - 1).astype(jnp.int32)


ZERO_ALPHA_BAR_FLOOR = 1e-12
"""A chain whose last alpha_bar is 0 (``jsd``: beta = 1) gets this instead in its log table."""


def discrete_process(schedule: Schedule) -> DiscreteVP:
    """The continuous view of a discrete (possibly respaced) schedule (see the module docstring).

    The knots are (timestep_map + 1) / T_original and the table (1/2) log alpha_bar, both in
    float64 from the schedule's float64 betas, then float32. An alpha_bar of exactly 0 is
    floored at ``ZERO_ALPHA_BAR_FLOOR``.

    Args:
      schedule: at least two steps.

    Returns:
      A ``DiscreteVP``.
    """
    if schedule.num_timesteps < 2:
        raise ValueError("a continuous view needs a chain of at least two steps")
    alphas_cumprod = np.maximum(np.cumprod(1.0 - schedule.source.values), ZERO_ALPHA_BAR_FLOOR)
    original = schedule.original_num_timesteps
    knots = (np.asarray(schedule.timestep_map, dtype=np.float64) + 1.0) / original
    return DiscreteVP(
        knots=jnp.asarray(knots, jnp.float32),
        log_alphas=jnp.asarray(0.5 * np.log(alphas_cumprod), jnp.float32),
        original_num_timesteps=original,
        t_min=float(knots[0]),
        t_max=float(knots[-1]),
    )


PROCESSES = {"vp_linear": VPLinear, "vp_cosine": VPCosine, "edm": EDM}
"""The continuous processes by name, each with its paper's defaults."""


def named_process(name: str) -> NoiseProcess:
    """``PROCESSES[name]()``, e.g. ``named_process("edm")``."""
    if name not in PROCESSES:
        raise ValueError(f"unknown noise process {name!r}; known processes: {sorted(PROCESSES)}")
    return PROCESSES[name]()
