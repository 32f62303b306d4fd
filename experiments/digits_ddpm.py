"""DDPM on scikit-learn's 8x8 digits: the default experiment, made for a laptop CPU.

    python launch.py --config experiments/digits_ddpm.py --workdir runs/digits

Hardware: 2 CPU cores, 5.5 minutes measured for the whole run (1200 steps at ~4.2 steps/s,
compile and sampling included; peak RSS 2.0 GB). No download: the digits tfds set is built
locally on first use. Expect: recognisable digits in runs/digits/samples/step_1200.png
(100-step DDIM from the EMA params).
Variant ``:smoke`` (a few steps, for tests).

The UNet is 0.7M parameters (32 channels, multipliers 1,2, attention at 4x4); the
diffusion is DDPM's (linear T=1000, eps, L_simple); a higher learning rate and a short
EMA make 1200 steps enough (800 steps already give mostly recognisable digits in
docs/results_digits.md's runs).
"""

from diffjax.run.config import base_config, set_model


def get_config(arg: str | None = None):
    config = base_config()
    config.experiment = "digits_ddpm"
    config.runtime.xla_cpu_ynn_fusions = ""  # measured fastest for this small UNet (diffjax/runtime/xla_cpu.py)
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.random_flip = False  # digits are not mirror-symmetric
    set_model(config, "digits")
    config.train.batch_size = 128
    config.train.num_steps = 1200
    config.train.lr = 1e-3
    config.train.warmup_steps = 200
    config.train.ema_decay = 0.995
    config.train.log_every = 50
    config.train.checkpoint_every = 400
    config.train.sample_every = 400
    config.sample.steps = "ddim100"
    config.sample.num = 64
    config.eval.batch_size = 297
    if arg == "smoke":
        set_smoke(config)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of digits_ddpm; known: smoke")
    return config


def set_smoke(config) -> None:
    """The smoke variant's budget, shared by the digits experiments (tests/e2e/): 4 steps at
    batch 16, 8 samples of 5 DDIM steps; ``--mode=eval`` takes seconds: a 10-step respacing of
    the bound (``eval.nll_chain``; a discrete model's only, so the other families' smoke
    variants clear it) on 16 test digits, and 16 samples."""
    config.train.batch_size = 16
    config.train.num_steps = 4
    config.train.warmup_steps = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.train.sample_every = 4
    config.sample.steps = "ddim5"
    config.sample.num = 8
    config.eval.batch_size = 16
    config.eval.num_examples = 16
    config.eval.nll_chain = "10"
    config.eval.num_samples = 16
