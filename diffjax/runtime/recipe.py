"""The contract between an experiment and the trainer and evaluators: a ``Recipe`` holds
the model, the diffusion, the data and the plots. Pure data: ``diffjax.run.recipes``
builds one from a config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import numpy as np

from diffjax.diffusion.losses import Objective
from diffjax.diffusion.parameterization import DiffusionSpec
from diffjax.diffusion.schedules import Schedule
from diffjax.diffusion.timesteps import TimestepSampler

__all__ = ["Diffusion", "Recipe"]


@dataclasses.dataclass(frozen=True)
class Diffusion:
    """The diffusion side of a recipe: the chain, how outputs are read, the objective,
    and how training steps are drawn."""

    schedule: Schedule
    spec: DiffusionSpec
    objective: Objective
    timestep_sampler: TimestepSampler


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything ``train_and_evaluate`` needs besides the config.

    Attributes:
      model: the Flax denoiser network (``model.apply({"params": p}, x, t, labels, train=)``).
      input_shape: one example's shape, (H, W, C) or (D,).
      diffusion: the discrete chain's ``Diffusion`` (schedule, spec, objective, timestep
        sampler), a ``diffusion.continuous.ContinuousDiffusion`` or a
        ``diffusion.naive.NaiveDiffusion``.
      rescale_timesteps: feed the network t * 1000 / T (improved DDPM).
      num_classes: > 0 for a class-conditional model (label num_classes = null class).
      class_dropout: probability of replacing a label by the null class in training.
      train_batches: ``train_batches(start_step)`` -> iterator of this host's numpy batches
        ``{"image": float32 [b, *input_shape], "label": int32 [b]}`` for steps start_step, ...
      save_samples: ``save_samples(samples, path)`` writes a picture of float samples
        [N, *input_shape] to ``path`` (a PNG grid for images, a scatter plot for 2-D data).
      eval_batches: optional ``eval_batches()`` -> iterable over the evaluation split.
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    diffusion: Any  # Diffusion | ContinuousDiffusion | NaiveDiffusion
    rescale_timesteps: bool
    train_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
    save_samples: Callable[[np.ndarray, str], None]
    num_classes: int = 0
    class_dropout: float = 0.0
    eval_batches: Callable[[], Any] | None = None
