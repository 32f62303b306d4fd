"""DDPM on LSUN Church 256x256 (Ho et al. 2020, App. B): the CelebA-HQ recipe on other data.

    python launch.py --config experiments/ddpm_lsun_church256.py --workdir gs://bucket/ddpm_lsun_church

Hardware: TPU v3-8 in the paper (2.2 steps/s at batch 64; 1.2M steps). Expect: FID 7.89
(Table 3). Data: tfds ``lsun/church_outdoor`` prepared in config.data.data_dir (centre
crop, resize to 256). Model and optimiser as experiments/ddpm_celebahq256.py.
Variant ``smoke``: the recipe at tiny width on the offline digits, for tests
(``ddpm_cifar10.set_smoke``).
"""

from diffjax.run.experiments import load_experiment


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"ddpm_lsun_church256 has no variants but smoke (got {arg!r})")
    config = load_experiment("ddpm_celebahq256").get_config()
    config.experiment = "ddpm_lsun_church256"
    config.data.name = "lsun/church_outdoor"
    config.train.num_steps = 1_200_000
    if arg == "smoke":  # the recipe at tiny width on the digits (ddpm_cifar10.set_smoke)
        load_experiment("ddpm_cifar10").set_smoke(config)
    return config
