"""Experiment files (``experiments/NAME.py``): loading one by path or name, and its recipe.

An experiment file defines ``get_config(arg)`` and, only where the default recipe
(``diffjax.run.recipes.default_recipe``: the network of ``config.model`` on the data of
``config.data``) does not fit, ``build(config)`` returning its ``Recipe``.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import ml_collections

from diffjax.run.recipes import default_recipe
from diffjax.runtime.recipe import Recipe

__all__ = ["build_recipe", "comparison_base", "load_experiment"]

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments")


def load_experiment(path_or_name: str) -> ModuleType:
    """Import an experiment file: a path (``experiments/ddpm_cifar10.py``) or a name
    (``ddpm_cifar10``, looked up in the repository's ``experiments/``). A ``:variant``
    suffix is ignored (it is the argument of ``get_config``)."""
    path = path_or_name.split(":")[0]
    if not path.endswith(".py"):
        path = os.path.join(EXPERIMENTS_DIR, f"{path}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no experiment file {path}")
    name = "experiment_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_recipe(experiment: ModuleType, config: ml_collections.ConfigDict) -> Recipe:
    """The recipe of ``experiment`` (a module from ``load_experiment``) for ``config``: its
    ``build(config)`` if it has one, else ``default_recipe(config)``."""
    build = getattr(experiment, "build", None)
    return default_recipe(config) if build is None else build(config)


def comparison_base(arg: str | None, experiment: str, choices=()) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The base config of the objective comparison's experiments (docs/results_objectives.md) and
    the words of their variant.

    ``arg`` is comma-separated words: at most one of ``choices`` (the experiment's own), and
    optionally ``toy2d`` (the 8-Gaussians toy with the MLP, ``toy2d``'s config, instead of the
    default digits experiment's) and ``smoke`` (the base's smoke variant). The base is
    ``digits_ddpm``'s (or ``toy2d``'s) config, so every model of the comparison has its budget.

    Raises:
      ValueError: an unknown word, or two of ``choices``, naming ``experiment``.
    """
    words = [w for w in (arg or "").split(",") if w]
    known = (*choices, "toy2d", "smoke")
    if any(w not in known for w in words) or sum(w in choices for w in words) > 1:
        raise ValueError(f"unknown variant {arg!r} of {experiment}: "
                         f"{'one of ' + str(sorted(choices)) + ', ' if choices else ''}optionally toy2d and smoke, "
                         "comma-separated")
    smoke = "smoke" in words
    if "toy2d" in words:
        config = load_experiment("toy2d").get_config("eight_gaussians,smoke" if smoke else None)
    else:
        config = load_experiment("digits_ddpm").get_config("smoke" if smoke else None)
    config.experiment = experiment
    return config, words
