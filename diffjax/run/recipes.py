"""Recipes from a config: what an experiment hands the trainer (``diffjax.runtime.recipe``).

``default_recipe(config)`` is the recipe of every experiment file without a ``build``: the
network of ``config.model`` on the data of ``config.data`` (a 2-D toy or an image set).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from diffjax.data.pictures import save_image_grid, save_scatter
from diffjax.data.toy2d import TOY_NAMES, make_toy_iterator
from diffjax.data.toy2d import sample as sample_toy
from diffjax.models.configs import make_network
from diffjax.models.fourier import FourierInput
from diffjax.models.scheduled import ScheduledDenoiser
from diffjax.run.config import network_hyperparameters
from diffjax.run.families import family_from_config, schedule_module
from diffjax.runtime.recipe import Recipe

__all__ = ["default_recipe", "image_recipe", "network_from_config", "toy_recipe"]


def image_recipe(config: ml_collections.ConfigDict, model: nn.Module) -> Recipe:
    """The recipe of an image experiment: tfds data by ``config.data.name``, PNG grids.

    Building it reads no data (``--dry_run`` needs none); ``train_batches`` opens the
    data set and fails at once, with what to do, when it is not prepared.
    """
    data = config.data

    def train_batches(start_step: int):
        # Imported when data is read, not for --dry_run (tfds; TensorFlow too while a split is not yet decoded).
        from diffjax.data.images import make_train_iterator

        return make_train_iterator(
            data.name,
            global_batch_size=config.train.batch_size,
            seed=config.train.seed,
            start_step=start_step,
            image_size=data.image_size,
            random_flip=data.random_flip,
            data_dir=data.data_dir,
        )

    def eval_batches():
        from diffjax.data.images import make_eval_batches  # as above

        return make_eval_batches(
            data.name, batch_size=config.eval.batch_size, split=config.eval.split or None,
            num_examples=config.eval.num_examples or None, image_size=data.image_size, data_dir=data.data_dir,
        )

    return Recipe(
        model=model,
        input_shape=(data.image_size, data.image_size, data.channels),
        family=family_from_config(config.diffusion, num_classes=data.num_classes),
        train_batches=train_batches,
        save_samples=save_image_grid,
        num_classes=data.num_classes,
        class_dropout=config.model.class_dropout,
        eval_batches=eval_batches,
    )


def toy_recipe(config: ml_collections.ConfigDict, model: nn.Module) -> Recipe:
    """The recipe of a 2-D toy experiment: numpy samples of ``config.data.name``, scatter
    plots of samples over data."""
    name = config.data.name
    reference = sample_toy(name, 2000, seed=config.train.seed + 1)  # unknown names fail here

    def train_batches(start_step: int):
        batches = make_toy_iterator(
            name, global_batch_size=config.train.batch_size, seed=config.train.seed, start_step=start_step
        )
        return ({"image": b["x"], "label": b["label"]} for b in batches)

    return Recipe(
        model=model,
        input_shape=(int(reference.shape[1]),),
        family=family_from_config(config.diffusion, discrete_data=False, num_classes=config.data.num_classes),
        train_batches=train_batches,
        save_samples=lambda samples, path: save_scatter(samples, path, reference),
        num_classes=config.data.num_classes,
        class_dropout=config.model.class_dropout,
    )


def network_from_config(config: ml_collections.ConfigDict) -> nn.Module:
    """The network of ``config.model``: the class ``config.model.arch`` names, built from the
    section's hyperparameters, its dtype, ``num_classes`` from ``config.data`` (a classifier's
    labels are its targets, not inputs) and the output width the family asks for
    (``output_channels``: C, 2C for a learned variance, a classifier's K logits).
    ``config.model.fourier_features`` wraps it in ``FourierInput``; a learned VDM schedule is held
    with the network in a ``ScheduledDenoiser`` (params ``network`` and ``schedule``)."""
    hyper = network_hyperparameters(config.model)
    family = family_from_config(config.diffusion, num_classes=config.data.num_classes)
    out_channels = family.output_channels(config.data.channels)
    if family.draws_samples:
        hyper["num_classes"] = config.data.num_classes or None
    network = make_network(config.model.arch, out_channels=out_channels, dtype=jnp.dtype(config.model.dtype), **hyper)
    if config.model.fourier_features:
        network = FourierInput(network=network)
    schedule = schedule_module(config.diffusion)
    return network if schedule is None else ScheduledDenoiser(network=network, schedule=schedule)


def default_recipe(config: ml_collections.ConfigDict) -> Recipe:
    """The recipe of an experiment file without ``build``: ``network_from_config`` on the
    2-D toy (``toy_recipe``) or the image data set (``image_recipe``) of ``config.data.name``."""
    model = network_from_config(config)
    if config.data.name in TOY_NAMES:
        return toy_recipe(config, model)
    return image_recipe(config, model)
