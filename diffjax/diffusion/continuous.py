"""Continuous-time training: one per-noise-level loss for DDPM-style, VDM and EDM objectives.

A ``ContinuousDiffusion`` is a static description of how a network is trained in continuous time
and how its output is read; its pure functions draw a noise level per example, noise the data
and return the per-example loss, so that the objective of VDM (Kingma et al. 2021), EDM
(Karras et al. 2022) and the usual eps / x_0 / v MSEs are one code path that differs only in
the config keys (``diffusion.process``, ``diffusion.prediction``, ``diffusion.weighting``,
``diffusion.noise_sampler``):

    x_t = alpha_t x_0 + sigma_t eps,                    t drawn per example,
    x0_hat = read(prediction, network(input, c(lambda_t))),
    loss = W_weighting(lambda_t) mean ||x0_hat - x_0||^2          (``weighting.per_level_loss``).

The processes (``PROCESS_NAMES``):

* ``vp_linear``, ``vp_cosine``, ``edm``: ``processes.VPLinear`` / ``VPCosine`` / ``EDM``; t is
  drawn on the process's [t_min, t_max].
* ``vdm``: VP with VDM's gamma(t) = -lambda_t (``GammaProcess``): ``fixed_linear`` (gamma_0,
  gamma_1 fixed), ``learned_linear`` (the ends learned by the bound) or ``monotone`` (VDM's
  monotone network, ends exact, ``models.noise_schedule``), t in [0, 1].

How a level is drawn (``NOISE_SAMPLERS``): ``uniform`` t with VDM's low-discrepancy (antithetic)
batch, or EDM's ``log_normal`` sigma (ln sigma ~ N(P_mean, P_std^2); the ``edm`` process only,
whose t <-> sigma map is log-linear and defined for any sigma).

How the output is read (``PREDICTIONS``): ``eps``, ``x0``, ``v`` on the input x_t, or ``edm``:
Karras et al.'s preconditioning of the scaled variable x~ = x_t / alpha_t at sigma~ = sigma_t /
alpha_t = e^{-lambda/2} (Table 1, EDM column, any process): the network sees c_in x~ and
x0_hat = c_skip x~ + c_out F.

The network's noise conditioning is the same for every process: c(lambda) = 1000 (-lambda -
GAMMA_0) / (GAMMA_1 - GAMMA_0) (``noise_conditioning``), VDM's rescaled gamma (0 at lambda =
13.3, 1000 at lambda = -5), so the network is a function of the noise level, not of t. That is
what makes VDM's L_inf invariant to the schedule's shape between its ends (VDM eq. 17 written
in v = SNR), which the variance minimisation of a learned schedule needs. EDM's c_noise =
ln(sigma)/4 = -lambda/8 is an affine function of the same value.

The VDM objective (``process="vdm"``, ``weighting="elbo"``) is VDM's full bound in bits/dim:
the continuous diffusion loss plus the prior and reconstruction losses (``vdm.vdm_loss``), with
the variance gradient for the monotone schedule's shape (``vdm.with_variance_gradient``) when
``variance_gradient``. Any other combination is the weighted diffusion loss alone (its value is
not a bound; ``elbo`` on another process is the diffusion part of the bound in nats/dim).

Learned schedules keep their parameters in the model's params under ``schedule`` (the network's
under ``network``: ``models.scheduled.ScheduledDenoiser``, whose call is the network's);
``make_process(params)`` builds the process of given params, so EMA params give the EMA schedule.

Shapes: x_0 [B, ...], t [B], losses [B].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from diffjax.diffusion import time_grids, vdm, weighting
from diffjax.diffusion.edm import EDMPrecond
from diffjax.diffusion.families.base import Draw, check_one_of
from diffjax.diffusion.families.gaussian import DISCRETE_GRID_PREFIX, solver_draw
from diffjax.diffusion.parameterization import DiffusionSpec, x0_from_mean_part
from diffjax.diffusion.processes import NoiseProcess, expand_to_rank, named_process

__all__ = [
    "GAMMA_SCHEDULES",
    "NOISE_SAMPLERS",
    "PREDICTIONS",
    "PROCESS_NAMES",
    "ContinuousDiffusion",
    "GammaProcess",
    "noise_conditioning",
]

PROCESS_NAMES = ("vp_linear", "vp_cosine", "edm", "vdm")
GAMMA_SCHEDULES = ("fixed_linear", "learned_linear", "monotone")
PREDICTIONS = ("eps", "x0", "v", "edm")
NOISE_SAMPLERS = ("uniform", "log_normal")

Network = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
"""``network(params, x, c_noise [B], cond) -> raw output [B, ...]``."""


def noise_conditioning(log_snr: jax.Array) -> jax.Array:
    """The network's noise input c(lambda) = 1000 (-lambda - GAMMA_0) / (GAMMA_1 - GAMMA_0), [B]."""
    return 1000.0 * (-log_snr - vdm.GAMMA_0) / (vdm.GAMMA_1 - vdm.GAMMA_0)


@struct.dataclass
class GammaProcess(NoiseProcess):
    """A VP process given by VDM's gamma(t) = -lambda_t on t in [0, 1]: alpha^2 = sigmoid(-gamma).

    Attributes:
      schedule_params: the learned schedule's params (None for the fixed linear schedule).
      schedule: the Flax schedule module (``LinearSchedule`` or ``MonotoneSchedule``), or None.
      gamma_0, gamma_1: the ends of the fixed linear schedule.
    """

    schedule_params: Any = None
    schedule: nn.Module | None = struct.field(pytree_node=False, default=None)
    gamma_0: float = struct.field(pytree_node=False, default=vdm.GAMMA_0)
    gamma_1: float = struct.field(pytree_node=False, default=vdm.GAMMA_1)
    t_min: float = struct.field(pytree_node=False, default=0.0)
    t_max: float = struct.field(pytree_node=False, default=1.0)

    def gamma(self, t) -> jax.Array:
        t = jnp.asarray(t, jnp.result_type(float, jnp.asarray(t).dtype))
        if self.schedule is None:
            return vdm.linear_gamma(t, self.gamma_0, self.gamma_1)
        return self.schedule.apply({"params": self.schedule_params}, t).astype(t.dtype)

    def log_alpha(self, t):
        return -0.5 * jax.nn.softplus(self.gamma(t))

    def log_sigma(self, t):
        return -0.5 * jax.nn.softplus(-self.gamma(t))

    def log_snr(self, t):
        return -self.gamma(t)

    def t_from_log_snr(self, lam):
        """The inverse of lambda_t: closed form for the fixed linear schedule, else 40 bisection
        steps on [0, 1] (gamma is increasing), exact to float32; clipped to [0, 1]."""
        lam = jnp.asarray(lam, jnp.result_type(float, jnp.asarray(lam).dtype))
        if self.schedule is None:
            return jnp.clip((-lam - self.gamma_0) / (self.gamma_1 - self.gamma_0), 0.0, 1.0)

        def bisect(_, bounds):
            low, high = bounds
            middle = 0.5 * (low + high)
            above = self.gamma(middle) > -lam
            return jnp.where(above, low, middle), jnp.where(above, middle, high)

        low, high = jax.lax.fori_loop(0, 40, bisect, (jnp.zeros_like(lam), jnp.ones_like(lam)))
        return 0.5 * (low + high)


def _flat_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


@dataclasses.dataclass(frozen=True)
class ContinuousDiffusion:
    """A continuous-time diffusion objective and the reading of the network's output.

    Attributes:
      process: a name of ``PROCESS_NAMES``.
      prediction: a name of ``PREDICTIONS``.
      weighting: a key of ``weighting.WEIGHTINGS``.
      noise_sampler: a name of ``NOISE_SAMPLERS``.
      gamma_schedule: the ``vdm`` process's schedule, a name of ``GAMMA_SCHEDULES``.
      gamma_0, gamma_1: its ends (initial values when learned).
      schedule: the learned schedule's Flax module (set by the recipe for ``learned_linear`` and
        ``monotone``; its params are ``params["schedule"]``), else None.
      variance_gradient: train the monotone schedule's shape by VDM's variance gradient
        (otherwise the shape gets the gradient of the bound, which is zero in expectation).
      sigma_data, p_mean, p_std: EDM's sigma_d and log-normal parameters.
      snr_gamma: min-SNR's gamma.
      discrete_data: the data are 8-bit images (VDM's reconstruction term normalises over the 256
        values); False for continuous data (2-D toys), whose reconstruction term is the Gaussian
        decoder's density (``vdm.gaussian_reconstruction_loss``; the bound is then on a density
        and may be negative).
    """

    process: str = "vp_linear"
    prediction: str = "eps"
    weighting: str = "eps_mse"
    noise_sampler: str = "uniform"
    gamma_schedule: str = "fixed_linear"
    gamma_0: float = vdm.GAMMA_0
    gamma_1: float = vdm.GAMMA_1
    schedule: nn.Module | None = None
    variance_gradient: bool = True
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    snr_gamma: float = 5.0
    discrete_data: bool = True

    name: ClassVar[str] = "continuous"
    gaussian: ClassVar[bool] = True
    draws_samples: ClassVar[bool] = True
    bounds: ClassVar[tuple[str, ...]] = ("elbo", "ode_nll")
    num_timesteps: ClassVar[None] = None
    CONFIG: ClassVar[Mapping[str, Any]] = {
        "process": "vp_linear",  # vp_linear, vp_cosine, edm, vdm
        "prediction": "eps",  # eps, x0, v, edm (Karras et al.'s c_skip/c_out/c_in)
        "weighting": "eps_mse",  # a key of weighting.WEIGHTINGS: x0_mse, eps_mse, v_mse, min_snr, elbo, edm
        "noise_sampler": "uniform",  # uniform (t, low-discrepancy) or log_normal (EDM's sigma; process edm)
        "gamma_schedule": "fixed_linear",  # process vdm: fixed_linear, learned_linear, monotone
        "gamma_0": vdm.GAMMA_0,  # process vdm: gamma(0) = -log SNR at t = 0 (initial value if learned)
        "gamma_1": vdm.GAMMA_1,  # process vdm: gamma(1)
        "learn_endpoints": True,  # monotone schedule: learn gamma_0, gamma_1 by the bound
        "schedule_hidden": 1024,  # monotone schedule: width of its hidden layer (VDM: 1024)
        "variance_gradient": True,  # monotone schedule: its shape minimises the loss variance
        "sigma_data": 0.5,  # EDM's sigma_d (prediction edm, weighting edm)
        "p_mean": -1.2,  # EDM's log-normal training sigma: ln sigma ~ N(p_mean, p_std^2)
        "p_std": 1.2,
        "snr_gamma": 5.0,  # min-SNR's gamma
    }
    MODULE_KEYS: ClassVar[tuple[str, ...]] = ("learn_endpoints", "schedule_hidden")
    """Keys of the learned schedule's network (built by ``run/``, passed as ``schedule``)."""

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, discrete_data: bool = True, schedule_module=None,
                    **context) -> ContinuousDiffusion:
        """The model of ``config.diffusion``'s values, with the learned schedule's module
        (``schedule_module``, for the vdm process's learned schedules) and whether the data are
        8-bit images; ``ValueError`` names a bad value."""
        v = {k: value for k, value in {**cls.CONFIG, **values}.items() if k not in cls.MODULE_KEYS}
        every = {**cls.CONFIG, **values}
        if not isinstance(every["schedule_hidden"], int) or every["schedule_hidden"] < 1:
            raise ValueError(f"schedule_hidden: must be an integer >= 1, got {every['schedule_hidden']!r}")
        if not isinstance(every["learn_endpoints"], bool):
            raise ValueError(f"learn_endpoints: must be True or False, got {every['learn_endpoints']!r}")
        return cls(**v, schedule=schedule_module, discrete_data=discrete_data)

    def __post_init__(self):
        for key, allowed in (("process", PROCESS_NAMES), ("prediction", PREDICTIONS),
                             ("weighting", tuple(weighting.WEIGHTINGS)), ("noise_sampler", NOISE_SAMPLERS),
                             ("gamma_schedule", GAMMA_SCHEDULES)):
            check_one_of(key, getattr(self, key), allowed)
        if self.noise_sampler == "log_normal" and self.process != "edm":
            raise ValueError(f"noise_sampler: log_normal draws EDM's sigma and needs process 'edm', not {self.process!r} "
                             "(its t <-> sigma map covers every sigma)")
        if self.weighting == "v_mse" and self.process == "edm":
            raise ValueError("weighting: v_mse is defined for variance-preserving processes only")
        for key in ("gamma_0", "gamma_1", "sigma_data", "p_mean", "p_std", "snr_gamma"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{key}: must be a finite number, got {value!r}")
        if not self.gamma_0 < self.gamma_1:
            raise ValueError(f"gamma_0: gamma_0 ({self.gamma_0}) must be below gamma_1 ({self.gamma_1})")
        for key in ("sigma_data", "p_std", "snr_gamma"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be positive, got {getattr(self, key)}")
        if not isinstance(self.variance_gradient, bool):
            raise ValueError(f"variance_gradient: must be True or False, got {self.variance_gradient!r}")
        learned = self.process == "vdm" and self.gamma_schedule != "fixed_linear"
        if learned != (self.schedule is not None):
            raise ValueError("a schedule module is needed exactly for the vdm process's learned schedules")

    # ------------------------------------------------------------------ views

    @property
    def learned_schedule(self) -> bool:
        return self.schedule is not None

    @property
    def learned_process(self) -> bool:
        """The family contract's name for ``learned_schedule``."""
        return self.learned_schedule

    def noise_process(self, params: Any = None) -> NoiseProcess:
        """The family contract's name for ``make_process``."""
        return self.make_process(params)

    def output_channels(self, data_channels: int) -> int:
        return data_channels

    @property
    def is_vdm_bound(self) -> bool:
        """Whether the loss is VDM's full bound (prior + reconstruction + diffusion, bits/dim)."""
        return self.process == "vdm" and self.weighting == "elbo"

    def make_process(self, params: Any = None) -> NoiseProcess:
        """The noise process (a learned schedule's with ``params``' schedule)."""
        if self.process != "vdm":
            return named_process(self.process)
        if self.learned_schedule:
            return GammaProcess(schedule_params=params["schedule"], schedule=self.schedule)
        return GammaProcess(gamma_0=self.gamma_0, gamma_1=self.gamma_1)

    def spec(self) -> DiffusionSpec:
        return DiffusionSpec(self.prediction if self.prediction != "edm" else "x0", "fixed_small")

    # ------------------------------------------------------------------ the denoiser

    def predict_x0(self, network: Network, params: Any, process: NoiseProcess, x_t: jax.Array, t: jax.Array,
                   cond: Any = None) -> jax.Array:
        """x0_hat [B, ...] of the network at x_t [B, ...] and times t [B] or a scalar time (params:
        the model's)."""
        if jnp.ndim(t) == 0:
            t = jnp.full(x_t.shape[:1], t, dtype=jnp.asarray(t).dtype)
        chex.assert_shape(t, x_t.shape[:1])
        log_alpha = expand_to_rank(process.log_alpha(t), x_t.ndim)
        log_sigma = expand_to_rank(process.log_sigma(t), x_t.ndim)
        return self._read(network, params, x_t, log_alpha, log_sigma, process.log_snr(t), cond)

    def _read(self, network: Network, params: Any, x_t: jax.Array, log_alpha: jax.Array, log_sigma: jax.Array,
              log_snr: jax.Array, cond: Any) -> jax.Array:
        """x0_hat [B, ...] at x_t with log alpha_t, log sigma_t (broadcastable to x_t) and lambda_t [B]:
        the network told c(lambda) and its output read per ``prediction`` (EDM's preconditioning is
        applied here and only here)."""
        c_noise = noise_conditioning(log_snr)
        if self.prediction == "edm":
            scaled = x_t * jnp.exp(-log_alpha)
            coefficients = EDMPrecond(sigma_data=self.sigma_data).coefficients(jnp.exp(log_sigma - log_alpha))
            output = network(params, coefficients.c_in * scaled, c_noise, cond)
            return coefficients.c_skip * scaled + coefficients.c_out * output
        output = network(params, x_t, c_noise, cond)
        return x0_from_mean_part(self.spec(), x_t, output, jnp.exp(log_alpha), jnp.exp(log_sigma))

    # ------------------------------------------------------------------ training

    def draw_times(self, process: NoiseProcess, key: jax.Array, batch_size: int) -> jax.Array:
        """t [B]: uniform on [t_min, t_max] (low-discrepancy batch), or EDM's log-normal sigma."""
        if self.noise_sampler == "log_normal":
            sigma = EDMPrecond(p_mean=self.p_mean, p_std=self.p_std).sample_sigma(key, (batch_size,))
            return process.t_from_edm_sigma(sigma)
        u = vdm.sample_times(key, batch_size, antithetic=True)
        return process.t_min + (process.t_max - process.t_min) * u

    def log_density(self, process: NoiseProcess, log_snr: jax.Array) -> jax.Array:
        """log p(lambda) [B] of the sampled log-SNR (the ``elbo`` weighting needs it)."""
        if self.noise_sampler == "log_normal":
            return EDMPrecond(p_mean=self.p_mean, p_std=self.p_std).log_snr_log_density(log_snr)
        return weighting.log_density_uniform_t(process, log_snr, process.t_min, process.t_max)

    def losses(self, network: Network, params: Any, x0: jax.Array, key: jax.Array, cond: Any = None
               ) -> dict[str, jax.Array]:
        """Per-example training losses [B]: ``loss`` (to average), ``mse`` (mean ||x0_hat - x_0||^2),
        ``log_snr``; for the VDM bound also ``diffusion``, ``prior``, ``reconstruction`` (bits/dim).

        Args:
          network: ``network(params, x, c_noise, cond)`` (dropout keys closed over).
          params: the model's params (with ``schedule`` for a learned schedule).
          x0: [B, ...] data in [-1, 1].
          key: draws t, eps (and z_0 for the reconstruction term).
          cond: labels [B] or None.
        """
        if self.is_vdm_bound:
            return self._vdm_losses(network, params, x0, key, cond)
        batch_size = x0.shape[0]
        key_t, key_eps = jax.random.split(key)
        process = self.make_process(params)
        t = self.draw_times(process, key_t, batch_size)
        eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
        alpha, sigma = process.alpha_sigma(t, x0.ndim)
        x_t = alpha * x0 + sigma * eps
        x0_hat = self.predict_x0(network, params, process, x_t, t, cond)
        log_snr = process.log_snr(t)
        log_density = self.log_density(process, log_snr) if self.weighting == "elbo" else None
        loss = weighting.per_level_loss(self.weighting, x0_hat, x0, None, None, log_snr, log_density=log_density,
                                        gamma=self.snr_gamma, sigma_data=self.sigma_data)
        return dict(loss=loss, mse=_flat_mean(jnp.square(x0_hat - x0)), log_snr=log_snr)

    def _vdm_losses(self, network: Network, params: Any, x0: jax.Array, key: jax.Array, cond: Any
                    ) -> dict[str, jax.Array]:
        """VDM's bound: diffusion loss L_inf + prior + reconstruction, bits/dim per example."""
        batch_size = x0.shape[0]
        key_t, key_eps, key_0 = jax.random.split(key, 3)
        t = vdm.sample_times(key_t, batch_size, antithetic=True, dtype=x0.dtype)
        eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
        eps_0 = jax.random.normal(key_0, x0.shape, x0.dtype)

        if self.gamma_schedule == "monotone":
            def schedule_values(p):
                module = self.schedule
                shape, dshape = jax.jvp(lambda s: module.apply({"params": p}, s, method="shape"), (t,), (jnp.ones_like(t),))
                ends = module.apply({"params": p}, method="endpoints")
                return (shape, dshape), ends
            values, ends = schedule_values(params["schedule"])
        else:
            process = self.make_process(params)
            gamma_t, dgamma_dt = vdm.gamma_and_derivative(process.gamma, t)
            values, ends = (gamma_t, dgamma_dt), process.gamma(jnp.array([0.0, 1.0], x0.dtype))

        def diffusion_loss(values, arguments):
            net_params, (gamma_0, gamma_1) = arguments
            if self.gamma_schedule == "monotone":
                shape, dshape = values
                gamma_t, dgamma_dt = gamma_0 + (gamma_1 - gamma_0) * shape, (gamma_1 - gamma_0) * dshape
            else:
                gamma_t, dgamma_dt = values
            z_t = vdm.diffuse(x0, gamma_t, eps)
            eps_hat = self.eps_prediction(network, net_params, z_t, gamma_t, cond)
            return vdm.continuous_diffusion_loss(eps, eps_hat, dgamma_dt)

        loss_fn = diffusion_loss
        if self.gamma_schedule == "monotone" and self.variance_gradient:
            loss_fn = vdm.with_variance_gradient(diffusion_loss)
        gamma_0, gamma_1 = ends[0], ends[1]
        terms = vdm.bound_terms(loss_fn(values, (params, (gamma_0, gamma_1))), x0, ends, eps_0,
                                discrete_data=self.discrete_data)
        gamma_t = gamma_0 + (gamma_1 - gamma_0) * values[0] if self.gamma_schedule == "monotone" else values[0]
        return dict(loss=terms.pop("total"), **terms, log_snr=-gamma_t)

    def eps_prediction(self, network: Network, net_params: Any, z_t: jax.Array, gamma_t: jax.Array, cond: Any = None
                       ) -> jax.Array:
        """eps_hat [B, ...] at z_t [B, ...] on the VP process with gamma_t [B] (VDM's variables), for
        any ``prediction``; the network is conditioned on lambda = -gamma_t only, whatever the
        schedule, so any schedule may be evaluated with one network (``scripts/loss_variance.py``)."""
        log_snr = -gamma_t
        if self.prediction == "eps":
            return network(net_params, z_t, noise_conditioning(log_snr), cond)
        log_alpha = expand_to_rank(-0.5 * jax.nn.softplus(gamma_t), z_t.ndim)
        log_sigma = expand_to_rank(-0.5 * jax.nn.softplus(-gamma_t), z_t.ndim)
        x0_hat = self._read(network, net_params, z_t, log_alpha, log_sigma, log_snr, cond)
        return (z_t - jnp.exp(log_alpha) * x0_hat) / jnp.exp(log_sigma)

    # ------------------------------------------------------------------ the family contract

    def init_state(self) -> Any:
        return ()

    def train_losses(self, network: Network, params: Any, x0: jax.Array, keys, cond: Any, state: Any):
        """``losses`` with ``keys[0]``; no state."""
        return self.losses(network, params, x0, keys[0], cond), state

    def check_choice(self, choice: Any) -> None:
        """A continuous-time model is sampled by a solver on a continuous grid."""
        if not choice.solver:
            raise ValueError("a continuous-time model is sampled by a solver (sample.solver, or SOLVER:K entries "
                             f"in eval.sample_steps), not by the discrete chain ({choice.label!r})")
        if choice.grid.startswith(DISCRETE_GRID_PREFIX):
            raise ValueError(f"the grid {choice.grid!r} strides a discrete chain; a continuous-time model takes "
                             f"one of {sorted(time_grids.GRIDS)}")
        choice.check(None)

    def num_steps(self, choice: Any) -> int:
        return choice.num_steps()

    def nfe(self, choice: Any) -> int:
        return choice.nfe()

    def make_draw(self, choice: Any, network: Network, guidance: Any, options) -> Draw:
        """A solver on this model's process; a drawn x_T is scaled to the prior at the grid's start."""
        return solver_draw(self, choice, network, guidance, options, scale_prior=True)

