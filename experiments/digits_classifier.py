"""A noise-conditional classifier of the 8x8 digits, for classifier guidance (Dhariwal & Nichol 2021).

    python launch.py --config experiments/digits_classifier.py --workdir runs/digits_classifier
    python launch.py --config experiments/digits_classifier.py --workdir runs/digits_classifier --mode=eval
    python launch.py --config experiments/digits_ddpm.py --workdir runs/digits --mode=sample \
        --config.sample.classifier_workdir=runs/digits_classifier --config.sample.classifier_scale=2

p_phi(y | x_t, t): the digits UNet's encoder half (32 channels, multipliers 1, 2, attention at
4x4, the middle block) with a pooled linear head (``models/classifier.py``; 318,090
parameters), trained by cross-entropy on digits noised by the default experiment's chain
(linear, T = 1000) at t uniform over its steps (``diffusion/noisy_classifier.py``). It is told the
noise level as the log-SNR, so it guides the samplers of the discrete and the continuous-time
models alike. Trained with the launch machinery (Orbax checkpoints, exact resume, EMA: the EMA
params guide); ``--mode=eval`` writes ``eval/classifier.json``, the test accuracy per band of
100 steps.

Hardware: 2 CPU cores, about 3 minutes (4000 steps at ~27 steps/s). Variant ``smoke`` (a few steps, for tests).
"""

from diffjax.run.config import set_family, set_model
from diffjax.run.experiments import load_experiment


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r} of digits_classifier; known: smoke")
    config = load_experiment("digits_ddpm").get_config(arg)
    config.experiment = "digits_classifier"
    set_family(config, "classifier", schedule=config.diffusion.schedule, timesteps=config.diffusion.timesteps)
    config.data.num_classes = 10
    set_model(config, "digits_classifier")
    config.model.class_dropout = 0.0
    config.eval.elbo_draws = 4  # noisy copies of each test digit per band
    config.eval.nll_chain = ""  # no bound (digits_ddpm's smoke variant sets the discrete chain's)
    if arg != "smoke":
        config.train.num_steps = 4000
        config.train.checkpoint_every = 1000
    return config
