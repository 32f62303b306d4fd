"""Named UNet configurations: the papers' models and small ones for CPU.

Each entry is the keyword arguments of ``diffjax.models.UNet``; ``IMAGE_SHAPES``
gives the (H, W, C) images it was made for. Parameter counts (float32 params,
checked exactly in ``tests/test_models.py``):

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

Architecture details that do not change the count but matter for loading
weights: DDPM's TF code uses GroupNorm eps 1e-6 and "SAME" stride-2 padding,
improved DDPM's PyTorch code eps 1e-5 and symmetric padding; both are set here.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from diffjax.models.unet import UNet

__all__ = ["IMAGE_SHAPES", "UNET_CONFIGS", "get_image_shape", "get_unet_config", "make_unet"]

_DDPM_TF = dict(norm_eps=1e-6, downsample_padding="same", num_heads=1)
_IDDPM = dict(norm_eps=1e-5, downsample_padding="symmetric", num_heads=4, use_scale_shift_norm=True)

UNET_CONFIGS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(
    {
        "ddpm_cifar10": types.MappingProxyType(
            dict(
                _DDPM_TF,
                model_channels=128,
                channel_mult=(1, 2, 2, 2),
                num_res_blocks=2,
                attention_resolutions=(16,),
                dropout=0.1,
                out_channels=3,
            )
        ),
        "ddpm_256": types.MappingProxyType(
            dict(
                _DDPM_TF,
                model_channels=128,
                channel_mult=(1, 1, 2, 2, 4, 4),
                num_res_blocks=2,
                attention_resolutions=(16,),
                dropout=0.0,
                out_channels=3,
            )
        ),
        "iddpm_cifar10": types.MappingProxyType(
            dict(
                _IDDPM,
                model_channels=128,
                channel_mult=(1, 2, 2, 2),
                num_res_blocks=3,
                attention_resolutions=(16, 8),
                dropout=0.3,
                out_channels=6,
            )
        ),
        "iddpm_imagenet64": types.MappingProxyType(
            dict(
                _IDDPM,
                model_channels=128,
                channel_mult=(1, 2, 3, 4),
                num_res_blocks=3,
                attention_resolutions=(16, 8),
                dropout=0.0,
                out_channels=6,
            )
        ),
        "digits": types.MappingProxyType(
            dict(
                model_channels=32,
                channel_mult=(1, 2),
                num_res_blocks=1,
                attention_resolutions=(4,),
                num_heads=1,
                dropout=0.0,
                out_channels=1,
            )
        ),
        "tiny": types.MappingProxyType(
            dict(
                model_channels=8,
                channel_mult=(1, 2),
                num_res_blocks=1,
                attention_resolutions=(4,),
                num_heads=2,
                norm_groups=4,
                dropout=0.1,
                out_channels=3,
            )
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


def _check_name(name: str) -> None:
    if name not in UNET_CONFIGS:
        raise KeyError(f"unknown UNet config {name!r}; known: {sorted(UNET_CONFIGS)}")


def get_unet_config(name: str) -> dict[str, Any]:
    """Returns a fresh dict of the ``UNet`` keyword arguments of a named config."""
    _check_name(name)
    return dict(UNET_CONFIGS[name])


def get_image_shape(name: str) -> tuple[int, int, int]:
    """Returns the (H, W, C) image shape a named config was made for."""
    _check_name(name)
    return IMAGE_SHAPES[name]


def make_unet(name: str, **overrides: Any) -> UNet:
    """Builds the named UNet, with keyword overrides (e.g. ``num_classes=10``, ``dtype``).

    Raises:
      KeyError: unknown config name.
      TypeError: an override that is not a ``UNet`` field.
    """
    kwargs = get_unet_config(name)
    unknown = set(overrides) - {f for f in UNet.__dataclass_fields__ if f not in ("parent", "name")}
    if unknown:
        raise TypeError(f"unknown UNet arguments {sorted(unknown)}")
    kwargs.update(overrides)
    return UNet(**kwargs)
