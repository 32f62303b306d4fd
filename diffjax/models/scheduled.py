"""A denoiser network together with a learned noise schedule, in one params pytree.

VDM learns its noise schedule with the denoiser. ``ScheduledDenoiser`` holds both so that every
part of diffjax that handles a model's params (initialisation, the optimiser, the EMA,
checkpoints, sampling from EMA params) handles the schedule too, unchanged:

    params = {"network": <the denoiser's params>, "schedule": <the schedule's params>}

Calling the module calls the network; ``gamma`` calls the schedule
(``model.apply({"params": p}, t, method="gamma")``, or the schedule module itself on
``params["schedule"]``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.wrapper import NetworkWrapper

__all__ = ["ScheduledDenoiser"]


class ScheduledDenoiser(NetworkWrapper):
    """``network(x, t, labels, train=)`` plus ``schedule(t)`` (``models.noise_schedule``).

    Attributes:
      network: the denoiser (``UNet``, ``MLPDenoiser``).
      schedule: ``LinearSchedule`` or ``MonotoneSchedule``.
    """

    schedule: nn.Module

    def __call__(self, x, t, labels=None, train: bool = False):
        if self.is_initializing():
            self.schedule(jnp.zeros((1,), jnp.float32))  # creates the schedule's params
        return self.network(x, t, labels, train=train)

    def gamma(self, t):
        return self.schedule(t)
