"""The contract between an experiment and the trainer and evaluators: a ``Recipe`` holds
the model, its family, the data and the plots. Pure data: ``diffjax.run.recipes``
builds one from a config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import numpy as np

__all__ = ["Recipe"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything ``train_and_evaluate`` needs besides the config.

    Attributes:
      model: the Flax network (``model.apply({"params": p}, x, time_input, labels, train=)``).
      input_shape: one example's shape, (H, W, C) or (D,).
      family: the model family (``diffusion.families``: a ``DiscreteDiffusion``,
        ``ContinuousDiffusion``, ``NaiveDiffusion`` or ``NoisyClassification``), which owns the
        losses, the network's time input, the samplers and the bounds.
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
    family: Any
    train_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
    save_samples: Callable[[np.ndarray, str], None]
    num_classes: int = 0
    class_dropout: float = 0.0
    eval_batches: Callable[[], Any] | None = None
