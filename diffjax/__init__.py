"""diffjax: diffusion models in JAX/Flax.

The pure diffusion math (``diffjax.diffusion``) is importable from the top level:

* ``schedules``: beta schedules, the float32 ``Schedule`` tables, respacing.
* ``processes``: noise processes in continuous time (VP-linear, VP-cosine, EDM, and every
  discrete schedule as ``discrete_process``): alpha_t, sigma_t, log-SNR and its inverse.
* ``time_grids``: solvers' time grids as data (uniform in t or log-SNR, Karras, quadratic,
  discrete), by name in ``GRIDS`` (``diffjax.time_grids.karras``, ...).
* ``parameterization``: ``DiffusionSpec``, how a denoiser's output is read, eps/x_0/v/score
  conversions (discrete and continuous).
* ``gaussian``: q(x_t | x_0), the posterior, ``p_mean_variance``.
* ``losses``: Gaussian KL, the discretised decoder, VLB terms, training objectives.
* ``timesteps``: uniform and loss-aware importance sampling of t.
* ``samplers``: DDPM ancestral and DDIM in ``lax.scan``, classifier-free guidance.
* ``solvers``: deterministic probability-flow ODE solvers in the continuous view (Euler,
  DDIM, EDM's Heun, DPM-Solver++ 2M and 3M, UniPC-2/3) and stochastic samplers (EDM's
  Algorithm 2, Euler ancestral, DPM-Solver++(2M) SDE, DDPM's ancestral step, score_sde's
  predictor-corrector), each a ``Solver`` record in ``SOLVERS`` (its step, NFE per step,
  options), run by ``solve`` over a time grid; ``x0_predictor`` makes a diffjax denoiser
  their data prediction, ``clip_x0`` and ``dynamic_threshold`` (Imagen) wrap it.
* model families (``diffjax.diffusion.families``): one object per kind of model (the
  discrete chain, continuous-time VP / EDM / VDM models, naive diffusion, a noise-conditional
  classifier) that owns its losses, data prediction, samplers and bounds.
* ``likelihood``: the full variational bound in bits/dim.

A denoiser is any ``denoise(params, x_t, t, cond) -> output`` with x_t [B, ...] and t
int32 [B] the step of the original T-step process; ``DiffusionSpec`` says how its output
is read. Networks live in ``diffjax.models``, data in ``diffjax.data``, training in
``diffjax.train``, metrics in ``diffjax.evaluation``, configs and entry points in
``diffjax.run``; ``docs/architecture.md`` draws the layers. Import those explicitly.
"""

from diffjax.diffusion import (
    gaussian,
    likelihood,
    losses,
    parameterization,
    processes,
    samplers,
    schedules,
    solvers,
    time_grids,
    timesteps,
)
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
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_v,
    predict_x0_from_eps,
    predict_x0_from_v,
    read_output,
    score_from_eps,
    score_from_x0,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_score,
    x0_from_v,
)
from diffjax.diffusion.processes import (
    EDM,
    PROCESSES,
    DiscreteVP,
    NoiseProcess,
    VPCosine,
    VPLinear,
    discrete_process,
    named_process,
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
from diffjax.diffusion.solvers import SOLVERS, solve, x0_predictor
from diffjax.diffusion.time_grids import GRIDS, discrete_grid
from diffjax.diffusion.timesteps import TimestepSampler, make_timestep_sampler

__all__ = [
    "BETA_SCHEDULES",
    "bpd",
    "classifier_free_guidance",
    "ddim_step",
    "ddpm_step",
    "DiffusionSpec",
    "discrete_grid",
    "discrete_process",
    "DiscreteVP",
    "discretized_gaussian_log_likelihood",
    "EDM",
    "eps_from_score",
    "eps_from_v",
    "eps_from_x0",
    "gaussian",
    "get_betas",
    "GRIDS",
    "likelihood",
    "losses",
    "make_schedule",
    "make_timestep_sampler",
    "named_process",
    "named_schedule",
    "NoiseProcess",
    "normal_kl",
    "Objective",
    "p_mean_variance",
    "parameterization",
    "predict_eps_from_v",
    "predict_eps_from_x0",
    "predict_v",
    "predict_x0_from_eps",
    "predict_x0_from_v",
    "Prediction",
    "prior_bpd",
    "PROCESSES",
    "processes",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "read_output",
    "respace",
    "sample",
    "samplers",
    "Schedule",
    "schedules",
    "solve",
    "SOLVERS",
    "solvers",
    "score_from_eps",
    "score_from_x0",
    "space_timesteps",
    "time_grids",
    "timesteps",
    "TimestepSampler",
    "training_losses",
    "v_from_x0_eps",
    "vb_terms_bpd",
    "VPCosine",
    "VPLinear",
    "x0_from_eps",
    "x0_from_score",
    "x0_from_v",
    "x0_predictor",
]

__version__ = "0.1.0"
