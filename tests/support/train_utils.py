"""Shared helpers of the training tests: tiny configs and recipes, run folders (child processes:
``tests.support.subprocesses``)."""

from __future__ import annotations

import os

import jax
import numpy as np

from diffjax.run.experiments import build_recipe, load_experiment
from diffjax.runtime.checkpoint import Checkpointer


def toy_config(num_steps: int = 6, batch_size: int = 16, **train):
    """A locked toy2d config: MLP denoiser on eight Gaussians, a few steps."""
    config = load_experiment("toy2d").get_config("eight_gaussians,smoke")
    config.model.hidden = 32
    config.model.num_blocks = 1
    config.train.num_steps = num_steps
    config.train.batch_size = batch_size
    config.train.async_checkpoints = True
    for key, value in train.items():
        config.train[key] = value
    config.lock()
    return config


def toy_recipe(config):
    """The recipe launch.py builds for a toy2d config."""
    return build_recipe(load_experiment("toy2d"), config)


def tiny_image_setup():
    """(config, recipe) of a tiny digits UNet (8 channels, one level, no attention) on 8x8x1
    images with T = 20, built on the toy config (unlocked): for tests that need image data."""
    import dataclasses

    from diffjax.data.pictures import save_image_grid
    from diffjax.run.recipes import network_from_config

    config = toy_config().copy_and_resolve_references()
    config.diffusion.timesteps = 20
    config.model = load_experiment("digits_ddpm").get_config("smoke").model
    config.model.update(channels=8, norm_groups=4, channel_mult=(1,), attention_resolutions=())
    config.data.update(channels=1, image_size=8)
    recipe = dataclasses.replace(toy_recipe(config), model=network_from_config(config), input_shape=(8, 8, 1),
                                 save_samples=save_image_grid)
    return config, recipe


def workdir_with_checkpoint(workdir: str, config, state, step: int = 0) -> str:
    """A run folder holding ``state`` as checkpoint ``step`` and ``config.json``, as a finished
    training run leaves it (for --mode=eval and --mode=sample tests)."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    checkpointer.save(step, state, force=True)
    checkpointer.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    return workdir


def flat_params(params) -> np.ndarray:
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(params)])
