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
from diffjax.diffusion.continuous import ContinuousDiffusion
from diffjax.diffusion.losses import Objective
from diffjax.diffusion.naive import NaiveDiffusion
from diffjax.diffusion.noisy_classifier import NoisyClassification
from diffjax.diffusion.parameterization import DiffusionSpec
from diffjax.diffusion.schedules import named_schedule
from diffjax.diffusion.timesteps import make_timestep_sampler
from diffjax.models.configs import make_network
from diffjax.models.fourier import FourierInput
from diffjax.models.noise_schedule import LinearSchedule, MonotoneSchedule
from diffjax.models.scheduled import ScheduledDenoiser
from diffjax.run.config import network_hyperparameters
from diffjax.runtime.recipe import Diffusion, Recipe

__all__ = ["default_recipe", "diffusion_from_config", "image_recipe", "network_from_config", "schedule_module", "toy_recipe"]


def schedule_module(diffusion_config: ml_collections.ConfigDict) -> nn.Module | None:
    """The learned noise schedule's Flax module of a continuous ``vdm`` model, else None."""
    c = diffusion_config
    if c.family != "continuous" or c.process != "vdm" or c.gamma_schedule == "fixed_linear":
        return None
    if c.gamma_schedule == "learned_linear":
        return LinearSchedule(gamma_0=c.gamma_0, gamma_1=c.gamma_1)
    return MonotoneSchedule(hidden=c.schedule_hidden, gamma_0=c.gamma_0, gamma_1=c.gamma_1,
                            learn_endpoints=c.learn_endpoints)


def diffusion_from_config(diffusion_config: ml_collections.ConfigDict, discrete_data: bool = True,
                          num_classes: int = 0) -> Diffusion | ContinuousDiffusion | NaiveDiffusion | NoisyClassification:
    """Build what ``config.diffusion`` describes: the discrete chain's ``Diffusion``, a
    ``ContinuousDiffusion``, a ``NaiveDiffusion`` or a classifier's ``NoisyClassification`` of
    ``num_classes`` classes on the chain (``diffusion.family``). ``discrete_data``: 8-bit images
    (False for the 2-D toys; VDM's reconstruction term depends on it)."""
    c = diffusion_config
    if c.family == "classifier":
        return NoisyClassification(schedule=named_schedule(c.schedule, c.timesteps), num_classes=num_classes)
    if c.family == "naive":
        return NaiveDiffusion(num_levels=c.naive_levels)
    if c.family == "continuous":
        return ContinuousDiffusion(
            process=c.process, prediction=c.prediction, weighting=c.weighting, noise_sampler=c.noise_sampler,
            gamma_schedule=c.gamma_schedule, gamma_0=c.gamma_0, gamma_1=c.gamma_1, schedule=schedule_module(c),
            variance_gradient=c.variance_gradient, sigma_data=c.sigma_data, p_mean=c.p_mean, p_std=c.p_std,
            snr_gamma=c.snr_gamma, discrete_data=discrete_data,
        )
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
    data = config.data

    def train_batches(start_step: int):
        # diffjax.data.images imports TensorFlow (about 7 s): only when data is read, not for --dry_run.
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
        from diffjax.data.images import make_eval_batches  # TensorFlow, as above

        return make_eval_batches(
            data.name, batch_size=config.eval.batch_size, split=config.eval.split or None,
            num_examples=config.eval.num_examples or None, image_size=data.image_size, data_dir=data.data_dir,
        )

    return Recipe(
        model=model,
        input_shape=(data.image_size, data.image_size, data.channels),
        diffusion=diffusion_from_config(config.diffusion, num_classes=data.num_classes),
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
        diffusion=diffusion_from_config(config.diffusion, discrete_data=False),
        rescale_timesteps=config.model.rescale_timesteps,
        train_batches=train_batches,
        save_samples=lambda samples, path: save_scatter(samples, path, reference),
        num_classes=config.data.num_classes,
        class_dropout=config.model.class_dropout,
    )


def network_from_config(config: ml_collections.ConfigDict) -> nn.Module:
    """The network of ``config.model``: the class ``config.model.arch`` names, built from the
    section's hyperparameters, its dtype, ``num_classes`` from ``config.data`` and the output
    width the data and the diffusion imply (C, or 2C when ``config.diffusion.var_type`` is
    learned or learned_range for the discrete chain). ``config.model.fourier_features`` wraps it
    in ``FourierInput``; a learned VDM schedule is held with the network in a
    ``ScheduledDenoiser`` (params ``network`` and ``schedule``). A ``classifier`` (a noise-conditional
    classifier) outputs ``config.data.num_classes`` logits."""
    hyper = network_hyperparameters(config.model)
    if config.model.arch == "classifier":  # logits of the data's classes; labels are its targets, not inputs
        return make_network("classifier", out_channels=config.data.num_classes, dtype=jnp.dtype(config.model.dtype),
                            **hyper)
    spec = DiffusionSpec(config.diffusion.mean_type, config.diffusion.var_type)
    channels = config.data.channels
    network = make_network(
        config.model.arch,
        out_channels=spec.output_channels(channels) if config.diffusion.family == "discrete" else channels,
        num_classes=config.data.num_classes or None,
        dtype=jnp.dtype(config.model.dtype),
        **hyper,
    )
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
