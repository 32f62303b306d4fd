"""Named network presets: the papers' UNets, small UNets for CPU, and the toy MLP.

A preset is ``arch`` (the network class: ``"unet"`` for ``UNet``, ``"mlp"`` for
``MLPDenoiser``, ``"classifier"`` for ``NoisyClassifier``) and a value for every
hyperparameter of that class, under the class's own field names (``hyperparameters(arch)``).
Three fields are not hyperparameters and never in a preset: the output width
(``out_channels`` / ``out_dim``: the data's channels, twice that with a learned variance;
``num_outputs``: a classifier's classes), ``num_classes`` (the data's) and ``dtype`` (the
run's). ``diffjax.run.config.set_model`` writes a preset into a config's ``model``
section; ``make_network`` builds any network from keyword arguments.

UNet parameter counts (float32 params, checked exactly in ``tests/models/test_models.py``),
with 2C output channels for the two improved-DDPM models (learned sigma) and C for the
others; ``IMAGE_SHAPES`` gives the (H, W, C) images each was made for:

=================  ===========  ==========================================================
name               params       model
=================  ===========  ==========================================================
ddpm_cifar10       35,746,307   DDPM CIFAR-10 ``unet2d16b2`` (paper: 35.7M)
ddpm_256           113,673,219  DDPM CelebA-HQ / LSUN 256² ``unet2d16b2c112244`` (paper: 114M)
iddpm_cifar10      52,546,438   improved DDPM CIFAR-10, learned sigma
iddpm_imagenet64   121,063,942  improved DDPM ImageNet-64 unconditional, learned sigma
digits             701,345      8×8×1 digits; trains on 2 CPU cores in minutes
tiny               45,259       8×8×3; for tests
=================  ===========  ==========================================================

The MLP preset ``toy2d`` (175,106 parameters on 2-D data) is experiments/toy2d.py's; the
noise-conditional classifier ``digits_classifier`` (``NoisyClassifier``, the digits UNet's
encoder half with a pooled head: 318,090 parameters for 10 classes) is
experiments/digits_classifier.py's.

Architecture details that do not change the count but matter for loading
weights: DDPM's TF code uses GroupNorm eps 1e-6 and "SAME" stride-2 padding,
improved DDPM's PyTorch code eps 1e-5 and symmetric padding; both are set here.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from diffjax.models.classifier import NoisyClassifier
from diffjax.models.mlp import MLPDenoiser
from diffjax.models.unet import UNet

__all__ = [
    "IMAGE_SHAPES",
    "NETWORKS",
    "PRESETS",
    "get_image_shape",
    "get_preset",
    "hyperparameters",
    "make_network",
    "make_unet",
]

NETWORKS: Mapping[str, type[nn.Module]] = types.MappingProxyType(
    {"unet": UNet, "mlp": MLPDenoiser, "classifier": NoisyClassifier}
)

# Fields that follow from the data, the diffusion or the run, not from the architecture.
_OUTPUT_FIELD = {"unet": "out_channels", "mlp": "out_dim", "classifier": "num_outputs"}
_NOT_HYPERPARAMETERS = frozenset({"parent", "name", "num_classes", "dtype", *_OUTPUT_FIELD.values()})


def _check_arch(arch: str) -> None:
    if arch not in NETWORKS:
        raise KeyError(f"unknown network {arch!r}; known: {sorted(NETWORKS)}")


def hyperparameters(arch: str) -> tuple[str, ...]:
    """The hyperparameters of network ``arch`` (its fields but the output width,
    ``num_classes`` and ``dtype``), in declaration order."""
    _check_arch(arch)
    return tuple(f.name for f in dataclasses.fields(NETWORKS[arch]) if f.name not in _NOT_HYPERPARAMETERS)


def _preset(arch: str, **fields: Any) -> Mapping[str, Any]:
    """A complete preset: ``arch``, then every hyperparameter (the class's default where
    ``fields`` has none)."""
    names = hyperparameters(arch)
    unknown = set(fields) - set(names)
    if unknown:
        raise TypeError(f"{sorted(unknown)} are not hyperparameters of {arch}: {names}")
    defaults = {f.name: f.default for f in dataclasses.fields(NETWORKS[arch]) if f.name in names}
    return types.MappingProxyType({"arch": arch, **defaults, **fields})


_DDPM_TF = dict(norm_eps=1e-6, downsample_padding="same", num_heads=1)
_IDDPM = dict(norm_eps=1e-5, downsample_padding="symmetric", num_heads=4, use_scale_shift_norm=True)

PRESETS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(
    {
        "ddpm_cifar10": _preset(
            "unet", **_DDPM_TF, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
            attention_resolutions=(16,), dropout=0.1,
        ),
        "ddpm_256": _preset(
            "unet", **_DDPM_TF, channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
            attention_resolutions=(16,), dropout=0.0,
        ),
        "iddpm_cifar10": _preset(
            "unet", **_IDDPM, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
            attention_resolutions=(16, 8), dropout=0.3,
        ),
        "iddpm_imagenet64": _preset(
            "unet", **_IDDPM, channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
            attention_resolutions=(16, 8), dropout=0.0,
        ),
        # GroupNorm eps 1e-5 with "same" padding: the UNet's defaults.
        "digits": _preset(
            "unet", channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=1,
            dropout=0.0,
        ),
        "tiny": _preset(
            "unet", channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=2,
            norm_groups=4, dropout=0.1,
        ),
        "toy2d": _preset("mlp", hidden=128, num_blocks=3, sinusoid_dim=64, dropout=0.0),
        # The digits UNet's encoder half (experiments/digits_classifier.py).
        "digits_classifier": _preset(
            "classifier", channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=1,
            dropout=0.0,
        ),
    }
)

IMAGE_SHAPES: Mapping[str, tuple[int, int, int]] = types.MappingProxyType(
    {
        "ddpm_cifar10": (32, 32, 3),
        "ddpm_256": (256, 256, 3),
        "iddpm_cifar10": (32, 32, 3),
        "iddpm_imagenet64": (64, 64, 3),
        "digits": (8, 8, 1),
        "tiny": (8, 8, 3),
    }
)


def get_preset(name: str) -> dict[str, Any]:
    """A fresh dict of the named preset: ``arch`` and every hyperparameter of that network.

    Raises:
      KeyError: unknown preset.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown network preset {name!r}; known: {sorted(PRESETS)}")
    return dict(PRESETS[name])


def get_image_shape(name: str) -> tuple[int, int, int]:
    """The (H, W, C) image shape a UNet preset was made for."""
    if name not in IMAGE_SHAPES:
        raise KeyError(f"no image shape for {name!r}; UNet presets: {sorted(IMAGE_SHAPES)}")
    return IMAGE_SHAPES[name]


def make_network(arch: str, *, out_channels: int | None = None, **kwargs: Any) -> nn.Module:
    """Builds network ``arch`` from keyword arguments: hyperparameters, ``num_classes``,
    ``dtype``, and ``out_channels`` (the output width, whatever the class calls it;
    ``None``: the input's).

    Raises:
      KeyError: unknown ``arch``.
      TypeError: an argument that is not a field of that network.
    """
    _check_arch(arch)
    allowed = {*hyperparameters(arch), "num_classes", "dtype"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown {arch} arguments {sorted(unknown)}; known: {sorted(allowed)} and out_channels")
    return NETWORKS[arch](**kwargs, **{_OUTPUT_FIELD[arch]: out_channels})


def make_unet(name: str, **overrides: Any) -> UNet:
    """Builds the named UNet preset, with keyword overrides (e.g. ``out_channels=6`` for a
    learned variance, ``num_classes=10``, ``dtype``).

    Raises:
      KeyError: unknown preset.
      TypeError: a preset of another network, or an override that is not a ``UNet`` argument.
    """
    preset = get_preset(name)
    arch = preset.pop("arch")
    if arch != "unet":
        raise TypeError(f"preset {name!r} is a {arch}, not a unet")
    return make_network(arch, **{**preset, **overrides})
