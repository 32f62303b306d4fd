"""Diffusion on 2-D toy distributions with an MLP denoiser: seconds per run on a CPU.

    python launch.py --config experiments/toy2d.py --workdir runs/toy
    python launch.py --config experiments/toy2d.py:swiss_roll --workdir runs/swiss

Variant: the distribution (eight_gaussians (default), swiss_roll, checkerboard,
two_moons), optionally with ``,smoke`` for tests. Hardware: 2 CPU cores, about a minute
for 3000 steps. Expect: samples/step_3000.png, a scatter plot of samples over the data
in which the samples cover every mode of the data.
"""

from diffjax.run.config import base_config, set_model


def get_config(arg: str | None = None):
    name, _, smoke = (arg or "eight_gaussians").partition(",")
    config = base_config()
    config.experiment = "toy2d"
    config.data.name = name
    config.data.image_size = 0
    config.data.channels = 2
    config.data.random_flip = False
    set_model(config, "toy2d")  # the MLP denoiser: 128 wide, 3 residual blocks
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
        config.eval.num_samples = 64  # --mode=eval in seconds
    elif smoke:
        raise ValueError(f"unknown toy2d option {smoke!r}; use NAME or NAME,smoke")
    return config

