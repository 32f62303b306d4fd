"""Timestep samplers for training: uniform, and improved DDPM's loss-aware importance sampler.

A sampler is three pure functions over a state pytree that the train step carries:

    state = sampler.init()
    t, weights = sampler.sample(state, key, batch_size)   # t: int32 [B], weights: float32 [B]
    state = sampler.update(state, t, losses)               # losses: float32 [B], per example

The weights 1/(T p_t) keep the importance-sampled loss an unbiased estimate of the
uniformly weighted one: multiply the per-example loss by them before averaging.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "TIMESTEP_SAMPLERS",
    "LossHistory",
    "TimestepSampler",
    "loss_second_moment_sampler",
    "loss_second_moment_weights",
    "make_timestep_sampler",
    "uniform_sampler",
]


@dataclasses.dataclass(frozen=True)
class TimestepSampler:
    """``init() -> state``, ``sample(state, key, batch_size) -> (t, weights)``,
    ``update(state, t, losses) -> state``; all pure and jit-able."""

    init: Callable[[], Any]
    sample: Callable[[Any, jax.Array, int], tuple[jax.Array, jax.Array]]
    update: Callable[[Any, jax.Array, jax.Array], Any]
    num_timesteps: int


def uniform_sampler(num_timesteps: int) -> TimestepSampler:
    """t ~ U{0, ..., T-1}, weights 1; the state is an empty tuple."""

    def sample(state, key, batch_size):
        del state
        t = jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)
        return t, jnp.ones((batch_size,), jnp.float32)

    return TimestepSampler(
        init=lambda: (),
        sample=sample,
        update=lambda state, t, losses: state,
        num_timesteps=num_timesteps,
    )


class LossHistory(NamedTuple):
    """State of the loss-second-moment sampler.

    Attributes:
      history: float32 [T, H], the last H losses seen at each t, oldest first once full.
      counts: int32 [T], how many losses have been seen at each t, saturating at H.
    """

    history: jax.Array
    counts: jax.Array


def loss_second_moment_weights(state: LossHistory, uniform_prob: float) -> jax.Array:
    """p_t proportional to sqrt(E[L_t^2]) over the history, mixed with ``uniform_prob`` of
    uniform mass; uniform until every t has a full history (improved DDPM section 3.3).

    Returns:
      float32 [T], summing to 1.
    """
    num_timesteps, history_per_term = state.history.shape
    uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps, jnp.float32)
    root_mean_square = jnp.sqrt(jnp.mean(jnp.square(state.history), axis=-1))
    total = jnp.sum(root_mean_square)
    weights = root_mean_square / jnp.where(total > 0, total, 1.0)
    weights = weights * (1.0 - uniform_prob) + uniform_prob / num_timesteps
    warmed_up = jnp.all(state.counts == history_per_term) & (total > 0)
    return jnp.where(warmed_up, weights, uniform)


def loss_second_moment_sampler(
    num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 1e-3
) -> TimestepSampler:
    """Improved DDPM's ``LossSecondMomentResampler`` as pure functions.

    The history takes every (t, loss) pair of the global batch in batch order, as the
    reference code does with losses gathered from all ranks.
    """

    def init():
        return LossHistory(
            history=jnp.zeros((num_timesteps, history_per_term), jnp.float32),
            counts=jnp.zeros((num_timesteps,), jnp.int32),
        )

    def sample(state, key, batch_size):
        probs = loss_second_moment_weights(state, uniform_prob)
        t = jax.random.choice(key, num_timesteps, (batch_size,), p=probs).astype(jnp.int32)
        weights = 1.0 / (num_timesteps * probs[t])
        return t, weights

    def update(state, t, losses):
        chex.assert_rank([t, losses], 1)
        chex.assert_equal_shape([t, losses])

        def add_one(state, pair):
            step, loss = pair
            row, count = state.history[step], state.counts[step]
            full = count == history_per_term
            shifted = jnp.concatenate([row[1:], loss[None]])
            inserted = row.at[jnp.minimum(count, history_per_term - 1)].set(loss)
            new_row = jnp.where(full, shifted, inserted)
            return LossHistory(
                history=state.history.at[step].set(new_row),
                counts=state.counts.at[step].set(jnp.minimum(count + 1, history_per_term)),
            ), None

        state, _ = jax.lax.scan(add_one, state, (t, jax.lax.stop_gradient(losses).astype(jnp.float32)))
        return state

    return TimestepSampler(init=init, sample=sample, update=update, num_timesteps=num_timesteps)


TIMESTEP_SAMPLERS: dict[str, Callable[[int], TimestepSampler]] = {
    "uniform": uniform_sampler,
    "loss_second_moment": loss_second_moment_sampler,
}
"""Timestep samplers by name; each maps T to a ``TimestepSampler``."""


def make_timestep_sampler(name: str, num_timesteps: int) -> TimestepSampler:
    """The sampler called ``name`` (a key of ``TIMESTEP_SAMPLERS``) for a T-step chain."""
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; known samplers: {sorted(TIMESTEP_SAMPLERS)}")
    return TIMESTEP_SAMPLERS[name](num_timesteps)
