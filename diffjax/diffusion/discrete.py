"""The discrete family: DDPM's T-step chain (Ho et al. 2020) with improved DDPM's options
(Nichol & Dhariwal 2021): a beta schedule, how the output is read (eps / x0 / v mean, fixed or
learned variance), the objective (L_simple, L_hybrid, L_vlb, with a weighting), uniform or
loss-aware importance-sampled t, and whether the network sees t or t * 1000 / T.

It samples with its own chain (DDPM ancestral or DDIM on a respaced schedule,
``samplers.sample``) or with any continuous-time solver on its continuous view
(``processes.discrete_process``: the network called at fractional steps between the trained
ones), and supports all three bounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from diffjax.diffusion.families.base import Draw, Network, check_one_of
from diffjax.diffusion.families.gaussian import solver_draw, standard_prior
from diffjax.diffusion.gaussian import q_sample
from diffjax.diffusion.losses import OBJECTIVES, WEIGHTINGS, Objective, training_losses
from diffjax.diffusion.parameterization import MEAN_TYPES, VAR_TYPES, DiffusionSpec, split_output, x0_from_mean_part
from diffjax.diffusion.processes import DiscreteVP, discrete_process
from diffjax.diffusion.samplers import sample
from diffjax.diffusion.schedules import BETA_SCHEDULES, Schedule, named_schedule, respace, space_timesteps
from diffjax.diffusion.timesteps import TIMESTEP_SAMPLERS, TimestepSampler, make_timestep_sampler

__all__ = ["DiscreteDiffusion"]


@dataclasses.dataclass(frozen=True)
class DiscreteDiffusion:
    """A model of the T-step chain.

    Attributes:
      schedule: the chain's tables (``schedules.named_schedule``).
      spec: how the network's output is read (``prediction`` = mean type, ``var_type``).
      objective: the training objective (name, VLB rescaling, weighting, min-SNR gamma).
      timestep_sampler: how training steps t are drawn (uniform or loss-aware).
      rescale_timesteps: feed the network t * 1000 / T (improved DDPM), else the step t.
    """

    schedule: Schedule
    spec: DiffusionSpec
    objective: Objective
    timestep_sampler: TimestepSampler
    rescale_timesteps: bool = False

    name: ClassVar[str] = "discrete"
    gaussian: ClassVar[bool] = True
    draws_samples: ClassVar[bool] = True
    bounds: ClassVar[tuple[str, ...]] = ("nll", "elbo", "ode_nll")
    learned_process: ClassVar[bool] = False
    CONFIG: ClassVar[Mapping[str, Any]] = {
        "schedule": "linear",  # a beta schedule of schedules.BETA_SCHEDULES
        "timesteps": 1000,  # T
        "prediction": "eps",  # the mean part: eps, x0 or v
        "var_type": "fixed_large",  # fixed_small, fixed_large, learned, learned_range
        "objective": "simple",  # simple, hybrid, vlb
        "rescale_vlb": True,  # weight the sampled VLB term to estimate the paper's quantity
        "weighting": "none",  # the MSE's weight: none, min_snr, snr
        "snr_gamma": 5.0,  # min-SNR's gamma
        "timestep_sampler": "uniform",  # uniform or loss_second_moment (improved DDPM's importance sampling)
        "rescale_timesteps": False,  # the network sees t * 1000 / T (improved DDPM)
    }

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **context) -> DiscreteDiffusion:
        """The model of ``config.diffusion``'s values; ``ValueError`` names a bad one."""
        v = {**cls.CONFIG, **values}
        for key, allowed in (("schedule", BETA_SCHEDULES), ("prediction", MEAN_TYPES), ("var_type", VAR_TYPES),
                             ("objective", OBJECTIVES), ("weighting", WEIGHTINGS),
                             ("timestep_sampler", TIMESTEP_SAMPLERS)):
            check_one_of(key, v[key], allowed)
        for key in ("rescale_vlb", "rescale_timesteps"):
            if not isinstance(v[key], bool):
                raise ValueError(f"{key}: must be True or False, got {v[key]!r}")
        if not v["snr_gamma"] > 0:
            raise ValueError(f"snr_gamma: must be positive, got {v['snr_gamma']}")
        if not isinstance(v["timesteps"], int) or v["timesteps"] < 2:
            raise ValueError(f"timesteps: must be an integer >= 2, got {v['timesteps']!r}")
        if v["schedule"] == "linear" and v["timesteps"] < 50:
            raise ValueError("timesteps: the linear schedule needs T >= 50 (its betas are scaled by 1000/T)")
        spec = DiffusionSpec(v["prediction"], v["var_type"])
        if v["objective"] == "hybrid" and not spec.learns_variance:
            raise ValueError(f"var_type: the hybrid objective trains the variance: use learned or learned_range, "
                             f"not {v['var_type']!r}")
        schedule = named_schedule(v["schedule"], v["timesteps"])
        return cls(
            schedule=schedule, spec=spec,
            objective=Objective(v["objective"], rescale_vlb=v["rescale_vlb"], weighting=v["weighting"],
                                snr_gamma=v["snr_gamma"]),
            timestep_sampler=make_timestep_sampler(v["timestep_sampler"], schedule.num_timesteps),
            rescale_timesteps=bool(v["rescale_timesteps"]),
        )

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def output_channels(self, data_channels: int) -> int:
        return self.spec.output_channels(data_channels)

    # ------------------------------------------------------------------ the network

    def network_time(self, t: jax.Array) -> jax.Array:
        """What the network is told of a step t [B] of the original chain (integer, or
        fractional on the continuous view): t * 1000 / T as float32, or t as it is."""
        if self.rescale_timesteps:
            return t.astype(jnp.float32) * (1000.0 / self.schedule.original_num_timesteps)
        return t

    def chain_denoiser(self, network: Network):
        """``denoise(params, x_t, t, cond)`` called with original steps t [B] (the chain's and the
        T-step bound's denoiser contract)."""

        def denoise(params, x, t, cond):
            return network(params, x, self.network_time(t), cond)

        return denoise

    def noise_process(self, params: Any = None) -> DiscreteVP:
        """The chain's continuous view (``processes.discrete_process``)."""
        del params
        return discrete_process(self.schedule)

    def predict_x0(self, network: Network, params: Any, process: DiscreteVP, x: jax.Array, t: jax.Array,
                   cond: Any = None) -> jax.Array:
        """x0_hat [B, ...] at the time t of the continuous view, a scalar (a solver's: alpha_t and
        sigma_t are computed once) or one per example [B] (a likelihood's): the network at the
        fractional step ``process.model_timestep(t)``, its mean part read per ``spec`` (a learned
        variance is ignored)."""
        t_batch = jnp.full(x.shape[:1], t, dtype=t.dtype) if t.ndim == 0 else t
        output = network(params, x, self.network_time(process.model_timestep(t_batch)), cond)
        alpha, sigma = process.alpha_sigma(t) if t.ndim == 0 else process.alpha_sigma(t, x.ndim)
        return x0_from_mean_part(self.spec, x, split_output(self.spec, output, x.shape)[0], alpha, sigma)

    # ------------------------------------------------------------------ training

    def init_state(self) -> Any:
        return self.timestep_sampler.init()

    def train_losses(self, network: Network, params: Any, x0: jax.Array, keys, cond: Any, state: Any):
        """Improved DDPM's ``training_losses`` at importance-sampled t: ``loss`` [B] carries the
        importance weights; the state is the sampler's, updated with the unweighted losses."""
        key_t, key_noise = keys
        t, weights = self.timestep_sampler.sample(state, key_t, x0.shape[0])
        noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
        x_t = q_sample(self.schedule, x0, t, noise)
        output = self.chain_denoiser(network)(params, x_t, self.schedule.timestep_map[t], cond)
        terms = training_losses(self.spec, self.objective, self.schedule, output, x0, x_t, t, noise)
        new_state = self.timestep_sampler.update(state, t, jax.lax.stop_gradient(terms["loss"]))
        return {**terms, "loss": weights * terms["loss"]}, new_state

    # ------------------------------------------------------------------ sampling

    def check_choice(self, choice: Any) -> None:
        choice.check(self.num_timesteps)
        if not choice.solver:
            space_timesteps(self.num_timesteps, choice.steps)

    def num_steps(self, choice: Any) -> int:
        if choice.solver:
            return choice.num_steps()
        return respace(self.schedule, choice.steps)[0].num_timesteps

    def nfe(self, choice: Any) -> int:
        return choice.nfe() if choice.solver else self.num_steps(choice)

    def make_draw(self, choice: Any, network: Network, guidance: Any, options: Mapping[str, float]) -> Draw:
        """A solver on the continuous view, or the chain respaced by ``choice.steps``."""
        if choice.solver:
            return solver_draw(self, choice, network, guidance, options, scale_prior=False)
        chain, _ = respace(self.schedule, choice.steps)

        def fn(params, key, labels, guidance_weight, classifier_args, x_T, drawn, traced):
            denoise = self.chain_denoiser(guidance.network(network, guidance_weight))
            return sample(
                denoise, params, chain, self.spec, jax.random.fold_in(key, 1), x_T.shape, guidance.model_cond(labels),
                method=choice.method, eta=traced["eta"], clip_denoised=choice.clip_denoised, x_T=x_T,
                **guidance.chain_arguments(chain, labels, classifier_args),
            )

        return Draw(fn=fn, traced={"eta": jnp.float32(choice.eta)}, prior=standard_prior)


