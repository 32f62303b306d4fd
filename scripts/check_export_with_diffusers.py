"""Does diffusers compute what diffjax computes for an exported UNet? Two steps, two environments:

    python scripts/check_export_with_diffusers.py write /tmp/export          # diffjax's venv
    /path/to/torch-venv/bin/python scripts/check_export_with_diffusers.py check /tmp/export   # torch + diffusers

``write`` exports a digits-sized UNet with every parameter redrawn (2 heads, DDPM's sinusoid, GroupNorm
eps 1e-6, 2 output channels) with ``export_diffusers.export_diffusers_unet`` and saves diffjax's float32
output on fixed inputs (highest matmul precision); ``check`` loads the folder with
``UNet2DModel.from_pretrained`` and prints the largest difference from that output.
"""

import sys

import numpy as np


def write(out: str) -> None:
    import jax
    import jax.numpy as jnp

    from diffjax.models import get_preset, init_params, make_network
    from diffjax.models.export_diffusers import export_diffusers_unet

    model = dict(get_preset("digits"), num_heads=2, sinusoid_cos_first=False, sinusoid_freq_shift=1, norm_eps=1e-6)
    network = make_network("unet", out_channels=2, **{k: v for k, v in model.items() if k != "arch"})
    rng = np.random.default_rng(1)

    def redraw(p):
        if p.ndim > 1:
            return (rng.standard_normal(p.shape) / np.sqrt(np.prod(p.shape[:-1]))).astype(np.float32)
        return (0.2 * rng.standard_normal(p.shape)).astype(np.float32)

    params = jax.tree.map(redraw, init_params(network, jax.random.key(0), (8, 8, 1)))
    export_diffusers_unet(out, params, model, 2, (8, 8, 1))
    x, t = rng.standard_normal((3, 8, 8, 1)).astype(np.float32), np.array([0, 250, 999])
    with jax.default_matmul_precision("highest"):
        y = np.asarray(network.apply({"params": params}, jnp.asarray(x), jnp.asarray(t)))
    np.savez(f"{out}/io.npz", x=np.transpose(x, (0, 3, 1, 2)), t=t, out=np.transpose(y, (0, 3, 1, 2)))


def check(out: str) -> None:
    import torch
    from diffusers import UNet2DModel

    io = np.load(f"{out}/io.npz")
    model = UNet2DModel.from_pretrained(out).eval()
    with torch.no_grad():
        y = model(torch.from_numpy(io["x"]), torch.from_numpy(io["t"])).sample.numpy()
    print(f"max |diffusers - diffjax| = {np.abs(y - io['out']).max():.3g} (outputs up to {np.abs(io['out']).max():.3g})")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](sys.argv[2])
