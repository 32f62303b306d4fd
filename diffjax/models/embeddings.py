"""Timestep and class embeddings shared by the UNet and the MLP denoiser.

Convention (improved DDPM, ``improved_diffusion/nn.py::timestep_embedding``):
frequencies ``exp(-ln(max_period) * i / half)`` for ``i = 0 .. half-1`` (the
divisor is ``half``), output concatenated as ``[cos, sin]``, zero-padded when
``dim`` is odd. ``t`` may be fractional. DDPM's TensorFlow code (and diffusers'
ports of its checkpoints: ``flip_sin_to_cos=False``, ``freq_shift=1``) uses ``[sin, cos]``
and the divisor ``half - 1``: ``cos_first=False``, ``freq_shift=1`` here.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.layers import dense

__all__ = ["TimestepEmbedding", "conditioning_embedding", "sinusoidal_embedding"]


def sinusoidal_embedding(t: jnp.ndarray, dim: int, max_period: float = 10_000.0, *, cos_first: bool = True,
                         freq_shift: int = 0) -> jnp.ndarray:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
      t: [B] timesteps, any real or integer dtype.
      dim: embedding width.
      max_period: the longest period, 10000 as in the Transformer.
      cos_first: ``[cos, sin]`` (improved DDPM; diffusers' ``flip_sin_to_cos=True``) or
        ``[sin, cos]`` (DDPM's TensorFlow code).
      freq_shift: frequencies ``exp(-ln(max_period) * i / (half - freq_shift))``: 0 in improved
        DDPM, 1 in DDPM (diffusers' ``freq_shift``).

    Returns:
      [B, dim] float32 array ``[cos(t * f_i), sin(t * f_i)]`` (or sin first).
    """
    half = dim // 2
    if half - freq_shift <= 0:
        raise ValueError(f"freq_shift={freq_shift} leaves no frequencies for an embedding of width {dim}")
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    parts = [jnp.cos(args), jnp.sin(args)] if cos_first else [jnp.sin(args), jnp.cos(args)]
    emb = jnp.concatenate(parts, axis=-1)
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
      cos_first, freq_shift: the sinusoid's convention (``sinusoidal_embedding``).
    """

    sinusoid_dim: int
    features: int
    dtype: jnp.dtype = jnp.float32
    cos_first: bool = True
    freq_shift: int = 0

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        """Maps [B] timesteps to [B, features] embeddings in ``dtype``."""
        h = sinusoidal_embedding(t, self.sinusoid_dim, cos_first=self.cos_first,
                                 freq_shift=self.freq_shift).astype(self.dtype)
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
    cos_first: bool = True,
    freq_shift: int = 0,
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
      cos_first, freq_shift: the sinusoid's convention (``sinusoidal_embedding``).

    Returns:
      [B, features] in ``dtype``.
    """
    emb = TimestepEmbedding(sinusoid_dim, features, dtype=dtype, cos_first=cos_first, freq_shift=freq_shift,
                            name="time_embed")(t)
    if num_classes is None:
        if labels is not None:
            raise ValueError(f"labels given to an unconditional {network} (num_classes is None)")
        return emb
    if labels is None:
        raise ValueError(f"class-conditional {network} needs labels (num_classes is the null class)")
    chex.assert_shape(labels, t.shape)
    return emb + nn.Embed(num_classes + 1, features, dtype=dtype, param_dtype=jnp.float32, name="label_embed")(labels)
