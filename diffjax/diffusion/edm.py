"""EDM's preconditioning, training noise levels and loss weights: the four columns of Table 1.

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models",
section 5, Table 1 and appendix B.6) write every denoiser as a raw network F wrapped by
four coefficients of the noise level sigma (eq. 7):

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),

where x = y + n, y the data and n ~ N(0, sigma^2 I): the *scaled* variable. A VP process's
x_t = alpha_t y + sigma_t eps is x = x_t / alpha_t with sigma = sigma_t / alpha_t =
exp(-lambda_t / 2) (``processes.NoiseProcess.edm_sigma``), and D(x; sigma) is the data
prediction x_0-hat of that x_t. Training draws sigma from p_train and minimises (eq. 2, 8)

    E_{sigma, y, n} lambda(sigma) ||D(y + n; sigma) - y||^2
      = E lambda(sigma) c_out(sigma)^2 ||F(c_in (y + n); c_noise) - (y - c_skip (y + n)) / c_out||^2.

The columns (the paper's parameters are the defaults; sigma_d = sigma_data):

=========  ======================  ==================  =====================  ===========================
column     c_skip                  c_out               c_in                   c_noise
=========  ======================  ==================  =====================  ===========================
``vp``     1                       -sigma              1 / sqrt(sigma^2 + 1)  (M - 1) sigma^-1(sigma)
``ve``     1                       sigma               1                      ln(sigma / 2)
``iddpm``  1                       -sigma              1 / sqrt(sigma^2 + 1)  M - 1 - argmin_j |u_j - sigma|
``edm``    sd^2 / (sigma^2+sd^2)   sigma sd / sqrt(.)  1 / sqrt(sigma^2+sd^2) ln(sigma) / 4
=========  ======================  ==================  =====================  ===========================

(sd = sigma_data; "(.)" is sigma^2 + sd^2.) Training noise levels and loss weights:

* ``vp``: sigma = sigma(t), t ~ U(epsilon_t, 1), sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1),
  beta_d = 19.9, beta_min = 0.1, epsilon_t = 1e-5, M = 1000; lambda(sigma) = 1 / sigma^2.
  sigma^-1(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d. This is
  ``processes.VPLinear`` (beta_max = beta_min + beta_d = 20) seen through EDM's sigma.
* ``ve``: ln sigma ~ U(ln sigma_min, ln sigma_max), sigma_min = 0.02, sigma_max = 100;
  lambda(sigma) = 1 / sigma^2.
* ``iddpm``: sigma = u_j, j ~ U{0, ..., M - 1}; lambda(sigma) = 1 / sigma^2 (improved DDPM also
  adds L_vlb, which is not part of this module). The table u_0 > u_1 > ... > u_M = 0 is
  u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar_{j-1} / alpha_bar_j, C_1) - 1) with
  alpha_bar_j = sin^2(pi/2 j / (M (C_2 + 1))), C_1 = 0.001, C_2 = 0.008, M = 1000: the cosine
  schedule's noise levels, u_j the step n = M - 1 - j (j = M is the clean data, sigma = 0).
* ``edm``: ln sigma ~ N(P_mean, P_std^2), P_mean = -1.2, P_std = 1.2, sigma_data = 0.5;
  lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2.

In every column lambda(sigma) c_out(sigma)^2 = 1: the effective weight of the raw network's
loss (eq. 8) is uniform. For VP and iDDPM the raw target (y - x) / (-sigma) = n / sigma is the
noise eps (F is an eps-prediction network), for VE it is -eps.

**iDDPM's c_noise, exactly as implemented here.** Inputs: sigma (any float array) and the
column's (M, C_1, C_2). The table u_0..u_M is computed once in float64 NumPy (``iddpm_u``); c_noise
= M - 1 - j* with j* = argmin over j in {0, ..., M - 1} of |u_j - sigma|, the distances taken in
sigma's dtype (float32 unless x64), ties to the smaller j (the larger u). So c_noise is an
integer-valued float in [0, M - 1]: the improved-DDPM step whose noise level is nearest. u_M = 0
is left out of the argmin: it is no step the network was trained on (it would give c_noise = -1);
a sigma below u_{M-1} / 2 maps to step 0. Only sigma on the table is represented exactly; between
entries the network sees the nearest trained step.

Sampler parameters of Table 1 (VP's epsilon_s, iDDPM's j_0, EDM's sigma_min = 0.002,
sigma_max = 80, rho = 7) are not used here; time grids live in ``time_grids``.

Shapes: sigma is per example, [B] (a scalar is broadcast to [B]); x is [B, ...]; every
coefficient is computed on sigma's shape and broadcast as [B, 1, ..., 1]. Losses are per
example, [B], means over the non-batch axes (``losses.mean_flat``), not sums.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "COLUMNS",
    "Coefficients",
    "Column",
    "EDMPrecond",
    "IDDPMPrecond",
    "VEPrecond",
    "VPPrecond",
    "denoiser_loss",
    "get_column",
    "iddpm_u",
    "precondition",
    "raw_loss",
    "raw_target",
]


class Coefficients(NamedTuple):
    """The four preconditioning coefficients at sigma, each shaped like sigma."""

    c_skip: jax.Array
    c_out: jax.Array
    c_in: jax.Array
    c_noise: jax.Array


def _float(sigma) -> jax.Array:
    sigma = jnp.asarray(sigma)
    return sigma if jnp.issubdtype(sigma.dtype, jnp.floating) else sigma.astype(jnp.float32)


def _expand(coefficient: jax.Array, ndim: int) -> jax.Array:
    """[B] -> [B, 1, ..., 1] for a rank-``ndim`` batch."""
    return jnp.reshape(coefficient, coefficient.shape + (1,) * (ndim - coefficient.ndim))


class Column:
    """What every column provides. Subclasses define the coefficients, ``loss_weight``,
    ``sample_sigma``, ``sigma_from_c_noise`` and ``log_snr_log_density``."""

    name: str

    def coefficients(self, sigma) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise) at sigma, each shaped like sigma."""
        raise NotImplementedError

    def loss_weight(self, sigma) -> jax.Array:
        """lambda(sigma), shaped like sigma."""
        raise NotImplementedError

    def sample_sigma(self, key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        """Training noise levels drawn from the column's p_train, ``shape``."""
        raise NotImplementedError

    def sigma_from_c_noise(self, c_noise) -> jax.Array:
        """The sigma whose c_noise is ``c_noise`` (the inverse of the noise conditioning)."""
        raise NotImplementedError

    def log_snr_log_density(self, log_snr) -> jax.Array:
        """log p(lambda) of lambda = -2 ln sigma when sigma ~ p_train (-inf off its support)."""
        raise NotImplementedError


def _eps_network_coefficients(sigma: jax.Array, c_noise: jax.Array) -> Coefficients:
    """The VP and iDDPM columns' c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2 + 1) (an eps
    network on the VP-scaled input), with the column's own c_noise."""
    return Coefficients(
        c_skip=jnp.ones_like(sigma), c_out=-sigma, c_in=jax.lax.rsqrt(jnp.square(sigma) + 1.0), c_noise=c_noise
    )


@dataclasses.dataclass(frozen=True)
class VPPrecond(Column):
    """Table 1's VP column (score_sde's VP SDE, DDPM++): see the module docstring."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5
    name = "vp"

    def sigma_of_t(self, t) -> jax.Array:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = _float(t)
        return jnp.sqrt(jnp.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def t_of_sigma(self, sigma) -> jax.Array:
        """sigma^-1(sigma) = 2 L / (beta_min + sqrt(beta_min^2 + 2 beta_d L)), L = ln(1 + sigma^2)
        (the root of beta_d t^2 / 2 + beta_min t = L, written without cancellation)."""
        log1p_sigma2 = jnp.log1p(jnp.square(_float(sigma)))
        return 2.0 * log1p_sigma2 / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * self.beta_d * log1p_sigma2))

    def coefficients(self, sigma) -> Coefficients:
        sigma = _float(sigma)
        return _eps_network_coefficients(sigma, (self.M - 1) * self.t_of_sigma(sigma))

    def loss_weight(self, sigma) -> jax.Array:
        return 1.0 / jnp.square(_float(sigma))

    def sample_sigma(self, key, shape, dtype=jnp.float32) -> jax.Array:
        t = jax.random.uniform(key, shape, dtype, minval=self.epsilon_t, maxval=1.0)
        return self.sigma_of_t(t)

    def sigma_from_c_noise(self, c_noise) -> jax.Array:
        return self.sigma_of_t(_float(c_noise) / (self.M - 1))

    def log_snr_log_density(self, log_snr) -> jax.Array:
        """t ~ U(epsilon_t, 1) and lambda = -ln(sigma(t)^2) = -ln(expm1(g(t))), g = beta_d t^2/2 +
        beta_min t. With g = softplus(-lambda) and g'(t) = sqrt(beta_min^2 + 2 beta_d g):
        p(lambda) = sigmoid(-lambda) / ((1 - epsilon_t) g'(t)) on [lambda(1), lambda(epsilon_t)]."""
        lam = _float(log_snr)
        g = jax.nn.softplus(-lam)
        log_p = (
            jax.nn.log_sigmoid(-lam)
            - math.log(1.0 - self.epsilon_t)
            - 0.5 * jnp.log(self.beta_min**2 + 2.0 * self.beta_d * g)
        )
        lam_low = -2.0 * jnp.log(self.sigma_of_t(jnp.asarray(1.0, lam.dtype)))
        lam_high = -2.0 * jnp.log(self.sigma_of_t(jnp.asarray(self.epsilon_t, lam.dtype)))
        return jnp.where((lam >= lam_low) & (lam <= lam_high), log_p, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class VEPrecond(Column):
    """Table 1's VE column (score_sde's VE SDE, NCSN++): see the module docstring."""

    sigma_min: float = 0.02
    sigma_max: float = 100.0
    name = "ve"

    def coefficients(self, sigma) -> Coefficients:
        sigma = _float(sigma)
        return Coefficients(
            c_skip=jnp.ones_like(sigma),
            c_out=sigma,
            c_in=jnp.ones_like(sigma),
            c_noise=jnp.log(0.5 * sigma),
        )

    def loss_weight(self, sigma) -> jax.Array:
        return 1.0 / jnp.square(_float(sigma))

    def sample_sigma(self, key, shape, dtype=jnp.float32) -> jax.Array:
        log_sigma = jax.random.uniform(
            key, shape, dtype, minval=math.log(self.sigma_min), maxval=math.log(self.sigma_max)
        )
        return jnp.exp(log_sigma)

    def sigma_from_c_noise(self, c_noise) -> jax.Array:
        return 2.0 * jnp.exp(_float(c_noise))

    def log_snr_log_density(self, log_snr) -> jax.Array:
        """lambda = -2 ln sigma is uniform on [-2 ln sigma_max, -2 ln sigma_min]."""
        lam = _float(log_snr)
        width = 2.0 * (math.log(self.sigma_max) - math.log(self.sigma_min))
        inside = (lam >= -2.0 * math.log(self.sigma_max)) & (lam <= -2.0 * math.log(self.sigma_min))
        return jnp.where(inside, -math.log(width), -jnp.inf).astype(lam.dtype)


@functools.lru_cache(maxsize=8)
def iddpm_u(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> np.ndarray:
    """iDDPM's noise levels u_0 > ... > u_{M-1} > u_M = 0 (Table 1), float64 [M + 1], read-only.

    u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar_{j-1} / alpha_bar_j, C1) - 1),
    alpha_bar_j = sin^2(pi/2 j / (M (C2 + 1))).
    """
    j = np.arange(M + 1, dtype=np.float64)
    alpha_bar = np.sin(0.5 * np.pi * j / (M * (C2 + 1.0))) ** 2
    u = np.zeros(M + 1, dtype=np.float64)
    for k in range(M, 0, -1):
        ratio = max(alpha_bar[k - 1] / alpha_bar[k], C1)
        u[k - 1] = math.sqrt((u[k] ** 2 + 1.0) / ratio - 1.0)
    u.setflags(write=False)
    return u


@dataclasses.dataclass(frozen=True)
class IDDPMPrecond(Column):
    """Table 1's iDDPM column (improved DDPM's cosine schedule): see the module docstring,
    which also states exactly how c_noise is computed."""

    M: int = 1000
    C1: float = 0.001
    C2: float = 0.008
    name = "iddpm"

    @property
    def u(self) -> np.ndarray:
        """u_0..u_M, float64 [M + 1] (``iddpm_u``)."""
        return iddpm_u(self.M, self.C1, self.C2)

    def step_index(self, sigma) -> jax.Array:
        """j* = argmin_{j < M} |u_j - sigma|, int32, shaped like sigma."""
        sigma = _float(sigma)
        u = jnp.asarray(self.u[: self.M], sigma.dtype)
        return jnp.argmin(jnp.abs(sigma[..., None] - u), axis=-1).astype(jnp.int32)

    def coefficients(self, sigma) -> Coefficients:
        sigma = _float(sigma)
        return _eps_network_coefficients(sigma, (self.M - 1 - self.step_index(sigma)).astype(sigma.dtype))

    def loss_weight(self, sigma) -> jax.Array:
        return 1.0 / jnp.square(_float(sigma))

    def sample_sigma(self, key, shape, dtype=jnp.float32) -> jax.Array:
        j = jax.random.randint(key, shape, 0, self.M)
        return jnp.asarray(self.u[: self.M], dtype)[j]

    def sigma_from_c_noise(self, c_noise) -> jax.Array:
        """u_{M - 1 - c_noise}: exact for the integer c_noise this column produces."""
        c_noise = _float(c_noise)
        j = (self.M - 1 - jnp.round(c_noise)).astype(jnp.int32)
        return jnp.asarray(self.u, c_noise.dtype)[jnp.clip(j, 0, self.M)]

    def log_snr_log_density(self, log_snr) -> jax.Array:
        raise NotImplementedError("iDDPM's training noise levels are discrete (sigma = u_j): no density in lambda")


@dataclasses.dataclass(frozen=True)
class EDMPrecond(Column):
    """Table 1's EDM column: see the module docstring."""

    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    name = "edm"

    def coefficients(self, sigma) -> Coefficients:
        sigma = _float(sigma)
        sd2 = self.sigma_data**2
        total = jnp.square(sigma) + sd2
        return Coefficients(
            c_skip=sd2 / total,
            c_out=sigma * self.sigma_data * jax.lax.rsqrt(total),
            c_in=jax.lax.rsqrt(total),
            c_noise=0.25 * jnp.log(sigma),
        )

    def loss_weight(self, sigma) -> jax.Array:
        sigma = _float(sigma)
        return (jnp.square(sigma) + self.sigma_data**2) / jnp.square(sigma * self.sigma_data)

    def sample_sigma(self, key, shape, dtype=jnp.float32) -> jax.Array:
        return jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, shape, dtype))

    def sigma_from_c_noise(self, c_noise) -> jax.Array:
        return jnp.exp(4.0 * _float(c_noise))

    def log_snr_log_density(self, log_snr) -> jax.Array:
        """lambda = -2 ln sigma ~ N(-2 P_mean, (2 P_std)^2) (Kingma & Gao 2023: N(2.4, 2.4^2))."""
        lam = _float(log_snr)
        mean, std = -2.0 * self.p_mean, 2.0 * self.p_std
        return -0.5 * jnp.square((lam - mean) / std) - math.log(std) - 0.5 * math.log(2.0 * math.pi)


COLUMNS = {"vp": VPPrecond, "ve": VEPrecond, "iddpm": IDDPMPrecond, "edm": EDMPrecond}
"""Table 1's columns by name, each with the paper's parameters as defaults."""


def get_column(kind: str | Column, sigma_data: float | None = None) -> Column:
    """A column from its name (``COLUMNS``) or the column itself.

    ``sigma_data`` sets EDM's sigma_data (default 0.5); it is an error for the other columns,
    whose Table-1 formulas do not use it.
    """
    if isinstance(kind, Column):
        if sigma_data is not None:
            raise ValueError("give sigma_data to the column itself, not with a column instance")
        return kind
    if kind not in COLUMNS:
        raise ValueError(f"unknown preconditioning {kind!r}; expected one of {sorted(COLUMNS)}")
    if sigma_data is None:
        return COLUMNS[kind]()
    if kind != "edm":
        raise ValueError(f"sigma_data is a parameter of the edm column only, not of {kind!r}")
    return EDMPrecond(sigma_data=float(sigma_data))


def _batch_sigma(sigma, x: jax.Array) -> jax.Array:
    """sigma as [B] in x's dtype (a scalar broadcast over the batch)."""
    sigma = jnp.asarray(sigma, x.dtype)
    if sigma.ndim == 0:
        sigma = jnp.broadcast_to(sigma, x.shape[:1])
    chex.assert_shape(sigma, x.shape[:1])
    return sigma


def precondition(kind: str | Column, raw_network: Callable, sigma_data: float | None = None) -> Callable:
    """The denoiser D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) of a raw network F (eq. 7).

    Args:
      kind: a column name (``vp``, ``ve``, ``iddpm``, ``edm``) or a column instance.
      raw_network: F(x_in, c_noise, *args, **kwargs) -> [B, ...] with x_in [B, ...] and
        c_noise [B] (extra arguments, e.g. parameters or class labels, are passed through).
      sigma_data: EDM's sigma_data (default 0.5); only for ``edm``.

    Returns:
      ``denoise(x, sigma, *args, **kwargs)``: x [B, ...] the scaled noisy data y + n, sigma [B]
      or a scalar -> D [B, ...], the prediction of y. Pure; jit and vmap it from outside.
    """
    column = get_column(kind, sigma_data)

    def denoise(x, sigma, *args, **kwargs):
        sigma = _batch_sigma(sigma, x)
        c = column.coefficients(sigma)
        raw = raw_network(_expand(c.c_in, x.ndim) * x, c.c_noise, *args, **kwargs)
        chex.assert_shape(raw, x.shape)
        return _expand(c.c_skip, x.ndim) * x + _expand(c.c_out, x.ndim) * raw

    return denoise


def raw_target(kind: str | Column, denoised: jax.Array, x: jax.Array, sigma, sigma_data: float | None = None) -> jax.Array:
    """The raw output F that makes D equal ``denoised``: (denoised - c_skip x) / c_out.

    The inverse of D's affine map at (x, sigma). With ``denoised`` = y (the clean data) it is
    the effective training target of eq. 8; with the exact denoiser it is the ideal F*.
    ``denoised``, x [B, ...], sigma [B] or scalar -> [B, ...].
    """
    column = get_column(kind, sigma_data)
    chex.assert_equal_shape([denoised, x])
    sigma = _batch_sigma(sigma, x)
    c = column.coefficients(sigma)
    return (denoised - _expand(c.c_skip, x.ndim) * x) / _expand(c.c_out, x.ndim)


def _mean_flat(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def raw_loss(
    kind: str | Column, raw_output: jax.Array, x0: jax.Array, x: jax.Array, sigma, sigma_data: float | None = None
) -> jax.Array:
    """Per-example loss in the raw network's space (eq. 8):
    lambda(sigma) c_out(sigma)^2 mean ||F - (x0 - c_skip x) / c_out||^2.

    Args:
      kind: a column name or instance.
      raw_output: F(c_in x, c_noise), [B, ...].
      x0: [B, ...] the clean data y.
      x: [B, ...] the noisy input y + n (n ~ N(0, sigma^2 I)).
      sigma: [B] (or a scalar).
      sigma_data: EDM's sigma_data; only for ``edm``.

    Returns:
      [B], equal to ``denoiser_loss`` of the D this F makes.
    """
    column = get_column(kind, sigma_data)
    chex.assert_equal_shape([raw_output, x0, x])
    sigma = _batch_sigma(sigma, x)
    c_out = column.coefficients(sigma).c_out
    target = raw_target(column, x0, x, sigma)
    return column.loss_weight(sigma) * jnp.square(c_out) * _mean_flat(jnp.square(raw_output - target))


def denoiser_loss(
    kind: str | Column, denoised: jax.Array, x0: jax.Array, sigma, sigma_data: float | None = None
) -> jax.Array:
    """Per-example loss lambda(sigma) mean ||D(x; sigma) - x0||^2 (eq. 2 weighted, eq. 8).

    ``denoised``, x0 [B, ...], sigma [B] or scalar -> [B].
    """
    column = get_column(kind, sigma_data)
    chex.assert_equal_shape([denoised, x0])
    sigma = _batch_sigma(sigma, x0)
    return column.loss_weight(sigma) * _mean_flat(jnp.square(denoised - x0))
