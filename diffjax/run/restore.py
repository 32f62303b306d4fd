"""A run's training state, restored from its workdir for evaluating or sampling."""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from diffjax.diffusion.families.registry import FAMILIES
from diffjax.errors import UserError
from diffjax.run.config import read_config_json
from diffjax.runtime.checkpoint import Checkpointer
from diffjax.runtime.recipe import Recipe
from diffjax.runtime.sampling import GuidanceClassifier
from diffjax.train.loop import abstract_train_state
from diffjax.train.optim import make_optimizer

__all__ = ["NoClassifierError", "chosen_params", "restore_classifier", "restore_experiment", "restore_train_state"]


def restore_train_state(config: ml_collections.ConfigDict, workdir: str, recipe: Recipe, mesh,
                        step: int | None = None):
    """The ``TrainState`` of ``workdir``'s checkpoint ``step`` (default: the latest), replicated.

    Raises:
      NoCheckpointError: the workdir has no checkpoint (nothing is created in it).
      CheckpointDamagedError: no checkpoint of the workdir can be read.
      CheckpointMismatchError: the checkpoint does not fit the config.
    """
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        return checkpointer.restore(abstract_train_state(recipe, make_optimizer(config.train), mesh), step)
    finally:
        checkpointer.close()


def chosen_params(state, use_ema: bool) -> tuple[Any, str]:
    """The EMA or the raw params of ``state``, and their name in the output files."""
    return (state.ema_params, "ema") if use_ema else (state.params, "raw")


def restore_experiment(experiment: str, workdir: str, mesh, *, use_ema: bool = True):
    """For scripts: ``(config, recipe, params)`` of ``experiment`` ("NAME[:VARIANT]", its config
    validated) with the params of ``workdir``'s latest checkpoint (EMA by default)."""
    from diffjax.run.config import validate
    from diffjax.run.experiments import build_recipe, load_experiment

    module = load_experiment(experiment)
    config = module.get_config(experiment.partition(":")[2] or None)
    validate(config)
    recipe = build_recipe(module, config)
    params, _ = chosen_params(restore_train_state(config, workdir, recipe, mesh), use_ema)
    return config, recipe, params


class NoClassifierError(UserError, FileNotFoundError):
    """The workdir given for classifier guidance holds no trained noise-conditional classifier."""


def restore_classifier(workdir: str, mesh, step: int | None = None) -> GuidanceClassifier:
    """The noise-conditional classifier trained in ``workdir`` (its ``config.json`` and the EMA
    params of its checkpoint ``step``, default the latest), for classifier guidance.

    Raises:
      NoClassifierError: ``workdir`` has no ``config.json``, or it is not a classifier's.
      NoCheckpointError, CheckpointDamagedError, CheckpointMismatchError: as ``restore_train_state``.
    """
    from diffjax.run.experiments import build_recipe, load_experiment

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise NoClassifierError(
            f"no classifier in {workdir} (it has no config.json): train one first, e.g. python launch.py "
            f"--config experiments/digits_classifier.py --workdir {workdir}"
        )
    config = read_config_json(path)
    if FAMILIES[config.diffusion.family].draws_samples:
        raise NoClassifierError(f"{workdir} holds a {config.diffusion.family!r} model (experiment "
                                f"{config.experiment!r}), not a noise-conditional classifier (diffusion.family "
                                "'classifier')")
    try:
        module = load_experiment(config.experiment)
    except FileNotFoundError:
        module = None  # its experiment file is gone: the default recipe of the recorded config
    recipe = build_recipe(module, config)
    state = restore_train_state(config, workdir, recipe, mesh, step)
    return GuidanceClassifier(model=recipe.model, params=state.ema_params, num_classes=config.data.num_classes,
                              input_shape=tuple(recipe.input_shape), workdir=workdir,
                              network_time=recipe.family.network_time)
