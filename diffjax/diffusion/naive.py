"""Naive diffusion: a non-Gaussian corruption, a network that undoes one step, iterative sampling.

The math-free baseline that diffusion tutorials start from, written as one more noise
process + objective + sampler so that it runs through the same training, sampling and
evaluation code as the Gaussian models. There is no SNR, no posterior and no likelihood:
just "destroy the data a little more at each level, and learn to undo one level".

Corruption. Fix K levels (``num_levels``). For data x_0 [B, ...] draw, once per element
(every pixel/channel entry independently),

    u ~ U(0, 1)   (when the element is replaced),    n ~ U(-1, 1)   (what replaces it).

Level k in {0, ..., K} replaces the elements with u < k/K by their noise:

    x_k = where(u < k/K, n, x_0).

The same (u, n) serve every level, so the corruption is nested: the set of replaced
elements grows with k, each element is replaced with probability k/K, x_0 is the data and
x_K = n is pure noise, independent of the data (u < 1 always). Going from x_{k-1} to x_k
replaces each still-clean element with probability 1/(K - k + 1) and leaves the rest as
they were.

Objective ("undo one step"). Draw k ~ U{1, ..., K} per example and (u, n), form x_k and
x_{k-1} from the same (u, n), and regress the network's prediction from x_k onto x_{k-1}:

    loss = mean over non-batch axes of (predict(x_k, 1000 k / K) - x_{k-1})^2.

The network sees the level as ``network_time`` = 1000 k / K (float), the range of DDPM's
timesteps, so the time embeddings of the Gaussian models are reused unchanged. The
minimiser of the expected loss is the conditional mean E[x_{k-1} | x_k]: a blur of the
possible "one level cleaner" images, not a sample from them. (For a single training image
x* it is x_k where x_k = x*, and (1/k) x* + (1 - 1/k) x_k elsewhere: a replaced element was
already replaced at level k - 1 with probability P(u < (k-1)/K | u < k/K) = 1 - 1/k.)

Sampling. Start from x_K ~ U(-1, 1) elementwise and apply the network K times:

    x_{k-1} = predict(x_k, 1000 k / K),   k = K, K - 1, ..., 1,

returning x_0 (NFE = K, one ``lax.scan``, compiled once whatever K). Nothing is re-noised:
the sampler is deterministic given x_K. ``num_steps`` < K strides the schedule, visiting
levels K, K - s, ..., s with s = K / num_steps and calling the one-step network at each:
this asks a network trained to undo ONE level to undo s levels, a train/sample mismatch
(for the single-image oracle above the strided chain ends at x* + prod_j (1 - 1/(j s))
(x_K - x*), not at x*). It is a cheap, honestly-worse option, not a principled respacing.

Shapes: x [B, ...]; ``level`` int [B] per example; u and noise like x; ``predict(x_k [B,
...], network_time float32 [B]) -> [B, ...]`` with the network's parameters closed over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp

from diffjax.diffusion.families.base import Draw
from diffjax.diffusion.schedules import check_batch

__all__ = [
    "TIME_SCALE",
    "NaiveDiffusion",
    "Predictor",
    "corrupt",
    "draw_corruption",
    "naive_loss",
    "naive_sample",
    "network_time",
    "replaced_mask",
]

TIME_SCALE = 1000.0
"""The network sees level k of K as time TIME_SCALE * k / K (DDPM's 0..1000 timestep range)."""

Predictor = Callable[[jax.Array, jax.Array], jax.Array]
"""``predict(x_k [B, ...], network_time float32 [B]) -> x_{k-1} prediction [B, ...]``."""


def _check_num_levels(num_levels: int) -> None:
    if not isinstance(num_levels, int) or isinstance(num_levels, bool) or num_levels < 1:
        raise ValueError(f"num_levels must be a positive int; got {num_levels!r}")


def network_time(level: jax.Array, num_levels: int) -> jax.Array:
    """The time the network is called with at ``level``: TIME_SCALE * level / K.

    Args:
      level: int [B] (or any shape) levels in {0, ..., K}.
      num_levels: K.

    Returns:
      float32, ``level``'s shape.
    """
    _check_num_levels(num_levels)
    return jnp.asarray(level).astype(jnp.float32) * (TIME_SCALE / num_levels)


def draw_corruption(
    key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """One element-wise draw of the corruption, shared by every level.

    Args:
      key: PRNG key.
      shape: [B, ...], the data's shape.
      dtype: floating dtype of both arrays.

    Returns:
      (u [B, ...] ~ U(0, 1): an element is replaced at level k iff u < k/K,
       noise [B, ...] ~ U(-1, 1): what it is replaced by).
    """
    u_key, noise_key = jax.random.split(key)
    u = jax.random.uniform(u_key, shape, dtype)
    noise = jax.random.uniform(noise_key, shape, dtype, minval=-1.0, maxval=1.0)
    return u, noise


def replaced_mask(u: jax.Array, level: jax.Array, num_levels: int) -> jax.Array:
    """Which elements level ``level`` replaces: u < level / K.

    k/K is formed in float32 by one correctly rounded division, which is monotone in k, so
    the masks are nested exactly: level 0 replaces nothing, level K everything (u < 1).

    Args:
      u: [B, ...] from ``draw_corruption``.
      level: int [B] levels in {0, ..., K}.
      num_levels: K.

    Returns:
      bool [B, ...].
    """
    _check_num_levels(num_levels)
    check_batch(u, level)
    chex.assert_type(level, int)
    fraction = level.astype(jnp.float32) / jnp.float32(num_levels)
    return u < fraction.reshape(level.shape + (1,) * (u.ndim - 1))


def corrupt(x0: jax.Array, level: jax.Array, u: jax.Array, noise: jax.Array, num_levels: int) -> jax.Array:
    """x_k: the elements of ``x0`` with u < k/K replaced by ``noise`` (k = ``level``, per example).

    Args:
      x0: [B, ...] data.
      level: int [B] levels in {0, ..., K}; 0 returns ``x0``, K returns ``noise``.
      u: [B, ...] replacement thresholds, U(0, 1).
      noise: [B, ...] replacement values, U(-1, 1).
      num_levels: K.

    Returns:
      x_k [B, ...], ``x0``'s dtype.
    """
    check_batch(x0, level)
    chex.assert_equal_shape([x0, u, noise])
    return jnp.where(replaced_mask(u, level, num_levels), noise.astype(x0.dtype), x0)


def naive_loss(predict: Predictor, x0: jax.Array, key: jax.Array, num_levels: int) -> dict[str, jax.Array]:
    """The one-step objective: regress predict(x_k, 1000 k / K) onto x_{k-1}.

    k ~ U{1, ..., K} per example; x_k and x_{k-1} come from one draw of (u, noise), so
    x_{k-1} is x_k with the elements where (k-1)/K <= u < k/K restored to the data. The
    minimiser is E[x_{k-1} | x_k].

    Args:
      predict: ``predict(x_k [B, ...], network_time [B]) -> [B, ...]``, the parameters closed over.
      x0: [B, ...] data.
      key: PRNG key for the levels and the corruption.
      num_levels: K.

    Returns:
      dict with ``loss`` [B] (the squared error averaged over non-batch axes) and
      ``level`` int32 [B] (the k each example was trained at).
    """
    _check_num_levels(num_levels)
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch [B, ...]; got shape {x0.shape}")
    batch_size = x0.shape[0]
    level_key, corruption_key = jax.random.split(key)
    level = jax.random.randint(level_key, (batch_size,), 1, num_levels + 1, dtype=jnp.int32)
    u, noise = draw_corruption(corruption_key, x0.shape, x0.dtype)
    x_k = corrupt(x0, level, u, noise, num_levels)
    target = corrupt(x0, level - 1, u, noise, num_levels)
    prediction = predict(x_k, network_time(level, num_levels))
    chex.assert_equal_shape([prediction, target])
    error = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    return dict(loss=jnp.mean(error, axis=tuple(range(1, x0.ndim))), level=level)


def naive_sample(
    predict: Predictor,
    key: jax.Array | None,
    shape: tuple[int, ...],
    num_levels: int,
    *,
    x_K: jax.Array | None = None,
    num_steps: int | None = None,
) -> jax.Array:
    """Iterative sampling: x_K ~ U(-1, 1), then x_{k-1} = predict(x_k, 1000 k / K) down to x_0.

    One ``lax.scan`` over the visited levels: the network is traced once and the program
    compiles once whatever K (``shape``, ``num_levels`` and ``num_steps`` are static).
    NFE = ``num_steps`` (K by default).

    With ``num_steps`` = N < K the levels visited are K, K - s, ..., s (s = K / N), and the
    network trained to undo ONE level is asked to jump s levels at each call: a mismatch
    with training, kept as a cheap option, not a correct respacing (a one-step optimal
    predictor does not reach the data this way; see the module docstring).

    Args:
      predict: ``predict(x_k [B, ...], network_time [B]) -> [B, ...]``, the parameters closed over.
      key: PRNG key for x_K; may be None when ``x_K`` is given.
      shape: [B, ...] of the samples.
      num_levels: K, as in training.
      x_K: start from this [B, ...] instead of noise drawn from ``key``.
      num_steps: network calls, a divisor of K; default K.

    Returns:
      x_0 [B, ...].

    Raises:
      ValueError: ``num_steps`` not a positive divisor of K, or neither ``key`` nor ``x_K``.
    """
    _check_num_levels(num_levels)
    num_steps = num_levels if num_steps is None else num_steps
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1 or num_levels % num_steps:
        raise ValueError(f"num_steps must be a positive divisor of num_levels={num_levels}; got {num_steps!r}")
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be a batch [B, ...]; got {shape}")
    if x_K is None:
        if key is None:
            raise ValueError("naive_sample needs a PRNG key or x_K")
        x_K = jax.random.uniform(key, shape, jnp.float32, minval=-1.0, maxval=1.0)
    chex.assert_shape(x_K, shape)
    stride = num_levels // num_steps
    batch_size = shape[0]

    def body(x, level):
        times = network_time(jnp.full((batch_size,), level, jnp.int32), num_levels)
        x_prev = predict(x, times)
        chex.assert_equal_shape([x_prev, x])
        return x_prev.astype(x.dtype), None

    levels = jnp.arange(num_levels, 0, -stride, dtype=jnp.int32)  # K, K - s, ..., s
    x0, _ = jax.lax.scan(body, x_K, levels)
    return x0


@dataclasses.dataclass(frozen=True)
class NaiveDiffusion:
    """Naive diffusion as a model family (``config.diffusion.family = "naive"``): no Gaussian
    process, no likelihood, its own iterative sampler from uniform noise.

    Attributes:
      num_levels: K.
    """

    num_levels: int = 100

    name: ClassVar[str] = "naive"
    gaussian: ClassVar[bool] = False
    draws_samples: ClassVar[bool] = True
    bounds: ClassVar[tuple[str, ...]] = ()
    CONFIG: ClassVar[Mapping[str, Any]] = {
        "num_levels": 100,  # K corruption levels (the sampler's NFE)
    }

    def __post_init__(self):
        if not isinstance(self.num_levels, int) or isinstance(self.num_levels, bool) or self.num_levels < 1:
            raise ValueError(f"num_levels: must be an integer >= 1, got {self.num_levels!r}")

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **context) -> NaiveDiffusion:
        return cls(num_levels={**cls.CONFIG, **values}["num_levels"])

    num_timesteps: ClassVar[None] = None

    def output_channels(self, data_channels: int) -> int:
        return data_channels

    def init_state(self) -> Any:
        return ()

    def losses(self, network: Callable, params, x0: jax.Array, key: jax.Array, cond=None) -> dict[str, jax.Array]:
        """``naive_loss`` of ``network(params, x, network_time, cond)``: ``loss`` and ``level`` [B]."""

        def predict(x_k, time):
            return network(params, x_k, time, cond)

        return naive_loss(predict, x0, key, self.num_levels)

    def train_losses(self, network: Callable, params, x0: jax.Array, keys, cond, state):
        """The family contract's losses (``losses`` with ``keys[0]``; no state)."""
        return self.losses(network, params, x0, keys[0], cond), state

    def prior_sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """x_K ~ U(-1, 1) elementwise, [*shape]."""
        return jax.random.uniform(key, shape, jnp.float32, minval=-1.0, maxval=1.0)

    def sample(self, predict: Predictor, x_K: jax.Array, num_steps: int | None = None) -> jax.Array:
        """``naive_sample`` from the given x_K [B, ...] with ``num_steps`` network calls (K by default)."""
        return naive_sample(predict, None, x_K.shape, self.num_levels, x_K=x_K, num_steps=num_steps)

    # ------------------------------------------------------------------ the family's sampler

    def check_choice(self, choice) -> None:
        """Naive diffusion takes its own sampler only: no solver, steps a number of levels or ''."""
        if choice.solver:
            raise ValueError(f"naive diffusion has its own iterative sampler, not the solver {choice.solver!r}: "
                             "set sample.solver='' and steps to the number of levels visited ('' for all)")
        if choice.steps and not choice.steps.isdigit():
            raise ValueError(f"naive diffusion takes steps = a number of levels or '', got {choice.steps!r}")

    def num_steps(self, choice) -> int:
        """The levels visited (K for steps '')."""
        return int(choice.steps) if choice.steps else self.num_levels

    def nfe(self, choice) -> int:
        return self.num_steps(choice)

    def make_draw(self, choice, network: Callable, guidance, options) -> Draw:
        """``sample`` of the (classifier-free guided) network from x_K, ``num_steps(choice)`` levels."""
        num_steps = self.num_steps(choice)

        def fn(params, key, labels, guidance_weight, classifier_args, x_T, drawn, traced):
            def predict(x, network_time):
                return guidance.network(network, guidance_weight)(params, x, network_time, guidance.model_cond(labels))

            return self.sample(predict, x_T, num_steps)

        return Draw(fn=fn, traced={}, prior=self.prior_sample)
