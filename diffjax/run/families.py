"""A config's model family: ``config.diffusion`` turned into the family object of
``diffusion.families.registry.FAMILIES`` (with the learned noise schedule's network, which the
pure layer cannot build)."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from diffjax.diffusion.families.registry import FAMILIES
from diffjax.models.noise_schedule import LinearSchedule, MonotoneSchedule

__all__ = ["family_from_config", "schedule_module"]


def schedule_module(diffusion_config: ml_collections.ConfigDict) -> nn.Module | None:
    """The learned noise schedule's Flax module of a continuous ``vdm`` model, else None."""
    c = diffusion_config
    if c.get("process") != "vdm" or c.gamma_schedule == "fixed_linear":
        return None
    if c.gamma_schedule == "learned_linear":
        return LinearSchedule(gamma_0=c.gamma_0, gamma_1=c.gamma_1)
    return MonotoneSchedule(hidden=c.schedule_hidden, gamma_0=c.gamma_0, gamma_1=c.gamma_1,
                            learn_endpoints=c.learn_endpoints)


def family_from_config(diffusion_config: ml_collections.ConfigDict, discrete_data: bool = True,
                       num_classes: int = 0):
    """The model family ``config.diffusion`` describes (``diffusion.families.registry.FAMILIES``
    by ``diffusion.family``, built from the section's other keys). ``discrete_data``: 8-bit
    images (False for the 2-D toys; VDM's reconstruction term depends on it); ``num_classes``:
    the data's classes (a classifier's logits).

    Raises:
      ValueError: the family's own check of a value (``run.config.validate`` names the key).
    """
    values = {key: value for key, value in diffusion_config.items() if key != "family"}
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    return FAMILIES[diffusion_config.family].from_values(
        values, discrete_data=discrete_data, num_classes=num_classes, schedule_module=schedule_module(diffusion_config))
