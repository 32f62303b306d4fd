"""Diffusion on 2-D toy distributions with an MLP denoiser: seconds per run on a CPU.

    python launch.py --config experiments/toy2d.py --workdir runs/toy
    python launch.py --config experiments/toy2d.py:swiss_roll --workdir runs/swiss

Variant: the distribution (eight_gaussians (default), swiss_roll, checkerboard,
two_moons), optionally with ``,smoke`` for tests. Hardware: 2 CPU cores, about a minute
for 3000 steps. Expect: samples/step_3000.png, a scatter plot of samples over the data
in which the samples cover every mode of the data.
"""

import jax.numpy as jnp

from diffjax.diffusion.gaussian import DiffusionSpec
from diffjax.models import MLPDenoiser
from diffjax.run.config import base_config
from diffjax.run.recipes import toy_recipe


def get_config(arg: str | None = None):
    name, _, smoke = (arg or "eight_gaussians").partition(",")
    config = base_config()
    config.experiment = "toy2d"
    config.data.name = name
    config.data.image_size = 0
    config.data.channels = 2
    config.data.random_flip = False
    config.model.name = "mlp"
    config.model.dropout = 0.0
    config.model.hidden = 128
    config.model.num_blocks = 3
    config.diffusion.schedule = "cosine"
    config.diffusion.timesteps = 1000
    config.train.batch_size = 256
    config.train.num_steps = 3000
    config.train.lr = 1e-3
    config.train.warmup_steps = 100
    config.train.ema_decay = 0.99
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.train.sample_every = 1000
    config.sample.num = 1000
    config.sample.steps = "ddim100"
    config.sample.clip_denoised = False  # toy data are not in [-1, 1]
    if smoke == "smoke":
        config.train.num_steps = 4
        config.train.log_every = config.train.checkpoint_every = 2
        config.train.sample_every = 4
        config.sample.steps = "ddim5"
        config.sample.num = 16
    elif smoke:
        raise ValueError(f"unknown toy2d option {smoke!r}; use NAME or NAME,smoke")
    return config


def build(config):
    spec = DiffusionSpec(config.diffusion.mean_type, config.diffusion.var_type)
    model = MLPDenoiser(
        hidden=config.model.hidden,
        num_blocks=config.model.num_blocks,
        out_dim=spec.output_channels(config.data.channels),
        dropout=config.model.dropout,
        num_classes=config.data.num_classes or None,
        dtype=jnp.dtype(config.model.dtype),
    )
    return toy_recipe(config, model)
