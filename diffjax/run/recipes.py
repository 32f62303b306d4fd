"""Recipes from a config: what an experiment hands the trainer (``diffjax.runtime.recipe``)."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from diffjax.diffusion.gaussian import DiffusionSpec
from diffjax.diffusion.losses import Objective
from diffjax.diffusion.schedules import named_schedule
from diffjax.diffusion.timesteps import make_timestep_sampler
from diffjax.runtime.recipe import Diffusion, Recipe

__all__ = ["diffusion_from_config", "image_recipe", "toy_recipe", "unet_from_config"]


def diffusion_from_config(diffusion_config: ml_collections.ConfigDict) -> Diffusion:
    """Build the ``Diffusion`` that ``config.diffusion`` describes."""
    c = diffusion_config
    schedule = named_schedule(c.schedule, c.timesteps)
    return Diffusion(
        schedule=schedule,
        spec=DiffusionSpec(c.mean_type, c.var_type),
        objective=Objective(c.objective, rescale_vlb=c.rescale_vlb, weighting=c.loss_weighting, snr_gamma=c.snr_gamma),
        timestep_sampler=make_timestep_sampler(c.timestep_sampler, schedule.num_timesteps),
    )


def image_recipe(config: ml_collections.ConfigDict, model: nn.Module) -> Recipe:
    """The recipe of an image experiment: tfds data by ``config.data.name``, PNG grids.

    Building it reads no data (``--dry_run`` needs none); ``train_batches`` opens the
    data set and fails at once, with what to do, when it is not prepared.
    """
    from diffjax.data.pictures import save_image_grid

    data = config.data

    def train_batches(start_step: int):
        from diffjax.data import make_train_iterator  # imports TensorFlow: only when data is read

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
        from diffjax.data import make_eval_batches

        return make_eval_batches(
            data.name, batch_size=config.eval.batch_size, split=config.eval.split or None,
            num_examples=config.eval.num_examples or None, image_size=data.image_size, data_dir=data.data_dir,
        )

    return Recipe(
        model=model,
        input_shape=(data.image_size, data.image_size, data.channels),
        diffusion=diffusion_from_config(config.diffusion),
        rescale_timesteps=config.model.rescale_timesteps,
        train_batches=train_batches,
        save_samples=save_image_grid,
        num_classes=data.num_classes,
        class_dropout=config.model.class_dropout,
        eval_batches=eval_batches,
    )


def toy_recipe(config: ml_collections.ConfigDict, model: nn.Module) -> Recipe:
    """The recipe of a 2-D toy experiment: numpy samples of ``config.data.name``, scatter
    plots of samples over data."""
    from diffjax.data import make_toy_iterator
    from diffjax.data import sample as sample_toy
    from diffjax.data.pictures import save_scatter

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
        diffusion=diffusion_from_config(config.diffusion),
        rescale_timesteps=config.model.rescale_timesteps,
        train_batches=train_batches,
        save_samples=lambda samples, path: save_scatter(samples, path, reference),
        num_classes=config.data.num_classes,
        class_dropout=config.model.class_dropout,
    )


def unet_from_config(config: ml_collections.ConfigDict) -> nn.Module:
    """The named UNet of ``config.model.name`` with the run's dropout, dtype, classes and
    output channels (2C when ``config.diffusion.var_type`` is learned)."""
    import jax.numpy as jnp

    from diffjax.models import make_unet

    spec = DiffusionSpec(config.diffusion.mean_type, config.diffusion.var_type)
    return make_unet(
        config.model.name,
        dropout=config.model.dropout,
        out_channels=spec.output_channels(config.data.channels),
        num_classes=config.data.num_classes or None,
        dtype=jnp.dtype(config.model.dtype),
    )
