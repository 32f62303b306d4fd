"""Class-conditional DDPM on 8x8 digits, trained with label dropout for classifier-free guidance.

    python launch.py --config experiments/digits_cond.py --workdir runs/digits_cond
    python launch.py --config experiments/digits_cond.py --workdir runs/digits_cond --mode=sample \
        --config.sample.guidance_weight=2 --config.sample.num=1000

The default experiment (``digits_ddpm``: the 0.7M UNet, linear T = 1000, eps, L_simple, 1200
steps) with the label as input: the UNet adds a learned embedding of the class (11 rows: the
ten digits and the null class 10) to its timestep embedding. In training each label is replaced
by the null class with probability ``model.class_dropout`` = 0.1 (Ho & Salimans 2021 use 0.1
and 0.2), so one network learns both the conditional eps(x_t, y) and the unconditional
eps(x_t, null); sampling with ``sample.guidance_weight`` = w uses
(1 + w) eps(x_t, y) - w eps(x_t, null) (w = 0: the conditional model, unguided).
Samples of a conditional model are drawn for the labels 0, 1, 2, ... cycling, so a grid of
``sample.num`` = 100 (10 per row) has one class per column.

Hardware: 2 CPU cores, about 6 minutes (the default experiment's cost: the class embedding
adds 1,408 parameters). Variant ``smoke`` (a few steps, for tests). docs/results_guidance.md
measures the guidance trade-off of this model.
"""

from diffjax.run.experiments import load_experiment


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r} of digits_cond; known: smoke")
    config = load_experiment("digits_ddpm").get_config(arg)
    config.experiment = "digits_cond"
    config.data.num_classes = 10
    config.model.class_dropout = 0.1
    if arg != "smoke":
        config.sample.num = 100
    return config
