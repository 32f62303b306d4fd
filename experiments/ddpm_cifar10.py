"""DDPM on CIFAR-10 (Ho et al. 2020): the paper's unconditional model and recipe.

    python launch.py --config experiments/ddpm_cifar10.py --workdir gs://bucket/ddpm_cifar10

Hardware: the paper used a TPU v3-8 (21 steps/s, 10.6 h for 800k steps). Expect: FID
3.17, IS 9.46, NLL <= 3.75 bits/dim (Table 1/2, checkpoint of minimum FID).
Data: tfds ``cifar10`` prepared in config.data.data_dir.

Model: 35,746,307 parameters (128 ch, mult 1,2,2,2, 2 res blocks, attention at 16x16,
dropout 0.1). Diffusion: linear betas 1e-4..0.02, T=1000, eps prediction, L_simple,
fixed variance (DDPM's CIFAR-10 run sampled with beta: fixed_large). Adam lr 2e-4, 5000
warmup steps, global-norm clip 1, batch 128, EMA 0.9999, random flips.
"""

from diffjax.run.config import base_config, set_model


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"ddpm_cifar10 has no variants (got {arg!r}); use --config.KEY=VALUE overrides")
    config = base_config()  # DDPM's CIFAR-10 recipe is the base
    config.experiment = "ddpm_cifar10"
    set_model(config, "ddpm_cifar10")  # the base config's network too; named here for the reader
    return config
