"""The optimiser (an optax chain) and the exponential moving average of the params."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

__all__ = ["ema_update", "learning_rate_schedule", "make_optimizer"]


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps`` (DDPM: 5000), then constant
    or cosine decay to 0 at ``num_steps``."""
    lr, warmup, total = train_config.lr, train_config.warmup_steps, train_config.num_steps
    if train_config.lr_decay == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), end_value=0.0)
    if warmup == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping (DDPM: 1.0; 0 disables it), then Adam(W) on the warmup schedule."""
    parts = []
    if train_config.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(train_config.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate_schedule(train_config),
            b1=train_config.adam_b1,
            b2=train_config.adam_b2,
            eps=train_config.adam_eps,
            weight_decay=train_config.weight_decay,
        )
    )
    return optax.chain(*parts)


def ema_update(ema_params: Any, params: Any, decay: float | jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf (fused by XLA under jit)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema_params, params)
