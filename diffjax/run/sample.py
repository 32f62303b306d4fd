"""Generating many samples from a checkpoint to an ``.npz`` and PNG grids.

    python launch.py --config experiments/digits_ddpm.py --workdir runs/digits --mode=sample \
        --config.sample.num=10000 --config.sample.steps=ddim100 --config.sample.seed=1

writes ``<workdir>/samples/<tag>.npz`` (``samples`` float32 [N, H, W, C] in [-1, 1],
``images`` uint8 as written to PNG, ``labels`` int32 [N] for conditional models, and the
settings), ``<tag>.json`` (the settings) and ``<tag>_grid<k>.png`` (256 samples each, for
the first 4096 samples). The sampler is ``config.sample``'s choice: the discrete chain
(``sample.method``, ``sample.steps`` a respacing) or a solver (``--config.sample.solver=dpmpp_2m
--config.sample.steps=10 --config.sample.grid=uniform_log_snr``); the record has its NFE.

With ``--config.sample.interpolation_rows=R`` it also writes ``<tag>_interpolation.png`` and
``.npz``: R rows of ``sample.interpolation_columns`` samples decoded from the slerp between
two x_T ~ N(0, I) (DDIM section 5.3; ``diffusion.latent.slerp``), which needs a
deterministic sampler (DDIM with eta = 0 or a deterministic solver).

Samples are drawn in chunks of ``config.sample.batch_size`` (a multiple of the device
count), chunk j from ``fold_in(PRNGKey(sample.seed), j)`` and split over the devices, so
the result depends on the seed and the chunk size, not on N or on how many devices run it.

Guidance: ``--config.sample.guidance_weight=W`` (classifier-free, a conditional model) and
``--config.sample.classifier_scale=S --config.sample.classifier_workdir=DIR`` (classifier guidance by
the noise-conditional classifier trained in DIR, e.g. by experiments/digits_classifier.py; the
model may be unconditional). Samples are drawn for the labels 0, 1, 2, ... cycling.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from diffjax.data.pictures import save_image_grid, to_uint8
from diffjax.diffusion.latent import slerp
from diffjax.errors import ConfigError, UserError
from diffjax.files import written_atomically
from diffjax.run.restore import chosen_params, restore_classifier, restore_train_state
from diffjax.runtime.mesh import make_mesh
from diffjax.runtime.sampling import GuidanceClassifier, SamplerChoice, make_sampler

__all__ = [
    "GRID_SIZE", "OutputNotWritableError", "ensure_writable", "generate", "generate_samples", "sample_tag",
    "write_interpolation",
]

GRID_SIZE = 256
MAX_GRIDS = 16


def sample_tag(sample_config: ml_collections.ConfigDict, params_name: str, checkpoint_step: int) -> str:
    """A file name stem that says how the samples were made."""
    s = sample_config
    choice = SamplerChoice.from_settings(s)
    if choice.solver:
        sampler = f"{choice.solver}_{choice.steps}_{choice.grid}"
    else:
        method = f"ddim_eta{s.eta:g}" if s.method == "ddim" else s.method
        sampler = f"{method}_{s.steps or 'full'}"
    guidance = f"_w{s.guidance_weight:g}" if s.guidance_weight else ""
    guidance += f"_cls{s.classifier_scale:g}" if s.classifier_scale else ""
    return f"step{checkpoint_step}_{params_name}_{sampler}{guidance}_n{s.num}_seed{s.seed}"


class OutputNotWritableError(UserError, OSError):
    """The folder that outputs go to cannot be created or written."""


def ensure_writable(directory: str) -> None:
    """Create ``directory`` if needed and check that a file can be written in it.

    Raises:
      OutputNotWritableError: naming the directory and the operating system's reason.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
            pass
    except OSError as error:
        raise OutputNotWritableError(f"cannot write to {directory}: {error.strerror or error}") from None


def generate_samples(
    recipe,
    params: Any,
    sample_config: ml_collections.ConfigDict,
    mesh: Mesh,
    out_dir: str,
    *,
    checkpoint_step: int,
    params_name: str = "ema",
    progress: bool = True,
    classifier: GuidanceClassifier | None = None,
) -> dict[str, Any]:
    """Draw ``sample_config.num`` samples and write them under ``out_dir`` (process 0 writes).

    Args:
      recipe: the experiment's recipe.
      params: denoiser params (replicated over ``mesh``).
      sample_config: ``config.sample`` (method, steps, eta, num, batch_size, seed,
        clip_denoised, guidance_weight).
      mesh: the data mesh.
      out_dir: folder of the outputs.
      checkpoint_step: recorded in the file names and metadata.
      params_name: "ema" or "raw", recorded likewise.
      progress: print a line per chunk.
      classifier: the classifier of classifier guidance (``sample_config.classifier_scale`` != 0).

    Returns:
      The metadata written to ``<tag>.json``, with the ``npz`` path.
    """
    s = sample_config
    devices = mesh.devices.size
    if s.batch_size % devices:
        raise ConfigError(f"config.sample.batch_size={s.batch_size} must be a multiple of the {devices} devices")
    choice = SamplerChoice.from_settings(s)
    if s.interpolation_rows:
        if not choice.deterministic:
            raise ConfigError(f"config.sample.interpolation_rows: interpolating latents needs a deterministic sampler "
                              f"(DDIM with eta = 0 or a deterministic solver), not {choice.label}")
        if len(recipe.input_shape) != 3:
            raise ConfigError("config.sample.interpolation_rows: interpolation grids are for image data")
    if jax.process_index() == 0:
        ensure_writable(out_dir)  # fail now, not after sampling
    draw = make_sampler(recipe, mesh, num_samples=s.batch_size, choice=choice, classifier=classifier)
    root = jax.random.PRNGKey(s.seed)
    num_labels = draw.num_labels  # of a conditional model, or the targets of classifier guidance
    conditional = num_labels > 0
    chunks, label_chunks = [], []
    started = time.perf_counter()
    num_chunks = -(-s.num // s.batch_size)
    for index in range(num_chunks):
        labels = None
        if conditional:
            first = index * s.batch_size
            labels = np.arange(first, first + s.batch_size) % num_labels
            label_chunks.append(labels)
        chunks.append(draw(params, jax.random.fold_in(root, index), labels))
        if progress and jax.process_index() == 0:
            print(f"samples: chunk {index + 1}/{num_chunks} ({time.perf_counter() - started:.1f} s)", flush=True)
    samples = np.concatenate(chunks)[: s.num].astype(np.float32)
    metadata = {
        "checkpoint_step": checkpoint_step,
        "params": params_name,
        **choice.settings(),
        "num_steps": recipe.family.num_steps(choice),
        "nfe": recipe.family.nfe(choice),
        "num": s.num,
        "batch_size": s.batch_size,
        "seed": s.seed,
        "classifier_workdir": classifier.workdir if choice.classifier_scale else "",
        "devices": devices,
        "seconds": time.perf_counter() - started,
    }
    tag = sample_tag(s, params_name, checkpoint_step)
    path = os.path.join(out_dir, tag + ".npz")
    metadata["npz"] = path
    if s.interpolation_rows:
        metadata["interpolation"] = write_interpolation(
            recipe, params, choice, mesh, os.path.join(out_dir, tag + "_interpolation"),
            rows=s.interpolation_rows, columns=s.interpolation_columns, seed=s.seed, classifier=classifier,
        )
    if jax.process_index() == 0:
        arrays = {"samples": samples, "images": to_uint8(samples)}
        if conditional:
            arrays["labels"] = np.concatenate(label_chunks)[: s.num].astype(np.int32)
        with written_atomically(path) as f:
            np.savez(f, **arrays)
        for k, start in enumerate(range(0, min(s.num, MAX_GRIDS * GRID_SIZE), GRID_SIZE)):
            recipe.save_samples(samples[start : start + GRID_SIZE], os.path.join(out_dir, f"{tag}_grid{k}.png"))
        with open(os.path.join(out_dir, tag + ".json"), "w") as f:
            json.dump(metadata, f, indent=2)
    return metadata


def write_interpolation(recipe, params: Any, choice: SamplerChoice, mesh: Mesh, stem: str, *, rows: int,
                        columns: int, seed: int, classifier: GuidanceClassifier | None = None) -> dict[str, Any]:
    """Decode slerps between pairs of x_T: ``stem``.png (one row per pair) and ``stem``.npz.

    Row r interpolates between x_T^a_r and x_T^b_r (both N(0, I), from ``seed``) at the
    fractions linspace(0, 1, ``columns``); conditional (or classifier-guided) models use class
    r mod num_classes for the whole row. Returns the record's entry (paths, fractions)."""
    key_a, key_b = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 2**30))
    shape = (rows, *recipe.input_shape)
    x_a, x_b = (jax.random.normal(k, shape, jax.numpy.float32) for k in (key_a, key_b))
    fractions = np.linspace(0.0, 1.0, columns, dtype=np.float32)
    latents = np.asarray(slerp(x_a, x_b, fractions))  # [F, R, ...]
    latents = np.swapaxes(latents, 0, 1).reshape(rows * columns, *recipe.input_shape)  # row-major: pair, fraction
    draw = make_sampler(recipe, mesh, num_samples=rows * columns, choice=choice, classifier=classifier)
    labels = np.repeat(np.arange(rows) % draw.num_labels, columns) if draw.num_labels else None
    samples = draw(params, key_a, labels, x_T=latents, standard_x_T=True).astype(np.float32)
    if jax.process_index() == 0:
        save_image_grid(samples, stem + ".png", columns=columns)
        np.savez(stem + ".npz", samples=samples.reshape(rows, columns, *recipe.input_shape), fractions=fractions)
    return {"png": stem + ".png", "npz": stem + ".npz", "rows": rows, "fractions": fractions.tolist()}


def generate(config: ml_collections.ConfigDict, workdir: str, recipe, *, step: int | None = None,
             use_ema: bool = True, mesh=None) -> dict[str, Any]:
    """``launch.py --mode=sample``: ``config.sample.num`` samples of a checkpoint into
    ``workdir/samples/``; the checkpoint is restored before the output folder is checked,
    and both before anything is sampled."""
    mesh = mesh or make_mesh()
    state = restore_train_state(config, workdir, recipe, mesh, step)
    classifier = None
    if config.sample.classifier_scale:
        classifier = restore_classifier(config.sample.classifier_workdir, mesh)
    params, params_name = chosen_params(state, use_ema)
    return generate_samples(
        recipe, params, config.sample, mesh, os.path.join(workdir, "samples"),
        checkpoint_step=int(state.step), params_name=params_name, classifier=classifier,
    )
