"""Adapters from a Flax network to the project's denoiser contract.

A denoiser is ``denoise(params, x_t, t, cond) -> output`` where ``params`` is the
plain ``'params'`` collection, ``t`` the int32 step of the original T-step
process and ``cond`` None or int32 class labels (``num_classes`` = null class).
The network itself takes ``(x, t_in, labels, *, train)``; this module fixes the
time rescaling, the train flag and the dropout key in a closure, so that a
train step builds a fresh closure with its own key each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["DenoiseFn", "abstract_params", "count_params", "init_params", "make_denoise_fn", "network_fn"]

Params = Any
DenoiseFn = Callable[[Params, jnp.ndarray, jnp.ndarray, "jnp.ndarray | None"], jnp.ndarray]


def make_denoise_fn(
    model: nn.Module,
    *,
    num_timesteps: int,
    rescale_timesteps: bool = True,
    train: bool = False,
    dropout_key: jax.Array | None = None,
) -> DenoiseFn:
    """Wraps a network (``UNet`` or ``MLPDenoiser``) as ``denoise(params, x_t, t, cond)``.

    Args:
      model: a Flax module called as ``model.apply(variables, x, t, labels, train=...)``.
      num_timesteps: T of the original process that ``t`` indexes.
      rescale_timesteps: feed the network ``t * 1000 / T`` as float32 (improved
        DDPM's ``rescale_timesteps``), so networks see the 0..1000 range for any
        T. Otherwise the integer step is fed as is (DDPM).
      train: enable dropout.
      dropout_key: PRNG key for dropout; required when ``train`` and the model
        has a nonzero ``dropout``.

    Returns:
      ``denoise(params, x_t, t, cond)``: ``x_t`` [B, H, W, C] (or [B, D]), ``t``
      int32 [B], ``cond`` None or int32 [B]; returns float32 [B, H, W, C'] (or
      [B, D']) with C' = C or 2C (mean-parameterisation channels first, then the
      variance channels).
    """
    if train and dropout_key is None and getattr(model, "dropout", 0.0) > 0.0:
        raise ValueError("train=True with dropout > 0 needs a dropout_key")
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    scale = 1000.0 / num_timesteps

    def denoise(params: Params, x_t: jnp.ndarray, t: jnp.ndarray, cond: jnp.ndarray | None) -> jnp.ndarray:
        t_in = t.astype(jnp.float32) * scale if rescale_timesteps else t
        return model.apply({"params": params}, x_t, t_in, cond, train=train, rngs=rngs)

    return denoise


def network_fn(model: nn.Module, *, train: bool = False, dropout_key: jax.Array | None = None):
    """``network(params, x, time_input, cond)`` = ``model.apply({"params": params}, x, time_input, cond,
    train=train)``: the network every model family calls with the time input it computes
    (``diffusion.families.base.Network``).

    Args:
      model: a Flax module called as ``model.apply(variables, x, t, labels, train=...)``.
      train: enable dropout.
      dropout_key: PRNG key for dropout (``train`` with a nonzero ``dropout``).
    """
    if train and dropout_key is None and getattr(model, "dropout", 0.0) > 0.0:
        raise ValueError("train=True with dropout > 0 needs a dropout_key")
    rngs = None if dropout_key is None else {"dropout": dropout_key}

    def network(params: Params, x: jnp.ndarray, time_input: jnp.ndarray, cond: jnp.ndarray | None) -> jnp.ndarray:
        return model.apply({"params": params}, x, time_input, cond, train=train, rngs=rngs)

    return network


def _dummy_inputs(model: nn.Module, input_shape: Sequence[int], batch_size: int):
    x = jnp.zeros((batch_size, *input_shape), jnp.float32)
    t = jnp.zeros((batch_size,), jnp.int32)
    labels = None if getattr(model, "num_classes", None) is None else jnp.zeros((batch_size,), jnp.int32)
    return x, t, labels


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int], batch_size: int = 1) -> Params:
    """Initialises the ``'params'`` collection of a denoiser network.

    Not jitted here (wrap it: ``jax.jit(lambda k: init_params(model, k, shape))``
    compiles the model once instead of running it op by op).

    Args:
      model: ``UNet`` or ``MLPDenoiser``.
      key: PRNG key.
      input_shape: one example's shape, (H, W, C) or (D,).
      batch_size: batch of the dummy input (params do not depend on it).

    Returns:
      The params pytree (float32 leaves).
    """
    x, t, labels = _dummy_inputs(model, input_shape, batch_size)
    return model.init(key, x, t, labels)["params"]


def abstract_params(model: nn.Module, input_shape: Sequence[int]) -> Params:
    """Shapes and dtypes of the params (``jax.ShapeDtypeStruct`` leaves), no compute."""
    return jax.eval_shape(lambda k: init_params(model, k, input_shape), jax.random.key(0))


def count_params(params: Params) -> int:
    """Total number of scalars in a params pytree (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
