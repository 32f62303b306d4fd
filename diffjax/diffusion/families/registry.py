"""``FAMILIES``: ``config.diffusion.family`` -> the family's class (``base.Family``)."""

from __future__ import annotations

from diffjax.diffusion.continuous import ContinuousDiffusion
from diffjax.diffusion.discrete import DiscreteDiffusion
from diffjax.diffusion.naive import NaiveDiffusion
from diffjax.diffusion.noisy_classifier import NoisyClassification

__all__ = ["FAMILIES"]

FAMILIES: dict[str, type] = {
    "discrete": DiscreteDiffusion,
    "continuous": ContinuousDiffusion,
    "naive": NaiveDiffusion,
    "classifier": NoisyClassification,
}
