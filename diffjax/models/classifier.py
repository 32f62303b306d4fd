"""A noise-conditional image classifier p_phi(y | x_t, t): the encoder half of the UNet with a
pooled linear head (Dhariwal & Nichol 2021, section 4.1; guided_diffusion's
``EncoderUNetModel`` with ``pool="adaptive"``).

Layout: the UNet's conv_in and down path (``num_res_blocks`` res blocks per level, attention at
the chosen resolutions, a downsample between levels), its middle res -> attention -> res, then
GN -> swish -> global average pool -> a zero-initialised dense layer to the class logits (so an
untrained classifier says 1/K to every class). The encoder is the UNet's own code
(``unet.encoder``), so the blocks have the UNet's names and the two networks' encoder params
line up; every res block sees the noise level's embedding.

The noise level is given the way the guided sampler knows it for any model: the network time
``t`` is ``diffusion.continuous.noise_conditioning(log_snr)``, read on the variance-preserving
state (``diffusion.noisy_classifier``).
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.blocks import AttentionBlock, ResBlock
from diffjax.models.embeddings import conditioning_embedding
from diffjax.models.layers import Downsample, dense, group_norm
from diffjax.models.unet import check_input, encoder

__all__ = ["NoisyClassifier"]


class NoisyClassifier(nn.Module):
    """Classifier of noisy NHWC images.

    Attributes:
      channels, channel_mult, num_res_blocks, attention_resolutions, num_heads,
      num_head_channels, dropout, use_scale_shift_norm, conv_resample, downsample_padding,
      norm_groups, norm_eps, attention_implementation: as the ``UNet``'s (its encoder half).
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
    conv_resample: bool = True
    downsample_padding: str = "same"
    norm_groups: int = 32
    norm_eps: float = 1e-5
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
        options = dict(norm_groups=self.norm_groups, norm_eps=self.norm_eps, dtype=self.dtype)
        ch = self.channels
        emb = conditioning_embedding(t, None, num_classes=None, sinusoid_dim=ch, features=4 * ch, dtype=self.dtype,
                                     network="NoisyClassifier")

        def res_block(out_channels, name):
            return ResBlock(out_channels, dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                            name=name, **options)

        def attention(name):
            return AttentionBlock(num_heads=self.num_heads, num_head_channels=self.num_head_channels, name=name,
                                  implementation=self.attention_implementation, **options)

        def downsample(h, emb, level, train):
            return Downsample(self.conv_resample, self.downsample_padding, dtype=self.dtype,
                              name=f"down_{level}_resample")(h)

        h, _ = encoder(x, emb, channels=ch, channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks,
                       attention_resolutions=self.attention_resolutions, res_block=res_block, attention=attention,
                       downsample=downsample, dtype=self.dtype, train=train)

        h = group_norm(self.norm_groups, self.norm_eps, name="norm_out")(h.astype(jnp.float32))
        pooled = jnp.mean(nn.swish(h), axis=(1, 2))  # [B, C], float32
        logits = dense(self.num_outputs, dtype=jnp.float32, zero_init=True, name="head")(pooled)
        return logits.astype(jnp.float32)
