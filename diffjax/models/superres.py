"""The input of a super-resolution network (SR3, Saharia et al. 2021; ADM's ``SuperResModel``,
Dhariwal & Nichol 2021): the noisy high-resolution image and the low-resolution one, bilinearly
upsampled to its size, concatenated along the channels."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

__all__ = ["upsampled_input"]


def upsampled_input(x: jnp.ndarray, low_res: jnp.ndarray) -> jnp.ndarray:
    """[x, bilinear(low_res)] along channels.

    Bilinear resampling with half-pixel centres, as PyTorch's ``F.interpolate(mode="bilinear")``
    with its default ``align_corners=False`` (ADM's); upsampling, so no antialiasing applies.

    Args:
      x: [B, H, W, C] noisy images.
      low_res: [B, h, w, C] low-resolution images, h <= H and w <= W.

    Returns:
      [B, H, W, 2C] in x's dtype.
    """
    chex.assert_rank([x, low_res], 4)
    chex.assert_equal_shape_prefix([x, low_res], 1)
    chex.assert_equal(x.shape[-1], low_res.shape[-1])
    batch, height, width, channels = x.shape
    if low_res.shape[1] > height or low_res.shape[2] > width:
        raise ValueError(f"low_res {low_res.shape[1:3]} is larger than the image {x.shape[1:3]}")
    up = jax.image.resize(low_res.astype(jnp.float32), (batch, height, width, channels), method="bilinear")
    return jnp.concatenate([x, up.astype(x.dtype)], axis=-1)
