"""Naive diffusion on 8x8 digits: the math-free baseline, at the default DDPM's budget.

    python launch.py --config experiments/digits_naive.py --workdir runs/digits_naive
    python launch.py --config experiments/digits_naive.py --workdir runs/digits_naive --mode=eval

Variant: optionally ``toy2d`` (the 8-Gaussians toy with the MLP denoiser) and ``smoke``,
comma-separated.

Where diffusion tutorials start, before any Gaussian: each level replaces a growing fraction of
the pixels by uniform noise (K = 100 nested levels), the network is trained to undo one level
(MSE to the one-level-cleaner image), and sampling applies it K times from pure noise
(``diffusion/naive.py``). Everything else is the default experiment's (``digits_ddpm``), so it is
the reference point of docs/results_objectives.md. No likelihood bound applies to it.
Hardware: 2 CPU cores, about 6 minutes for training.
"""

from diffjax.run.config import set_family
from diffjax.run.experiments import comparison_base


def get_config(arg: str | None = None):
    config, words = comparison_base(arg, "digits_naive")
    smoke = "smoke" in words
    set_family(config, "naive", num_levels=5 if smoke else 100)
    config.sample.solver = ""
    config.sample.steps = ""  # every level: K network calls
    config.eval.sample_steps = "" if smoke else "20 50 100"
    config.eval.nll_chain = ""  # no bound (the smoke base, digits_ddpm's, sets the discrete chain's)
    return config
