"""The UNet of DDPM (Ho et al. 2020) and improved DDPM (Nichol & Dhariwal 2021).

Layout (both papers): conv_in; per resolution level ``num_res_blocks`` res
blocks (each followed by attention at the chosen resolutions), then a
downsample except at the last level; a middle res → attention → res; the
mirrored up path with ``num_res_blocks + 1`` res blocks per level, each fed the
concatenation of the running features and one stored skip; GN → swish →
zero-initialised conv_out. Every res block sees the timestep embedding
(sinusoid → Dense(4·ch) → swish → Dense(4·ch)), plus a learned class embedding
when ``num_classes`` is set.

Attention resolutions are **pixel sizes** of the feature map's height (e.g.
``(16,)`` puts attention on the 16×16 maps of a 32×32 model), read from the
input at trace time. Improved DDPM's code stores downsample factors instead
(``image_size // res``); its command-line values are pixel sizes, as here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.blocks import AttentionBlock, ResBlock
from diffjax.models.embeddings import conditioning_embedding
from diffjax.models.layers import DOWNSAMPLE_PADDINGS, Downsample, Upsample, conv3x3, group_norm

__all__ = ["UNet", "check_input", "downsample", "encoder"]


class UNet(nn.Module):
    """Denoising UNet for NHWC images.

    Attributes:
      channels: base channel count ``ch`` (the width of level 0).
      channel_mult: channel multiplier per resolution level; level ``i`` works at
        ``H / 2**i`` with ``ch * channel_mult[i]`` channels.
      num_res_blocks: res blocks per level on the way down (one more on the way up).
      attention_resolutions: feature-map heights (pixels) that get self-attention.
      out_channels: output channels; ``None`` means the input's channel count.
        Use 2C when the variance is learned.
      num_heads: attention heads (ignored when ``num_head_channels`` is set).
      num_head_channels: channels per attention head, if given.
      dropout: dropout rate inside the res blocks (only when ``train=True``).
      use_scale_shift_norm: FiLM-style conditioning of the second norm of each res block.
      resblock_updown: BigGAN-style resampling with res blocks instead of
        ``Downsample``/``Upsample``.
      conv_resample: resample with convs (True) or with avg-pool / plain nearest (False).
      downsample_padding: ``"same"`` (DDPM/TF) or ``"symmetric"`` (improved DDPM/PyTorch).
      num_classes: class-conditional with a learned embedding of ``num_classes + 1``
        rows; label ``num_classes`` is the null class of classifier-free guidance.
      norm_groups: GroupNorm groups (32 in the papers).
      norm_eps: GroupNorm epsilon (1e-6 in DDPM's TF code, 1e-5 in PyTorch).
      sinusoid_cos_first, sinusoid_freq_shift: the timestep sinusoid's convention
        (``embeddings.sinusoidal_embedding``): True, 0 as improved DDPM; False, 1 as DDPM's
        TensorFlow code and its diffusers checkpoints.
      attention_implementation: how the attention blocks compute ``dot_product_attention``:
        ``"xla"`` (any backend) or ``"cudnn"`` (cuDNN flash attention: an NVIDIA GPU and
        ``dtype`` bfloat16; see ``blocks.ATTENTION_IMPLEMENTATIONS``). Same parameters either way.
      dtype: computation dtype; params are float32 and GroupNorm / softmax run
        in float32. The output is always float32.
    """

    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    out_channels: int | None = None
    num_heads: int = 1
    num_head_channels: int | None = None
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    downsample_padding: str = "same"
    num_classes: int | None = None
    norm_groups: int = 32
    norm_eps: float = 1e-5
    sinusoid_cos_first: bool = True
    sinusoid_freq_shift: int = 0
    attention_implementation: str = "xla"
    dtype: jnp.dtype = jnp.float32

    def _block_options(self) -> dict:
        """What every res and attention block shares: its GroupNorm and dtype."""
        return dict(norm_groups=self.norm_groups, norm_eps=self.norm_eps, dtype=self.dtype)

    def _res_block(self, out_channels: int, name: str, **kwargs) -> ResBlock:
        return ResBlock(out_channels, dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm, name=name,
                        **self._block_options(), **kwargs)

    def _downsample(self, h: jnp.ndarray, emb: jnp.ndarray, level: int, train: bool) -> jnp.ndarray:
        return downsample(h, emb, level, train, res_block=self._res_block, resblock_updown=self.resblock_updown,
                          conv_resample=self.conv_resample, downsample_padding=self.downsample_padding,
                          dtype=self.dtype)

    def _attention(self, name: str) -> AttentionBlock:
        return AttentionBlock(num_heads=self.num_heads, num_head_channels=self.num_head_channels, name=name,
                              implementation=self.attention_implementation, **self._block_options())

    @nn.compact
    def __call__(self, x: jnp.ndarray, t: jnp.ndarray, labels: jnp.ndarray | None = None, *,
                 train: bool = False) -> jnp.ndarray:
        """Predicts the denoiser output for noisy images.

        Args:
          x: [B, H, W, C] noisy images.
          t: [B] timesteps as the network sees them (int or float; see
            ``diffjax.models.denoiser`` for the rescaling to 0..1000).
          labels: [B] int class labels in ``[0, num_classes]`` (``num_classes`` =
            null class); required iff the model is class-conditional.
          train: enables dropout (needs a ``'dropout'`` rng).

        Returns:
          [B, H, W, out_channels] float32.
        """
        check_input(x, self.channel_mult, self.attention_resolutions, self.downsample_padding)
        batch = x.shape[0]
        chex.assert_shape(t, (batch,))
        ch = self.channels
        emb = conditioning_embedding(t, labels, num_classes=self.num_classes, sinusoid_dim=ch, features=4 * ch,
                                     dtype=self.dtype, network="UNet", cos_first=self.sinusoid_cos_first,
                                     freq_shift=self.sinusoid_freq_shift)

        h, skips = encoder(x, emb, channels=ch, channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks,
                           attention_resolutions=self.attention_resolutions, res_block=self._res_block,
                           attention=self._attention, downsample=self._downsample, dtype=self.dtype, train=train)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._res_block(ch * mult, f"up_{level}_res_{i}")(h, emb, train=train)
                if h.shape[1] in self.attention_resolutions:
                    h = self._attention(f"up_{level}_attn_{i}")(h)
            if level != 0:
                if self.resblock_updown:
                    h = self._res_block(h.shape[-1], f"up_{level}_resample", up=True)(h, emb, train=train)
                else:
                    h = Upsample(self.conv_resample, dtype=self.dtype, name=f"up_{level}_resample")(h)

        h = group_norm(self.norm_groups, self.norm_eps, name="norm_out")(h.astype(jnp.float32))
        h = nn.swish(h).astype(self.dtype)
        out_channels = x.shape[-1] if self.out_channels is None else self.out_channels
        h = conv3x3(out_channels, dtype=self.dtype, zero_init=True, name="conv_out")(h)
        return h.astype(jnp.float32)


def check_input(x: jnp.ndarray, channel_mult: Sequence[int], attention_resolutions: Sequence[int],
                downsample_padding: str) -> None:
    """Raise ``ValueError`` unless images ``x`` [B, H, W, C] fit a network with these levels: H and W
    divisible by the downsampling, every attention resolution a feature-map height, a known padding."""
    chex.assert_rank(x, 4)
    if downsample_padding not in DOWNSAMPLE_PADDINGS:
        raise ValueError(f"downsample_padding must be one of {sorted(DOWNSAMPLE_PADDINGS)}")
    height = x.shape[1]
    factor = 2 ** (len(channel_mult) - 1)
    if height % factor or x.shape[2] % factor:
        raise ValueError(f"image size {x.shape[1:3]} is not divisible by {factor}")
    sizes = {height // 2**i for i in range(len(channel_mult))}
    missing = set(attention_resolutions) - sizes
    if missing:
        raise ValueError(
            f"attention_resolutions {sorted(missing)} (pixel sizes) do not occur; "
            f"this model's feature maps have heights {sorted(sizes)}"
        )


def downsample(h: jnp.ndarray, emb: jnp.ndarray, level: int, train: bool, *, res_block: Callable,
               resblock_updown: bool, conv_resample: bool, downsample_padding: str, dtype: jnp.dtype) -> jnp.ndarray:
    """The downsampler between ``encoder``'s levels, named ``down_{level}_resample``: a res block
    with ``down=True`` (``resblock_updown``, BigGAN style; ``res_block(out_channels, name, down=True)``)
    or ``Downsample``. [B, H, W, C] -> [B, H/2, W/2, C]."""
    name = f"down_{level}_resample"
    if resblock_updown:
        return res_block(h.shape[-1], name, down=True)(h, emb, train=train)
    return Downsample(conv_resample, downsample_padding, dtype=dtype, name=name)(h)


def encoder(x: jnp.ndarray, emb: jnp.ndarray, *, channels: int, channel_mult: Sequence[int], num_res_blocks: int,
            attention_resolutions: Sequence[int], res_block: Callable, attention: Callable, downsample: Callable,
            dtype: jnp.dtype, train: bool) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
    """The UNet's encoder half: conv_in, the down path and the middle block (res -> attention -> res).

    Call it inside a network's compact ``__call__``: its layers become that network's, under the
    names ``conv_in``, ``down_{level}_res_{i}``, ``down_{level}_attn_{i}``, ``down_{level}_resample``,
    ``mid_res_0``, ``mid_attn``, ``mid_res_1`` (``UNet`` and ``classifier.NoisyClassifier`` both use it).

    Args:
      x: [B, H, W, C] images.
      emb: [B, E] the conditioning embedding every res block sees.
      channels, channel_mult, num_res_blocks, attention_resolutions: as ``UNet``'s.
      res_block: ``res_block(out_channels, name) -> ResBlock``.
      attention: ``attention(name) -> AttentionBlock``.
      downsample: ``downsample(h, emb, level, train) -> h`` between levels.
      dtype: the computation dtype.
      train: enables dropout.

    Returns:
      (h [B, H', W', C'] after the middle block, the skips the up path consumes: conv_in's output,
      each down res block's and each downsample's, in order).
    """
    h = conv3x3(channels, dtype=dtype, name="conv_in")(x.astype(dtype))
    skips = [h]
    last = len(channel_mult) - 1
    for level, mult in enumerate(channel_mult):
        for i in range(num_res_blocks):
            h = res_block(channels * mult, f"down_{level}_res_{i}")(h, emb, train=train)
            if h.shape[1] in attention_resolutions:
                h = attention(f"down_{level}_attn_{i}")(h)
            skips.append(h)
        if level != last:
            h = downsample(h, emb, level, train)
            skips.append(h)
    h = res_block(h.shape[-1], "mid_res_0")(h, emb, train=train)
    h = attention("mid_attn")(h)
    h = res_block(h.shape[-1], "mid_res_1")(h, emb, train=train)
    return h, skips
