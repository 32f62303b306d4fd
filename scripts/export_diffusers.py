"""A diffjax-trained UNet as a diffusers ``UNet2DModel`` folder (config.json + safetensors), to share
with PyTorch users.

    python scripts/export_diffusers.py --experiment ddpm_cifar10 --workdir runs/c10 --out exported/c10

Writes the EMA params (``--raw`` for the raw ones) of the workdir's latest checkpoint; load the folder
with ``diffusers.UNet2DModel.from_pretrained(out)``. The diffusion settings (schedule, T, what the
network predicts, timestep rescaling) are not part of a UNet2DModel folder: give them to the diffusers
scheduler yourself (the workdir's config.json holds them). Refused, naming the feature: networks
UNet2DModel cannot hold (scale-shift norm, res-block resampling, class conditioning, several head
counts over different attention widths).
"""

from __future__ import annotations

import argparse

from diffjax.models.export_diffusers import export_diffusers_unet
from diffjax.run.config import network_hyperparameters
from diffjax.run.restore import restore_experiment
from diffjax.runtime.mesh import make_mesh


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="NAME[:VARIANT] of experiments/")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, help="the diffusers folder to write")
    parser.add_argument("--raw", action="store_true", help="the raw params instead of the EMA ones")
    args = parser.parse_args(argv)
    config, recipe, params = restore_experiment(args.experiment, args.workdir, make_mesh(), use_ema=not args.raw)
    if config.model.arch != "unet" or config.model.fourier_features:
        raise SystemExit(f"error: {args.experiment}'s network ({config.model.arch}, fourier_features="
                         f"{config.model.fourier_features}) is not a plain UNet")
    model = {"arch": "unet", **network_hyperparameters(config.model)}
    out_channels = recipe.model.out_channels or recipe.input_shape[-1]
    print("wrote", export_diffusers_unet(args.out, params, model, out_channels, tuple(recipe.input_shape)))


if __name__ == "__main__":
    main()
