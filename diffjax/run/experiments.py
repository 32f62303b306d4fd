"""Loading experiment files (``experiments/NAME.py``) by path or by name."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

__all__ = ["load_experiment"]

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
