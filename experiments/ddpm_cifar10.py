"""DDPM on CIFAR-10 (Ho et al. 2020): the paper's unconditional model and recipe.

    python launch.py --config experiments/ddpm_cifar10.py --workdir gs://bucket/ddpm_cifar10

Hardware: the paper used a TPU v3-8 (21 steps/s, 10.6 h for 800k steps). Expect: FID
3.17, IS 9.46, NLL <= 3.75 bits/dim (Table 1/2, checkpoint of minimum FID).
Data: tfds ``cifar10`` prepared in config.data.data_dir. Variant ``smoke``: the recipe at tiny
width on the offline digits, for tests (``set_smoke``).

Model: 35,746,307 parameters (128 ch, mult 1,2,2,2, 2 res blocks, attention at 16x16,
dropout 0.1). Diffusion: linear betas 1e-4..0.02, T=1000, eps prediction, L_simple,
fixed variance (DDPM's CIFAR-10 run sampled with beta: fixed_large). Adam lr 2e-4, 5000
warmup steps, global-norm clip 1, batch 128, EMA 0.9999, random flips.
"""

from diffjax.run.config import base_config, set_model
from diffjax.run.experiments import load_experiment


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"ddpm_cifar10 has no variants but smoke (got {arg!r}); use --config.KEY=VALUE overrides")
    config = base_config()  # DDPM's CIFAR-10 recipe is the base
    config.experiment = "ddpm_cifar10"
    set_model(config, "ddpm_cifar10")  # the base config's network too; named here for the reader
    if arg == "smoke":
        set_smoke(config)
    return config


def set_smoke(config) -> None:
    """The smoke variant of a paper-scale experiment (tests/e2e/): its recipe (diffusion,
    objective, optimiser, the network's kind of blocks) at tiny size (8 channels, one residual
    block per level: compiling it is most of a smoke run's time) on the 8x8 digits, which are
    built offline (the paper's data sets must be prepared first), with the digits experiments'
    smoke budget. 8x8 images have room for three levels (8, 4, 2): the first three channel
    multipliers are kept, and attention moves to the 4x4 level."""
    config.data.update(name="digits", image_size=8, channels=1, random_flip=False)
    config.model.update(channels=8, norm_groups=4, channel_mult=tuple(config.model.channel_mult[:3]),
                        num_res_blocks=1, attention_resolutions=(4,))
    load_experiment("digits_ddpm").set_smoke(config)
