"""The two building blocks of the diffusion UNets: a residual block and self-attention.

Both follow DDPM (Ho et al. 2020, App. B) and improved DDPM (Nichol & Dhariwal
2021): GroupNorm → swish → conv, the timestep embedding injected after the first
conv (added, or as a FiLM scale/shift of the second norm), a zero-initialised
last layer so that every block starts as the identity.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from diffjax.models.layers import avg_pool_2x, conv3x3, dense, group_norm, upsample_nearest_2x

__all__ = ["ATTENTION_IMPLEMENTATIONS", "AttentionBlock", "ResBlock", "attention_heads", "cudnn_attention_problem"]

# How ``jax.nn.dot_product_attention`` computes the attention: "xla" (plain XLA ops: two
# batched matmuls and a float32 softmax; any backend, any dtype) or "cudnn" (cuDNN's fused
# flash attention; NVIDIA GPUs only, bfloat16/float16 inputs, head_dim a multiple of 8 and at
# most 128, or 256 from Hopper on). JAX's own default (implementation=None) is "xla" in every
# JAX measured here (0.10); "xla" is passed explicitly so that a later JAX which picks cuDNN
# by itself cannot change a model's numerics unasked.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
_CUDNN_DTYPES = ("bfloat16", "float16")
_CUDNN_MAX_HEAD_DIM = 256  # Hopper and later; 128 before (JAX checks that on the device)


def cudnn_attention_problem(dtype, head_dims) -> str | None:
    """Why cuDNN's flash attention cannot run attention of ``head_dims`` channels per head in
    ``dtype``, or None. Static: it does not look at the device (see ``AttentionBlock``)."""
    name = jnp.dtype(dtype).name
    if name not in _CUDNN_DTYPES:
        return f"cuDNN flash attention takes bfloat16 or float16 inputs, and this model computes in {name}"
    bad = sorted({d for d in head_dims if d % 8 or d > _CUDNN_MAX_HEAD_DIM})
    if bad:
        return (f"cuDNN flash attention needs head_dim a multiple of 8 and at most {_CUDNN_MAX_HEAD_DIM} "
                f"(128 before Hopper GPUs); this model's attention has head_dim {bad}")
    return None


def attention_heads(channels: int, num_heads: int, num_head_channels: int | None, implementation: str,
                    dtype) -> int:
    """The heads of attention over ``channels`` (``channels // num_head_channels`` when that is set,
    else ``num_heads``), after checking that they split the channels and that ``implementation``
    can run them. Raises ``ValueError`` naming the problem (for ``"cudnn"``: off a GPU, or
    ``cudnn_attention_problem``; checked when tracing, it never falls back to ``"xla"``)."""
    if num_head_channels is not None:
        if channels % num_head_channels:
            raise ValueError(f"{channels} channels are not a multiple of num_head_channels={num_head_channels}")
        heads = channels // num_head_channels
    else:
        heads = num_heads
    if channels % heads:
        raise ValueError(f"{channels} channels cannot be split into {heads} heads")
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of {list(ATTENTION_IMPLEMENTATIONS)}")
    if implementation == "cudnn":
        backend = jax.default_backend()
        if backend != "gpu":
            raise ValueError(f"attention implementation 'cudnn' (cuDNN flash attention) needs an NVIDIA GPU, and "
                             f"JAX's default backend is {backend!r}: use 'xla'")
        problem = cudnn_attention_problem(dtype, [channels // heads])
        if problem:
            raise ValueError(f"attention implementation 'cudnn': {problem}")
    return heads


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding (time, plus class if any).

    ``h = conv(swish(GN(x)))``; then either ``h = swish(GN(h + dense(swish(emb))))``
    or, with scale-shift norm, ``h = swish(GN(h) * (1 + scale) + shift)`` where
    ``[scale, shift] = dense(swish(emb))``; then dropout and a zero-initialised
    conv. The skip path is the identity, or a 1x1 conv when the channel count
    changes. With ``up``/``down`` (BigGAN style) both paths are resampled
    (nearest x2 / 2x2 average pool) right before the first conv.

    Attributes:
      out_channels: channels of the output.
      dropout: dropout rate before the last conv.
      use_scale_shift_norm: FiLM from the embedding (improved DDPM) instead of addition.
      up: upsample by 2 inside the block.
      down: downsample by 2 inside the block.
      norm_groups: GroupNorm groups.
      norm_eps: GroupNorm epsilon.
      dtype: computation dtype.
    """

    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    up: bool = False
    down: bool = False
    norm_groups: int = 32
    norm_eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, emb: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """Applies the block.

        Args:
          x: [B, H, W, C_in] in ``dtype``.
          emb: [B, E] embedding.
          train: apply dropout (needs a ``'dropout'`` rng).

        Returns:
          [B, H', W', out_channels] in ``dtype``; H' = 2H with ``up``, H/2 with ``down``.
        """
        h = group_norm(self.norm_groups, self.norm_eps, name="norm_0")(x.astype(jnp.float32))
        h = nn.swish(h).astype(self.dtype)
        if self.up:
            h, x = upsample_nearest_2x(h), upsample_nearest_2x(x)
        elif self.down:
            h, x = avg_pool_2x(h), avg_pool_2x(x)
        h = conv3x3(self.out_channels, dtype=self.dtype, name="conv_0")(h)

        emb_width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb_out = dense(emb_width, dtype=self.dtype, name="emb_proj")(nn.swish(emb.astype(self.dtype)))
        emb_out = emb_out[:, None, None, :].astype(jnp.float32)  # [B, 1, 1, emb_width]
        norm_1 = group_norm(self.norm_groups, self.norm_eps, name="norm_1")
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)  # improved DDPM's order
            h = norm_1(h.astype(jnp.float32)) * (1.0 + scale) + shift
        else:
            h = norm_1(h.astype(jnp.float32) + emb_out)
        h = nn.swish(h).astype(self.dtype)
        h = nn.Dropout(rate=self.dropout, deterministic=not train)(h)
        h = conv3x3(self.out_channels, dtype=self.dtype, zero_init=True, name="conv_1")(h)

        if x.shape[-1] != self.out_channels:
            x = dense(self.out_channels, dtype=self.dtype, name="skip")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all H·W positions, added as a residual.

    ``x + proj(attn(qkv(GN(x))))`` with one dense qkv projection to 3C channels
    laid out per head as ``[q, k, v]`` (improved DDPM's "legacy" order; for one
    head this is DDPM's separate q, k, v), logits scaled by ``head_dim^-1/2``,
    softmax in float32 (``jax.nn.dot_product_attention``), and a
    zero-initialised output projection.

    Attributes:
      num_heads: number of heads (ignored when ``num_head_channels`` is set).
      num_head_channels: channels per head; heads = C // num_head_channels.
      norm_groups: GroupNorm groups.
      norm_eps: GroupNorm epsilon.
      implementation: ``dot_product_attention``'s implementation, one of
        ``ATTENTION_IMPLEMENTATIONS``. No parameters depend on it. ``"cudnn"`` is refused
        when tracing (before anything compiles) unless JAX's default backend is a GPU and
        ``cudnn_attention_problem`` finds nothing: it never falls back to ``"xla"``.
      dtype: computation dtype.
    """

    num_heads: int = 1
    num_head_channels: int | None = None
    norm_groups: int = 32
    norm_eps: float = 1e-5
    implementation: str = "xla"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """[B, H, W, C] -> [B, H, W, C] in ``dtype``."""
        _, height, width, channels = x.shape
        heads = attention_heads(channels, self.num_heads, self.num_head_channels, self.implementation, self.dtype)
        h = group_norm(self.norm_groups, self.norm_eps, name="norm")(x.astype(jnp.float32)).astype(self.dtype)
        qkv = dense(3 * channels, dtype=self.dtype, name="qkv")(h)
        q, k, v = rearrange(qkv, "b h w (n three d) -> three b (h w) n d", three=3, n=heads)
        # jax.nn.dot_product_attention promotes bf16 logits to float32 internally,
        # which jax_numpy_dtype_promotion="strict" (used in tests) would reject.
        with jax.numpy_dtype_promotion("standard"):
            out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)  # [B, H*W, heads, head_dim]
        out = rearrange(out, "b (h w) n d -> b h w (n d)", h=height, w=width)
        out = dense(channels, dtype=self.dtype, zero_init=True, name="proj_out")(out)
        return x + out
