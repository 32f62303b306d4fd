"""DDPM on CelebA-HQ 256x256 (Ho et al. 2020, App. B).

    python launch.py --config experiments/ddpm_celebahq256.py --workdir gs://bucket/ddpm_celebahq

Hardware: TPU v3-8 in the paper (2.2 steps/s at batch 64; 0.5M steps). Expect: samples
like the paper's Fig. 1/13 (no FID was reported for CelebA-HQ).
Data: tfds ``celeb_a_hq`` at 256 needs a manual download (see the error message).

Model: DDPM's 256x256 UNet, 113,673,219 parameters (128 ch, mult 1,1,2,2,4,4, 2 res
blocks, attention at 16x16, no dropout). lr 2e-5 (2e-4 was unstable), batch 64.
Variant ``smoke``: the recipe at tiny width on the offline digits, for tests
(``ddpm_cifar10.set_smoke``).
"""

from diffjax.run.config import base_config, set_model
from diffjax.run.experiments import load_experiment


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"ddpm_celebahq256 has no variants but smoke (got {arg!r})")
    config = base_config()
    config.experiment = "ddpm_celebahq256"
    config.data.name = "celeb_a_hq"
    config.data.image_size = 256
    set_model(config, "ddpm_256")
    config.train.lr = 2e-5
    config.train.batch_size = 64
    config.train.num_steps = 500_000
    config.sample.num = 16
    if arg == "smoke":  # the recipe at tiny width on the digits (ddpm_cifar10.set_smoke)
        load_experiment("ddpm_cifar10").set_smoke(config)
    return config
