"""Improved DDPM on unconditional ImageNet 64x64 (Nichol & Dhariwal 2021).

    python launch.py --config experiments/iddpm_imagenet64.py:hybrid_cosine --workdir gs://bucket/iddpm_in64

Variants ``OBJECTIVE_SCHEDULE`` as in iddpm_cifar10 (default ``hybrid_cosine``, the
released ``imagenet64_uncond_100M_1500K``). Expect (paper, hybrid+cosine): NLL about
3.57 bits/dim. Data: tfds ``downsampled_imagenet/64x64`` prepared in data_dir.

Model: 121,063,942 parameters with learned sigma (128 ch, mult 1,2,3,4, 3 res blocks,
attention at 16 and 8 with 4 heads, scale-shift norm, no dropout); 1.5M steps at batch 128.
Optionally ``,smoke``: the recipe at tiny width on the offline digits, for tests
(``ddpm_cifar10.set_smoke``).
"""

from diffjax.run.config import base_config, set_model
from diffjax.run.experiments import load_experiment


def get_config(arg: str | None = None):
    cifar10 = load_experiment("iddpm_cifar10")
    variant, smoke = cifar10.split_smoke(arg)
    config = cifar10.improved_ddpm(base_config(), variant)
    config.experiment = "iddpm_imagenet64"
    config.data.name = "downsampled_imagenet/64x64"
    config.data.image_size = 64
    set_model(config, "iddpm_imagenet64")
    config.train.num_steps = 1_500_000
    if smoke:
        load_experiment("ddpm_cifar10").set_smoke(config)
    return config
