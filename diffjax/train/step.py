"""The compiled training step: one pure function, jitted once over the device mesh."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffjax.models.denoiser import network_fn
from diffjax.runtime.mesh import data_sharding, replicated_sharding
from diffjax.runtime.recipe import Recipe
from diffjax.train.optim import ema_update
from diffjax.train.state import TrainState

__all__ = ["METRIC_TERMS", "make_train_step", "train_step"]

METRIC_TERMS = ("mse", "vb", "diffusion", "prior", "reconstruction", "accuracy")
"""Per-example terms of a family's losses that are logged (their batch means) when present."""


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    recipe: Recipe,
    optimizer: optax.GradientTransformation,
    ema_decay: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update: the family's losses (it draws its noise levels and noise), a step of the
    optimiser, the EMA and the family's training state (e.g. the loss history of
    importance-sampled t).

    A step whose loss or gradient is not finite leaves the state unchanged (``finite`` is
    0 in its metrics), so a NaN can never reach the params or a checkpoint; the loop
    stops at its next look at the metrics.

    Args:
      state: the current state.
      batch: ``image`` float32 [B, ...] in [-1, 1], ``label`` int32 [B].
      recipe: model, family and conditioning settings (static).
      optimizer: the optax transformation.
      ema_decay: EMA decay.

    Returns:
      (new state, metrics of scalars: loss, grad_norm, finite, and the family's terms of
      ``METRIC_TERMS`` where defined).
    """
    x0 = batch["image"]
    batch_size = x0.shape[0]
    key = jax.random.fold_in(state.rng, state.step)
    key_t, key_noise, key_dropout, key_label = jax.random.split(key, 4)

    cond = None
    if recipe.num_classes > 0:
        drop = jax.random.bernoulli(key_label, recipe.class_dropout, (batch_size,))
        cond = jnp.where(drop, recipe.num_classes, batch["label"]).astype(jnp.int32)

    network = network_fn(recipe.model, train=True, dropout_key=key_dropout)

    def loss_fn(params):
        terms, family_state = recipe.family.train_losses(network, params, x0, (key_t, key_noise), cond,
                                                         state.sampler_state)
        return jnp.mean(terms["loss"]), (terms, family_state)

    (loss, (terms, sampler_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    updated = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema_update(state.ema_params, params, ema_decay),
        opt_state=opt_state,
        sampler_state=sampler_state,
    )
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}
    for name in METRIC_TERMS:
        if name in terms:
            metrics[name] = jnp.mean(terms[name])
    return new_state, metrics


def make_train_step(
    recipe: Recipe, optimizer: optax.GradientTransformation, ema_decay: float, mesh: Mesh
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step`` jitted over ``mesh``: batch sharded along ``data``, state replicated
    and donated (updated in place), metrics replicated."""
    replicated = replicated_sharding(mesh)

    def step(state, batch):
        return train_step(state, batch, recipe=recipe, optimizer=optimizer, ema_decay=ema_decay)

    return jax.jit(
        step,
        in_shardings=(replicated, data_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
