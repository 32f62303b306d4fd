"""Variational diffusion models (Kingma et al. 2021) on 8x8 digits, at the default DDPM's budget.

    python launch.py --config experiments/digits_vdm.py:fixed --workdir runs/digits_vdm/fixed
    python launch.py --config experiments/digits_vdm.py:learned --workdir runs/digits_vdm/learned
    python launch.py --config experiments/digits_vdm.py:learned --workdir runs/digits_vdm/learned --mode=eval

Variant: comma-separated words, the schedule (``fixed`` (default): fixed linear gamma from
-13.3 to 5; ``learned_linear``: its two ends learned by the bound; ``learned``: VDM's monotone
network with learned ends and its shape trained by the variance gradient), optionally ``toy2d``
(the 8-Gaussians toy with the MLP denoiser instead of digits) and ``smoke`` (a few steps, for
tests).

Everything but the diffusion is the default experiment's (``digits_ddpm``: the 0.7M digits
UNet, 1200 Adam steps at batch 128, lr 1e-3, EMA 0.995; toy2d: ``toy2d``'s), so the comparison
of docs/results_objectives.md is at one budget. The objective is VDM's bound in bits/dim
(continuous-time diffusion loss + prior + reconstruction, eps prediction, low-discrepancy
times; ``diffusion/continuous.py``). Hardware: 2 CPU cores, about 6 minutes for training.
Sampling: DPM-Solver++(2M), 20 steps on the uniform log-SNR grid. ``--mode=eval``: the
continuous VDM bound and the probability-flow ODE bound on the test digits, FD-digits against
NFE.
"""

from diffjax.run.config import set_family
from diffjax.run.experiments import comparison_base

SCHEDULES = {"fixed": "fixed_linear", "learned_linear": "learned_linear", "learned": "monotone"}


def get_config(arg: str | None = None):
    config, words = comparison_base(arg, "digits_vdm", tuple(SCHEDULES))
    smoke = "smoke" in words
    schedule = next((w for w in words if w in SCHEDULES), "fixed")
    set_family(config, "continuous", process="vdm", prediction="eps", weighting="elbo",
               gamma_schedule=SCHEDULES[schedule], schedule_hidden=8 if smoke else 1024)
    set_continuous_sampling(config, smoke)
    return config


def set_continuous_sampling(config, smoke: bool) -> None:
    """The sampling and evaluation settings shared by the continuous-time digits experiments."""
    config.sample.solver = "dpmpp_2m"
    config.sample.steps = "3" if smoke else "20"
    config.sample.grid = "uniform_log_snr"
    config.eval.sample_steps = "heun:2" if smoke else "dpmpp_2m:5 dpmpp_2m:10 dpmpp_2m:20 heun:10 dpmpp_2m_sde:20"
    config.eval.elbo = True
    if smoke:
        config.eval.nll_chain = ""  # the discrete chain's bound: the smoke base's is digits_ddpm's
