"""A small residual MLP denoiser for low-dimensional (e.g. 2-D toy) data."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.embeddings import conditioning_embedding
from diffjax.models.layers import dense

__all__ = ["MLPDenoiser"]


class MLPDenoiser(nn.Module):
    """Residual MLP conditioned on the timestep (and optionally a class).

    ``h = Dense(x)``; ``num_blocks`` times
    ``h += Dense_0(swish(Dense(swish(LN(h))) + Dense(swish(emb))))`` with a
    zero-initialised ``Dense_0``; output ``Dense_0(swish(LN(h)))``, also
    zero-initialised. The embedding is the same sinusoid + 2-layer MLP as the
    UNet's.

    Attributes:
      hidden: width of the hidden layers and of the embedding.
      num_blocks: residual blocks.
      out_dim: output width; ``None`` means the input width D (use 2D for a
        learned variance).
      sinusoid_dim: width of the sinusoidal timestep embedding.
      dropout: dropout rate inside the blocks (only when ``train=True``).
      num_classes: class-conditional with ``num_classes + 1`` embedding rows;
        label ``num_classes`` is the null class.
      dtype: computation dtype (params are float32; output is float32).
    """

    hidden: int = 128
    num_blocks: int = 3
    out_dim: int | None = None
    sinusoid_dim: int = 64
    dropout: float = 0.0
    num_classes: int | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, t: jnp.ndarray, labels: jnp.ndarray | None = None, *,
                 train: bool = False) -> jnp.ndarray:
        """Maps [B, D] noisy points and [B] timesteps to [B, out_dim] float32."""
        chex.assert_rank(x, 2)
        batch = x.shape[0]
        chex.assert_shape(t, (batch,))
        emb = conditioning_embedding(t, labels, num_classes=self.num_classes, sinusoid_dim=self.sinusoid_dim,
                                     features=self.hidden, dtype=self.dtype, network="MLPDenoiser")

        h = dense(self.hidden, dtype=self.dtype, name="dense_in")(x.astype(self.dtype))
        for i in range(self.num_blocks):
            r = nn.LayerNorm(dtype=jnp.float32, name=f"block_{i}_norm")(h.astype(jnp.float32))
            r = dense(self.hidden, dtype=self.dtype, name=f"block_{i}_dense_0")(nn.swish(r).astype(self.dtype))
            r = r + dense(self.hidden, dtype=self.dtype, name=f"block_{i}_emb_proj")(nn.swish(emb))
            r = nn.Dropout(rate=self.dropout, deterministic=not train)(nn.swish(r))
            h = h + dense(self.hidden, dtype=self.dtype, zero_init=True, name=f"block_{i}_dense_1")(r)
        h = nn.LayerNorm(dtype=jnp.float32, name="norm_out")(h.astype(jnp.float32))
        out_dim = x.shape[-1] if self.out_dim is None else self.out_dim
        out = dense(out_dim, dtype=self.dtype, zero_init=True, name="dense_out")(nn.swish(h).astype(self.dtype))
        return out.astype(jnp.float32)
