"""Timestep and class embeddings shared by the UNet and the MLP denoiser.

Convention (improved DDPM, ``improved_diffusion/nn.py::timestep_embedding``):
frequencies ``exp(-ln(max_period) * i / half)`` for ``i = 0 .. half-1`` (the
divisor is ``half``), output concatenated as ``[cos, sin]``, zero-padded when
``dim`` is odd. ``t`` may be fractional. DDPM's TensorFlow code uses
``[sin, cos]`` and the divisor ``half - 1`` instead; weights trained with that
convention need a different embedding to be loaded here.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.layers import dense

__all__ = ["TimestepEmbedding", "conditioning_embedding", "sinusoidal_embedding"]


def sinusoidal_embedding(t: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
      t: [B] timesteps, any real or integer dtype.
      dim: embedding width.
      max_period: the longest period, 10000 as in the Transformer.

    Returns:
      [B, dim] float32 array ``[cos(t * f_i), sin(t * f_i)]``.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoid of width ``sinusoid_dim`` → Dense(features) → swish → Dense(features).

    In both papers ``sinusoid_dim`` is the UNet's base channel count and
    ``features`` is four times that.

    Attributes:
      sinusoid_dim: width of the sinusoidal embedding fed to the MLP.
      features: width of the output (the embedding every res block sees).
      dtype: computation dtype of the two dense layers (params stay float32).
    """

    sinusoid_dim: int
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        """Maps [B] timesteps to [B, features] embeddings in ``dtype``."""
        h = sinusoidal_embedding(t, self.sinusoid_dim).astype(self.dtype)
        h = dense(self.features, dtype=self.dtype, name="dense_0")(h)
        h = nn.swish(h)
        return dense(self.features, dtype=self.dtype, name="dense_1")(h)


def conditioning_embedding(
    t: jnp.ndarray,
    labels: jnp.ndarray | None,
    *,
    num_classes: int | None,
    sinusoid_dim: int,
    features: int,
    dtype: jnp.dtype,
    network: str,
) -> jnp.ndarray:
    """What every block of a denoiser sees: ``TimestepEmbedding`` of t, plus a learned
    embedding of the class label when the network is class-conditional (``num_classes + 1``
    rows: label ``num_classes`` is the null class of classifier-free guidance).

    Call it inside a network's compact ``__call__``: its layers become that network's
    ``time_embed`` and ``label_embed``.

    Args:
      t: [B] timesteps as the network sees them.
      labels: [B] int labels, required iff ``num_classes`` is set.
      num_classes: classes of a conditional network, or None.
      sinusoid_dim, features: of the ``TimestepEmbedding``.
      dtype: computation dtype (params stay float32).
      network: the network's name, for the error messages.

    Returns:
      [B, features] in ``dtype``.
    """
    emb = TimestepEmbedding(sinusoid_dim, features, dtype=dtype, name="time_embed")(t)
    if num_classes is None:
        if labels is not None:
            raise ValueError(f"labels given to an unconditional {network} (num_classes is None)")
        return emb
    if labels is None:
        raise ValueError(f"class-conditional {network} needs labels (num_classes is the null class)")
    chex.assert_shape(labels, t.shape)
    return emb + nn.Embed(num_classes + 1, features, dtype=dtype, param_dtype=jnp.float32, name="label_embed")(labels)
