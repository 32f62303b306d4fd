"""Denoiser networks: the DDPM / improved-DDPM UNet, an MLP for toy data, and adapters.

Typical use::

    from diffjax import models
    net = models.make_unet("ddpm_cifar10")          # a named preset; or make_network("unet", channels=64, ...)
    params = jax.jit(lambda k: models.init_params(net, k, (32, 32, 3)))(key)
    denoise = models.make_denoise_fn(net, num_timesteps=1000)
    eps_hat = denoise(params, x_t, t, None)          # [B, 32, 32, 3]
"""

from diffjax.models.blocks import AttentionBlock, ResBlock
from diffjax.models.configs import (
    IMAGE_SHAPES,
    NETWORKS,
    PRESETS,
    get_image_shape,
    get_preset,
    hyperparameters,
    make_network,
    make_unet,
)
from diffjax.models.denoiser import DenoiseFn, abstract_params, count_params, init_params, make_denoise_fn
from diffjax.models.embeddings import TimestepEmbedding, sinusoidal_embedding
from diffjax.models.mlp import MLPDenoiser
from diffjax.models.unet import UNet

__all__ = [
    "IMAGE_SHAPES",
    "NETWORKS",
    "PRESETS",
    "AttentionBlock",
    "DenoiseFn",
    "MLPDenoiser",
    "ResBlock",
    "TimestepEmbedding",
    "UNet",
    "abstract_params",
    "count_params",
    "get_image_shape",
    "get_preset",
    "hyperparameters",
    "init_params",
    "make_denoise_fn",
    "make_network",
    "make_unet",
    "sinusoidal_embedding",
]
