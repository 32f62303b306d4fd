"""Released checkpoints as a workdir: ``launch.py --mode=import`` converts a published network
(``diffjax.models.convert_diffusers`` / ``convert_openai``) into a step-0 checkpoint and a
``config.json``, so that ``--mode=sample`` (every sampler and solver), ``--mode=eval`` and
fine-tuning (``--mode=train`` resumes from it) run on it as on a workdir diffjax trained.

A config that imports has a ``pretrained`` section (``experiments/pretrained.py``):
``format`` ("diffusers": ``path`` is a model folder; "openai": ``path`` is a ``.pt`` or
``.safetensors`` state dict and ``args`` the ``UNetModel`` constructor's arguments;
"openai_classifier": the same of an ``EncoderUNetModel``, a noisy classifier for guidance) and
``path``. The network the weights describe must be the config's ``model`` (the presets are the
released layouts): a differing hyperparameter, image size, channel count or class count is an
error naming it, before anything compiles. The imported params are both the params and the EMA
params of the checkpoint (the releases are EMA weights); the optimiser state is fresh.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from diffjax.errors import UserError
from diffjax.models.convert_diffusers import load_diffusers_unet
from diffjax.models.convert_openai import load_openai_classifier, load_openai_unet
from diffjax.models.state_dicts import ConvertedNetwork, check_params
from diffjax.run.config import network_hyperparameters
from diffjax.runtime.checkpoint import Checkpointer
from diffjax.runtime.mesh import make_mesh, replicated_sharding
from diffjax.runtime.recipe import Recipe
from diffjax.train.loop import make_init_fn, record_config
from diffjax.train.optim import make_optimizer
from diffjax.train.state import init_train_state

__all__ = ["FORMATS", "PretrainedError", "check_fits", "import_pretrained", "read_pretrained"]

FORMATS = ("diffusers", "openai", "openai_classifier")
# Hyperparameters that do not change the computation of a trained network at sampling time.
_TRAINING_ONLY = ("dropout", "attention_implementation")


class PretrainedError(UserError, ValueError):
    """A config that cannot import its checkpoint: no ``pretrained`` section, or a network that
    differs from the config's."""


def read_pretrained(config: ml_collections.ConfigDict, num_classes: int) -> ConvertedNetwork:
    """The network of ``config.pretrained``, converted, after checking that it is ``config``'s
    (a class-conditional one of ``num_classes`` classes, or unconditional for 0).

    Raises:
      PretrainedError: no ``pretrained`` section, an unknown format, or a network that is not
        the config's (naming the first differing key and both values).
      CheckpointError: a missing or unreadable file, or weights that do not fit their description.
    """
    if "pretrained" not in config or not config.pretrained.path:
        raise PretrainedError("--mode=import needs config.pretrained.path: use an experiments/pretrained.py "
                              "variant with --config.pretrained.path=WHERE_THE_DOWNLOADED_WEIGHTS_ARE")
    spec = config.pretrained
    if spec.format not in FORMATS:
        raise PretrainedError(f"config.pretrained.format: {spec.format!r} is not one of {list(FORMATS)}")
    if spec.format == "diffusers":
        converted = load_diffusers_unet(spec.path)
    elif spec.format == "openai":
        converted = load_openai_unet(spec.path, spec.args.to_dict())
    else:
        converted = load_openai_classifier(spec.path, spec.args.to_dict())
    check_fits(config, converted, num_classes)
    return converted


def check_fits(config: ml_collections.ConfigDict, converted: ConvertedNetwork, num_classes: int) -> None:
    """Raise ``PretrainedError`` unless ``converted`` is ``config``'s network (its ``model`` keys but
    the training-only ones, its image shape) with ``num_classes`` classes."""
    source = config.pretrained.path
    mine_all = {"arch": config.model.arch, **network_hyperparameters(config.model)}
    for key, value in converted.model.items():
        if key in _TRAINING_ONLY:
            continue
        mine = mine_all.get(key)
        if mine != value:
            raise PretrainedError(f"{source} is a network with model.{key}={value!r} and the config has {mine!r}: "
                                  f"use the experiments/pretrained.py variant of this checkpoint")
    height, width, channels = converted.image_shape
    shape = (config.data.image_size, config.data.image_size, config.data.channels)
    if shape != (height, width, channels):
        raise PretrainedError(f"{source} is a network of {height}x{width}x{channels} images and the config's data "
                              f"are {shape[0]}x{shape[1]}x{shape[2]} (data.image_size, data.channels)")
    if converted.model["arch"] == "classifier":
        imported = converted.out_channels  # its logits
    else:
        stored = converted.params.get("label_embed", {}).get("embedding")
        imported = 0 if stored is None else stored.shape[0] - 1
    if imported != num_classes:
        raise PretrainedError(f"{source} is a network of {imported} classes and the config's of {num_classes} "
                              f"(data.num_classes)")


def import_pretrained(config: ml_collections.ConfigDict, workdir: str, recipe: Recipe, mesh=None) -> str:
    """``launch.py --mode=import``: ``config.pretrained``'s network as the step-0 checkpoint of
    ``workdir`` (params = EMA params = the imported ones; a fresh optimiser and sampler state),
    and the config as ``config.json``. Returns the checkpoint's folder.

    Raises:
      PretrainedError: as ``read_pretrained``, or ``workdir`` already holds checkpoints.
    """
    converted = read_pretrained(config, recipe.num_classes)
    directory = os.path.join(workdir, "checkpoints")
    checkpointer = Checkpointer(directory, async_save=False)
    try:
        if checkpointer.latest_step() is not None:
            raise PretrainedError(f"{workdir} already holds checkpoints: import into an empty workdir")
        optimizer = make_optimizer(config.train)
        abstract = jax.eval_shape(make_init_fn(recipe, optimizer), jax.random.PRNGKey(0))
        check_params(converted.params, abstract.params, config.pretrained.path)
        params = jax.tree.map(lambda a, like: np.asarray(a, like.dtype), converted.params, abstract.params)
        state = init_train_state(params, optimizer, recipe.family.init_state(), jax.random.PRNGKey(config.train.seed))
        checkpointer.save(0, jax.device_put(state, replicated_sharding(mesh or make_mesh())), force=True)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        record_config(config, workdir, start_step=0)
    return directory
