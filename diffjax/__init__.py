"""diffjax: diffusion models in JAX/Flax.

The pure diffusion math (``diffjax.diffusion``) is importable from the top level:

* ``schedules``: beta schedules, the float32 ``Schedule`` tables, respacing.
* ``parameterization``: ``DiffusionSpec``, how a denoiser's output is read, eps/x_0/v conversions.
* ``gaussian``: q(x_t | x_0), the posterior, ``p_mean_variance``.
* ``losses``: Gaussian KL, the discretised decoder, VLB terms, training objectives.
* ``timesteps``: uniform and loss-aware importance sampling of t.
* ``samplers``: DDPM ancestral and DDIM in ``lax.scan``, classifier-free guidance.
* ``likelihood``: the full variational bound in bits/dim.

A denoiser is any ``denoise(params, x_t, t, cond) -> output`` with x_t [B, ...] and t
int32 [B] the step of the original T-step process; ``DiffusionSpec`` says how its output
is read. Networks live in ``diffjax.models``, data in ``diffjax.data``, training in
``diffjax.train``, metrics in ``diffjax.evaluation``, configs and entry points in
``diffjax.run``; ``docs/architecture.md`` draws the layers. Import those explicitly.
"""

from diffjax.diffusion import gaussian, likelihood, losses, parameterization, samplers, schedules, timesteps
from diffjax.diffusion.gaussian import p_mean_variance, q_mean_variance, q_posterior_mean_variance, q_sample
from diffjax.diffusion.likelihood import bpd
from diffjax.diffusion.losses import (
    Objective,
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_bpd,
    training_losses,
    vb_terms_bpd,
)
from diffjax.diffusion.parameterization import (
    DiffusionSpec,
    Prediction,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_v,
    predict_x0_from_eps,
    predict_x0_from_v,
    read_output,
)
from diffjax.diffusion.samplers import classifier_free_guidance, ddim_step, ddpm_step, sample
from diffjax.diffusion.schedules import (
    BETA_SCHEDULES,
    Schedule,
    get_betas,
    make_schedule,
    named_schedule,
    respace,
    space_timesteps,
)
from diffjax.diffusion.timesteps import TimestepSampler, make_timestep_sampler

__all__ = [
    "BETA_SCHEDULES",
    "bpd",
    "classifier_free_guidance",
    "ddim_step",
    "ddpm_step",
    "DiffusionSpec",
    "discretized_gaussian_log_likelihood",
    "gaussian",
    "get_betas",
    "likelihood",
    "losses",
    "make_schedule",
    "make_timestep_sampler",
    "named_schedule",
    "normal_kl",
    "Objective",
    "p_mean_variance",
    "parameterization",
    "Prediction",
    "predict_eps_from_v",
    "predict_eps_from_x0",
    "predict_v",
    "predict_x0_from_eps",
    "predict_x0_from_v",
    "prior_bpd",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "read_output",
    "respace",
    "sample",
    "samplers",
    "Schedule",
    "schedules",
    "space_timesteps",
    "timesteps",
    "TimestepSampler",
    "training_losses",
    "vb_terms_bpd",
]

__version__ = "0.1.0"
