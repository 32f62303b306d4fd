"""Random-weight parity of the checkpoint converters: for each reference folder (default
``../shared/weights_reference``; ``tests/models/data/converters`` holds smaller ones), diffjax's
output from the converted weights against the original PyTorch code's float64 output (``out64``).

    python scripts/converter_parity.py [FOLDER ...]

Prints, per model, the max abs and the relative RMS error (float32, highest matmul precision).
Folders are read through the public converters only; ``dit_tiny`` (no converter yet) is skipped.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models import make_network
from diffjax.models.convert_diffusers import load_diffusers_unet
from diffjax.models.convert_openai import load_openai_classifier, load_openai_superres, load_openai_unet
from diffjax.models.superres import upsampled_input

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "weights_reference")


def _nhwc(array):
    return jnp.asarray(np.transpose(array, (0, 2, 3, 1)))


def converted_and_inputs(folder: str):
    """(converted network, its input x, labels or None) of a reference folder."""
    io = np.load(os.path.join(folder, "io.npz"))
    if os.path.isfile(os.path.join(folder, "diffusion_pytorch_model.safetensors")):
        return load_diffusers_unet(folder), _nhwc(io["x"]), None, io
    with open(os.path.join(folder, "config.json")) as f:
        args = json.load(f)
    weights = os.path.join(folder, "model.safetensors")
    if args.get("pool"):
        return load_openai_classifier(weights, args), _nhwc(io["x"]), None, io
    if "low_res_size" in args:
        converted = load_openai_superres(weights, args)
        return converted, upsampled_input(_nhwc(io["x"]), _nhwc(io["low_res"])), io.get("y"), io
    return load_openai_unet(weights, args), _nhwc(io["x"]), io.get("y"), io


def parity(folder: str) -> tuple[float, float]:
    converted, x, labels, io = converted_and_inputs(folder)
    num_classes = None if labels is None else int(converted.params["label_embed"]["embedding"].shape[0] - 1)
    extra = {} if converted.model["arch"] == "classifier" else {"num_classes": num_classes}
    network = make_network(**converted.model, out_channels=converted.out_channels, **extra)
    args = (x, jnp.asarray(io["t"])) + (() if labels is None else (jnp.asarray(labels),))
    with jax.default_matmul_precision("highest"):
        out = np.asarray(network.apply({"params": converted.params}, *args))
    if out.ndim == 4:
        out = np.transpose(out, (0, 3, 1, 2))
    reference = io["out64"]
    return float(np.abs(out - reference).max()), float(np.sqrt(np.mean((out - reference) ** 2) / np.mean(reference**2)))


def main(roots: list[str]) -> None:
    for root in roots or [DEFAULT]:
        for folder in sorted(glob.glob(os.path.join(root, "*", "io.npz"))):
            folder = os.path.dirname(folder)
            if os.path.basename(folder).startswith("dit"):
                continue
            max_abs, relative_rms = parity(folder)
            print(f"{os.path.basename(folder):40s} max abs {max_abs:.2g}  relative RMS {relative_rms:.2g}")


if __name__ == "__main__":
    main(sys.argv[1:])
