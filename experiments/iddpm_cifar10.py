"""Improved DDPM on CIFAR-10 (Nichol & Dhariwal 2021): objectives x schedules.

    python launch.py --config experiments/iddpm_cifar10.py:hybrid_cosine --workdir runs/iddpm_c10
    python launch.py --config experiments/iddpm_cifar10.py:vlb_cosine --workdir runs/iddpm_c10_vlb

Variant ``OBJECTIVE_SCHEDULE`` with OBJECTIVE in {simple, hybrid, vlb} and SCHEDULE in
{linear, cosine} (default ``hybrid_cosine``, the released ``cifar10_uncond_50M_500K``), optionally
``,smoke`` (the recipe at tiny width on the offline digits, for tests: ``ddpm_cifar10.set_smoke``).
Hardware: GPU/TPU; the release trained 500k steps at batch 128. Expect (paper, T=4000,
hybrid+cosine): NLL about 2.94 bits/dim, FID about 2.9 with 4000 steps and near its best
with 100 sampling steps.

Model: 52,546,438 parameters with learned sigma (128 ch, mult 1,2,2,2, 3 res blocks,
attention at 16 and 8 with 4 heads, scale-shift norm, dropout 0.3). Diffusion: T=4000,
eps prediction; ``simple`` uses fixed_large (the code's default without learned sigma),
``hybrid`` and ``vlb`` learn the variance range. ``vlb`` draws t with the
loss-second-moment importance sampler. AdamW lr 1e-4, no warmup, no clipping, EMA
0.9999, timesteps rescaled to 0..1000, no random flips (the released loader used none).
"""

from diffjax.run.config import base_config, set_family, set_model
from diffjax.run.experiments import load_experiment

OBJECTIVES = ("simple", "hybrid", "vlb")
SCHEDULES = ("linear", "cosine")


def improved_ddpm(config, arg: str | None):
    """Apply improved DDPM's recipe and the ``OBJECTIVE_SCHEDULE`` variant to ``config``."""
    objective, _, schedule = (arg or "hybrid_cosine").partition("_")
    if objective not in OBJECTIVES or schedule not in SCHEDULES:
        raise ValueError(f"variant must be OBJECTIVE_SCHEDULE with OBJECTIVE in {OBJECTIVES} and SCHEDULE in {SCHEDULES}; got {arg!r}")
    config.data.random_flip = False
    set_family(config, "discrete", timesteps=4000, schedule=schedule, objective=objective,
               var_type="fixed_large" if objective == "simple" else "learned_range",
               timestep_sampler="loss_second_moment" if objective == "vlb" else "uniform", rescale_timesteps=True)
    config.train.lr = 1e-4
    config.train.warmup_steps = 0
    config.train.grad_clip = 0.0
    config.train.num_steps = 500_000
    config.sample.method = "ddpm"
    config.sample.steps = "100"
    return config


def get_config(arg: str | None = None):
    variant, smoke = split_smoke(arg)
    config = improved_ddpm(base_config(), variant)
    config.experiment = "iddpm_cifar10"
    set_model(config, "iddpm_cifar10")
    if smoke:
        load_experiment("ddpm_cifar10").set_smoke(config)
    return config


def split_smoke(arg: str | None) -> tuple[str | None, bool]:
    """``OBJECTIVE_SCHEDULE[,smoke]`` as (the variant, whether ``smoke`` was given): the smoke
    variant is the recipe at tiny width on the digits (``ddpm_cifar10.set_smoke``)."""
    variant, _, smoke = (arg or "").partition(",")
    if smoke not in ("", "smoke"):
        raise ValueError(f"unknown option {smoke!r}: use OBJECTIVE_SCHEDULE or OBJECTIVE_SCHEDULE,smoke")
    return variant or None, smoke == "smoke"
