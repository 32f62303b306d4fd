"""EDM (Karras et al. 2022) on 8x8 digits, at the default DDPM's budget.

    python launch.py --config experiments/digits_edm.py --workdir runs/digits_edm
    python launch.py --config experiments/digits_edm.py --workdir runs/digits_edm --mode=eval

Variant: optionally ``toy2d`` (the 8-Gaussians toy with the MLP denoiser) and ``smoke`` (a few
steps, for tests), comma-separated.

Everything but the diffusion is the default experiment's (``digits_ddpm``; toy2d: ``toy2d``'s).
The diffusion is EDM's (Table 1, EDM column): variance exploding, the network preconditioned by
c_skip, c_out, c_in with sigma_data = 0.5, trained at ln sigma ~ N(-1.2, 1.2^2) with the loss
weight lambda(sigma) = (sigma^2 + sigma_d^2)/(sigma sigma_d)^2 (``diffusion/continuous.py``).
Sampling: EDM's deterministic sampler, Heun on the Karras grid (rho = 7) from sigma = 80: 17
steps, 35 NFE (EDM's count for 18 grid points). Hardware: 2 CPU cores, about 6 minutes for
training. ``--mode=eval``: the continuous bound and the probability-flow ODE bound, FD-digits
against NFE.
"""

from diffjax.run.config import set_family
from diffjax.run.experiments import comparison_base, load_experiment


def get_config(arg: str | None = None):
    config, words = comparison_base(arg, "digits_edm")
    smoke = "smoke" in words
    set_family(config, "continuous", process="edm", prediction="edm", weighting="edm", noise_sampler="log_normal")
    load_experiment("digits_vdm").set_continuous_sampling(config, smoke)
    config.sample.solver = "heun"
    config.sample.steps = "2" if smoke else "17"
    config.sample.grid = "karras"
    if not smoke:
        config.eval.sample_steps = "heun:2:karras heun:4:karras heun:9:karras heun:17:karras dpmpp_2m:10:karras dpmpp_2m:20:karras"
    return config
