"""Improved DDPM's comparisons at small scale: objectives x schedules on 8x8 digits.

    python launch.py --config experiments/digits_iddpm.py:hybrid_cosine --workdir runs/digits_iddpm/hybrid_cosine
    python launch.py --config experiments/digits_iddpm.py:hybrid_cosine --workdir runs/digits_iddpm/hybrid_cosine --mode=eval

Variant ``OBJECTIVE_SCHEDULE``, OBJECTIVE in {simple, hybrid, vlb}, SCHEDULE in {linear,
cosine}, optionally ``,smoke`` (a few steps, for tests). ``scripts/reproduce_digits.sh`` trains and evaluates all six and writes the table
of docs/results_digits.md. Hardware: 2 CPU cores, about 6-8 minutes per run (training and
evaluation).

Everything but the objective and the schedule is shared, so the budget is equal: the
digits UNet (learned-range variance for hybrid and vlb: 2 output channels; fixed_large for
simple, improved DDPM's default without learned sigma), T = 1000, eps prediction, timesteps
rescaled as improved DDPM does, 800 Adam steps at batch 128, lr 1e-3 after 200 warmup
steps, EMA 0.995. vlb draws t with the loss-second-moment importance sampler. Evaluation:
the full 1000-term bound on the first 100 test digits, and FD-digits of 200 samples drawn
with the strided ancestral sampler (which uses the learned variance) at 1000, 100, 50 and
25 steps.
"""

from diffjax.run.config import base_config, set_family, set_model
from diffjax.run.experiments import load_experiment

OBJECTIVES = ("simple", "hybrid", "vlb")
SCHEDULES = ("linear", "cosine")


def get_config(arg: str | None = None):
    variant, _, smoke = (arg or "").partition(",")
    if smoke not in ("", "smoke"):
        raise ValueError(f"unknown option {smoke!r} of digits_iddpm: use OBJECTIVE_SCHEDULE or OBJECTIVE_SCHEDULE,smoke")
    objective, _, schedule = (variant or "hybrid_cosine").partition("_")
    if objective not in OBJECTIVES or schedule not in SCHEDULES:
        raise ValueError(f"variant must be OBJECTIVE_SCHEDULE with OBJECTIVE in {OBJECTIVES} and SCHEDULE in {SCHEDULES}; got {arg!r}")
    config = base_config()
    config.experiment = "digits_iddpm"
    config.runtime.xla_cpu_ynn_fusions = ""  # measured fastest for this small UNet (diffjax/runtime/xla_cpu.py)
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.random_flip = False
    set_model(config, "digits")
    set_family(config, "discrete", schedule=schedule, timesteps=1000, objective=objective,
               var_type="fixed_large" if objective == "simple" else "learned_range",
               timestep_sampler="loss_second_moment" if objective == "vlb" else "uniform", rescale_timesteps=True)
    config.train.batch_size = 128
    config.train.num_steps = 800
    config.train.lr = 1e-3
    config.train.warmup_steps = 200
    config.train.ema_decay = 0.995
    config.train.log_every = 50
    config.train.checkpoint_every = 400
    config.train.sample_every = 800
    config.sample.method = "ddpm"
    config.sample.steps = "100"
    config.sample.num = 64
    config.eval.batch_size = 100
    config.eval.num_examples = 100
    config.eval.sample_steps = "1000 100 50 25"
    config.eval.num_samples = 200
    if smoke:  # digits_ddpm's smoke budget; the strided ancestral sampler at 5 steps
        load_experiment("digits_ddpm").set_smoke(config)
        config.sample.steps = config.eval.sample_steps = "5"
    return config
