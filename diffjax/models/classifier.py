"""A noise-conditional image classifier p_phi(y | x_t, t): the encoder half of the UNet with a
pooled head (Dhariwal & Nichol 2021, section 4.1; guided_diffusion's ``EncoderUNetModel``
with ``pool="adaptive"`` or ``pool="attention"``, the released ImageNet classifiers').

Layout: the UNet's conv_in and down path (``num_res_blocks`` res blocks per level, attention at
the chosen resolutions, a downsample between levels), its middle res -> attention -> res, then
GN -> swish -> a pool -> a zero-initialised dense layer to the class logits (so an
untrained classifier says 1/K to every class). The pool is the global average (``pool="mean"``)
or attention pooling (``pool="attention"``, ``AttentionPool``: CLIP's and ADM's). The encoder is the UNet's own code
(``unet.encoder``), so the blocks have the UNet's names and the two networks' encoder params
line up; every res block sees the noise level's embedding.

The network reads the variance-preserving state and a noise input ``t`` that its family gives
(``diffusion.noisy_classifier``: ``continuous.noise_conditioning(log_snr)``, diffjax's, or the step
of its training chain, ADM's released classifiers').
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from diffjax.models.blocks import AttentionBlock, ResBlock, attention_heads
from diffjax.models.embeddings import conditioning_embedding
from diffjax.models.layers import dense, group_norm
from diffjax.models.unet import check_input, downsample, encoder

__all__ = ["POOLS", "AttentionPool", "NoisyClassifier"]

POOLS = ("mean", "attention")


class AttentionPool(nn.Module):
    """Attention pooling (Radford et al. 2021, CLIP's ``AttentionPool2d``; ADM's classifier head).

    The feature map's mean is prepended to its H*W positions as a query token, a learned
    positional embedding [H*W + 1, C] is added to all tokens, one multi-head attention (qkv
    projection laid out as [q, k, v], each split into heads; logits scaled by head_dim^-1/2,
    softmax in float32) reads them, and the query token's output is projected to the logits.
    Only that token's output is computed (the others' would be dropped).

    Attributes:
      num_outputs: logits' width.
      num_heads: attention heads (ignored when ``num_head_channels`` is set).
      num_head_channels: channels per head, if given.
      implementation: ``jax.nn.dot_product_attention``'s implementation.
      dtype: computation dtype (the logits are float32).
    """

    num_outputs: int
    num_heads: int = 1
    num_head_channels: int | None = None
    implementation: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        """[B, H, W, C] features -> [B, num_outputs] float32 logits."""
        _, height, width, channels = h.shape
        heads = attention_heads(channels, self.num_heads, self.num_head_channels, self.implementation, self.dtype)
        tokens = rearrange(h, "b h w c -> b (h w) c")
        tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)  # [B, 1 + HW, C]
        position = self.param("positional_embedding", nn.initializers.normal(channels**-0.5),
                              (height * width + 1, channels), jnp.float32)
        tokens = (tokens.astype(jnp.float32) + position).astype(self.dtype)
        qkv = dense(3 * channels, dtype=self.dtype, name="qkv")(tokens)
        q, k, v = (rearrange(a, "b t (n d) -> b t n d", n=heads) for a in jnp.split(qkv, 3, axis=-1))
        with jax.numpy_dtype_promotion("standard"):
            pooled = jax.nn.dot_product_attention(q[:, :1], k, v, implementation=self.implementation)
        pooled = rearrange(pooled, "b 1 n d -> b (n d)")
        return dense(self.num_outputs, dtype=jnp.float32, zero_init=True, name="proj")(pooled).astype(jnp.float32)


class NoisyClassifier(nn.Module):
    """Classifier of noisy NHWC images.

    Attributes:
      channels, channel_mult, num_res_blocks, attention_resolutions, num_heads,
      num_head_channels, dropout, use_scale_shift_norm, resblock_updown, conv_resample,
      downsample_padding, norm_groups, norm_eps, attention_implementation: as the ``UNet``'s
      (its encoder half).
      pool: ``"mean"`` (global average, then a dense head) or ``"attention"``
        (``AttentionPool``, with the attention blocks' heads; tied to the image size).
      num_outputs: the number of classes K (the logits' width).
      dtype: computation dtype; params, GroupNorm and the logits are float32.
    """

    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    num_outputs: int = 10
    num_heads: int = 1
    num_head_channels: int | None = None
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    downsample_padding: str = "same"
    norm_groups: int = 32
    norm_eps: float = 1e-5
    pool: str = "mean"
    attention_implementation: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, t: jnp.ndarray, labels: jnp.ndarray | None = None, *,
                 train: bool = False) -> jnp.ndarray:
        """Class logits of noisy images.

        Args:
          x: [B, H, W, C] noisy images.
          t: [B] the noise level as the network sees it (float).
          labels: must be None (the labels are the classifier's output, not its input).
          train: enables dropout (needs a ``'dropout'`` rng).

        Returns:
          [B, num_outputs] float32 logits.
        """
        check_input(x, self.channel_mult, self.attention_resolutions, self.downsample_padding)
        chex.assert_shape(t, (x.shape[0],))
        if labels is not None:
            raise ValueError("NoisyClassifier takes no labels: they are what it predicts")
        if self.pool not in POOLS:
            raise ValueError(f"pool {self.pool!r} is not one of {list(POOLS)}")
        options = dict(norm_groups=self.norm_groups, norm_eps=self.norm_eps, dtype=self.dtype)
        ch = self.channels
        emb = conditioning_embedding(t, None, num_classes=None, sinusoid_dim=ch, features=4 * ch, dtype=self.dtype,
                                     network="NoisyClassifier")

        def res_block(out_channels, name, **kwargs):
            return ResBlock(out_channels, dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                            name=name, **options, **kwargs)

        def attention(name):
            return AttentionBlock(num_heads=self.num_heads, num_head_channels=self.num_head_channels, name=name,
                                  implementation=self.attention_implementation, **options)

        def downsample_between_levels(h, emb, level, train):
            return downsample(h, emb, level, train, res_block=res_block, resblock_updown=self.resblock_updown,
                              conv_resample=self.conv_resample, downsample_padding=self.downsample_padding,
                              dtype=self.dtype)

        h, _ = encoder(x, emb, channels=ch, channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks,
                       attention_resolutions=self.attention_resolutions, res_block=res_block, attention=attention,
                       downsample=downsample_between_levels, dtype=self.dtype, train=train)

        h = nn.swish(group_norm(self.norm_groups, self.norm_eps, name="norm_out")(h.astype(jnp.float32)))
        if self.pool == "attention":
            return AttentionPool(self.num_outputs, num_heads=self.num_heads, num_head_channels=self.num_head_channels,
                                 implementation=self.attention_implementation, dtype=self.dtype, name="head")(h)
        pooled = jnp.mean(h, axis=(1, 2))  # [B, C], float32
        logits = dense(self.num_outputs, dtype=jnp.float32, zero_init=True, name="head")(pooled)
        return logits.astype(jnp.float32)
