"""Primitive layers of the diffusion UNets: initialisers, convs, norms, resampling.

Parameters are always float32; ``dtype`` is the computation dtype (e.g.
``jnp.bfloat16``). Group normalisation is always computed in float32.
Images are NHWC.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange, repeat

__all__ = [
    "DOWNSAMPLE_PADDINGS",
    "Downsample",
    "Upsample",
    "avg_pool_2x",
    "conv3x3",
    "default_kernel_init",
    "dense",
    "group_norm",
    "upsample_nearest_2x",
]

# DDPM's TF convs use "SAME" padding, which for a stride-2 3x3 conv on an even
# size pads (0, 1); improved DDPM's PyTorch convs pad (1, 1). The parameter
# count is the same; only loading weights from one codebase needs the match.
DOWNSAMPLE_PADDINGS = {"same": "SAME", "symmetric": ((1, 1), (1, 1))}


def default_kernel_init(zero: bool = False) -> jax.nn.initializers.Initializer:
    """DDPM's initialiser: variance scaling (scale 1, fan_avg, uniform), or zeros.

    DDPM uses scale 1e-10 for its "zero-init" layers; exact zeros are used here.
    """
    if zero:
        return nn.initializers.zeros_init()
    return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def dense(features: int, *, dtype: jnp.dtype, zero_init: bool = False, name: str | None = None) -> nn.Dense:
    """A dense layer (also serves as a 1x1 conv on NHWC input)."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=default_kernel_init(zero_init),
        bias_init=nn.initializers.zeros_init(),
        name=name,
    )


def conv3x3(
    features: int,
    *,
    dtype: jnp.dtype,
    zero_init: bool = False,
    strides: int = 1,
    padding: str | tuple = "SAME",
    name: str | None = None,
) -> nn.Conv:
    """A 3x3 convolution with bias."""
    return nn.Conv(
        features,
        kernel_size=(3, 3),
        strides=(strides, strides),
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=default_kernel_init(zero_init),
        bias_init=nn.initializers.zeros_init(),
        name=name,
    )


def group_norm(num_groups: int, epsilon: float, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm computed and returned in float32 (feed it ``x.astype(float32)``)."""
    return nn.GroupNorm(
        num_groups=num_groups, epsilon=epsilon, dtype=jnp.float32, param_dtype=jnp.float32, name=name
    )


def upsample_nearest_2x(x: jnp.ndarray) -> jnp.ndarray:
    """[B, H, W, C] -> [B, 2H, 2W, C] by nearest-neighbour repetition."""
    return repeat(x, "b h w c -> b (h sh) (w sw) c", sh=2, sw=2)


def avg_pool_2x(x: jnp.ndarray) -> jnp.ndarray:
    """[B, H, W, C] -> [B, H/2, W/2, C] by 2x2 average pooling (H, W even)."""
    blocks = rearrange(x, "b (h sh) (w sw) c -> b h w (sh sw) c", sh=2, sw=2)
    return jnp.mean(blocks, axis=3, dtype=jnp.float32).astype(x.dtype)


class Downsample(nn.Module):
    """Halves H and W: a stride-2 3x3 conv (``use_conv``) or 2x2 average pooling.

    Attributes:
      use_conv: conv (DDPM, improved DDPM default) or average pooling.
      padding: a key of ``DOWNSAMPLE_PADDINGS``: ``"same"`` (DDPM/TF) or
        ``"symmetric"`` (improved DDPM/PyTorch).
      dtype: computation dtype.
    """

    use_conv: bool = True
    padding: str = "same"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[B, H, W, C] -> [B, H/2, W/2, C]."""
        if not self.use_conv:
            return avg_pool_2x(x)
        pad = DOWNSAMPLE_PADDINGS[self.padding]
        return conv3x3(x.shape[-1], strides=2, padding=pad, dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Doubles H and W: nearest-neighbour x2, then a 3x3 conv if ``use_conv``.

    Attributes:
      use_conv: follow the repetition by a 3x3 conv.
      dtype: computation dtype.
    """

    use_conv: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[B, H, W, C] -> [B, 2H, 2W, C]."""
        x = upsample_nearest_2x(x)
        if self.use_conv:
            x = conv3x3(x.shape[-1], dtype=self.dtype, name="conv")(x)
        return x
