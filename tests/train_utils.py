"""Shared helpers of the training tests: tiny configs and recipes, a script runner."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np

from diffjax.run.experiments import build_recipe, load_experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def flat_params(params) -> np.ndarray:
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(params)])


def run_python(args, env=None, timeout=240, **kwargs):
    """Run ``python args...`` from the repo root; return the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout, **kwargs)
