"""The training state: arrays only, so it can be sharded, checkpointed and eval_shape'd."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

__all__ = ["TrainState", "init_train_state"]


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the denoiser's params.
      ema_params: their exponential moving average (used for sampling and evaluation).
      opt_state: the optax state.
      sampler_state: the family's training state (``init_state``: the discrete chain's loss history of
        importance-sampled t, or ()).
      rng: the run's root PRNG key (raw uint32 [2]); step n uses ``fold_in(rng, n)``.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    sampler_state: Any
    rng: jax.Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation, sampler_state: Any, rng: jax.Array) -> TrainState:
    """A fresh state at step 0 with EMA params equal to the initial params."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(lambda p: p.copy(), params),
        opt_state=optimizer.init(params),
        sampler_state=sampler_state,
        rng=rng,
    )
