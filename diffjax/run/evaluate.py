"""Evaluate a run's latest checkpoint: NLL bounds in bits/dim and sample quality, into ``eval/*.json``.

    evaluate(config, workdir, recipe)

writes, under ``workdir/eval/``, each bound the run's model family supports (``recipe.family.bounds``;
data sets without an evaluation split, the 2-D toys, have none):

* ``nll.json`` (the discrete family): the T-step bound of the chain over the config's
  evaluation split (``config.eval.split``, ``config.eval.num_examples``,
  ``config.eval.batch_size``) with the EMA params, total and per-t terms (see
  ``diffjax.evaluation.nll``); ``config.eval.nll_chain`` a respacing for a cheaper K-step
  bound, ``config.eval.nll_seed`` its noise.
* ``elbo.json`` (when ``config.eval.elbo``; the discrete and continuous families): the
  continuous-time VDM bound (T = infinity) over the same examples, a discrete chain on its
  continuous view, with ``config.eval.elbo_draws`` low-discrepancy time draws per example and
  ``nll_seed``; its diffusion, prior and reconstruction terms with their standard errors over
  examples (see ``diffjax.evaluation.elbo``).
* ``ode_nll.json`` (when ``config.eval.ode_nll``; the discrete and continuous families): the
  probability-flow ODE bound, uniformly dequantised, over the same examples (or the first
  ``config.eval.ode_num_examples``), with ``ode_probes`` Rademacher probes, tolerances
  ``ode_rtol`` / ``ode_atol`` and ``ode_seed`` (see ``diffjax.evaluation.ode_nll``); its mean
  NFE per batch and the standard error over examples.
* ``classifier.json`` (a noise-conditional classifier, family "classifier", instead of all the
  others): its accuracy on the evaluation split per band of noise levels, ``config.eval.elbo_draws``
  noisy copies per example and band, from ``config.eval.nll_seed``
  (``diffjax.evaluation.classifier_accuracy``).
* ``sample_quality.json`` (every diffusion family): for each entry of ``config.eval.sample_steps`` (default: the
  choice of ``config.sample``), ``config.eval.num_samples`` samples from the EMA params,
  every entry starting from the same x_T, scored by the data's metric
  (``diffjax.run.scorers``), plus ``samples_<entry>.png`` pictures of the first ones. An
  entry is a respacing of the discrete chain ("ddim25", "250": ``config.sample.method``,
  ``eta``) or a solver and its step count ("dpmpp_2m:10": ``config.sample.grid`` and the
  solver options); each row records its NFE (network evaluations per sample) and settings
  (``runtime.sampling.SamplerChoice``); the record's ``timesteps`` is the chain's T (None for
  a continuous-time or naive model).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from diffjax.data.errors import UnknownDatasetError
from diffjax.evaluation.classifier_accuracy import accuracy_by_band
from diffjax.evaluation.elbo import elbo_of_params, write_elbo_json
from diffjax.evaluation.nll import nll_of_state, write_nll_json
from diffjax.evaluation.ode_nll import first_examples, ode_nll_of_params, write_ode_nll_json
from diffjax.run.restore import chosen_params, restore_train_state
from diffjax.run.scorers import sample_scorer
from diffjax.runtime.mesh import make_mesh
from diffjax.runtime.recipe import Recipe
from diffjax.runtime.sampling import SamplerChoice, make_sampler

__all__ = ["evaluate", "quality_record", "quality_row", "sampling_step_list"]

# Samples in the picture written next to the json, per step count.
_PICTURE_SAMPLES = 64


def sampling_step_list(steps: str | Sequence[str]) -> list[str]:
    """Respacing strings from a list, or from one string separated by spaces or ";".

    >>> sampling_step_list("ddim10 ddim50;250")
    ['ddim10', 'ddim50', '250']
    """
    if isinstance(steps, str):
        parts = [p for p in re.split(r"[\s;]+", steps) if p]
        return parts or [""]
    return [str(s) for s in steps]


def _eval_split_name(config: ml_collections.ConfigDict, num_examples: int | None = None) -> str:
    """The split the NLL is computed on: ``config.eval.split`` or the data set's eval split, and its first
    ``num_examples`` (default ``config.eval.num_examples``; 0: all)."""
    from diffjax.data.catalog import image_dataset_spec  # imports TensorFlow (3-6 s): only for image data

    split = config.eval.split
    if not split:
        try:
            split = image_dataset_spec(config.data.name).eval_split or "?"
        except UnknownDatasetError:  # a recipe with its own evaluation batches
            split = "?"
    num_examples = config.eval.num_examples if num_examples is None else num_examples
    if num_examples:
        split += f"[:{num_examples}]"
    return split


def _write_json(path: str, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def quality_row(choice: SamplerChoice, family, scores: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One row of ``sample_quality.json``: how the samples were drawn (steps, NFE, sampler,
    settings), their scores, and the seconds it took; ``family``: the model's (``recipe.family``),
    which counts the steps and NFE."""
    return {
        "steps": choice.steps, "num_steps": family.num_steps(choice), "nfe": family.nfe(choice),
        "sampler": choice.label, "solver": choice.solver or f"chain_{choice.method}",
        **scores, "seconds": seconds, "settings": choice.settings(),
    }


def quality_record(checkpoint_step: int, params_name: str, scorer, sample_config, num_samples: int, family,
                   rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``sample_quality.json``: the rows with the scorer's description and the sampling settings;
    ``timesteps`` is the chain's T of a discrete ``family`` (``recipe.family``), None otherwise."""
    s = sample_config
    return {
        "checkpoint_step": checkpoint_step, "kind": scorer.kind, "metric": scorer.headline, "params": params_name,
        "method": s.method, "eta": s.eta, "clip_denoised": s.clip_denoised, "guidance_weight": s.guidance_weight,
        "num_samples": num_samples, "timesteps": family.num_timesteps, **scorer.info, "results": rows,
    }


def _scorer(config: ml_collections.ConfigDict, feature_cache_dir: str | None, mesh):
    """The sample scorer of the data (``sample_scorer``), or None with a warning when it has no metric."""
    scorer = sample_scorer(config, config.eval.num_samples, feature_cache_dir, mesh)
    if scorer is None:
        logging.warning(
            "no sample metric for data %r: set config.eval.fid_weights to pytorch-fid's Inception weights "
            "to compute FID/IS; sample quality is skipped", config.data.name,
        )
    return scorer


def _warn_of_missing_bounds(e: ml_collections.ConfigDict, family) -> None:
    """A warning per bound asked for in ``config.eval`` that the family does not have."""
    for bound, asked in (("elbo", e.elbo), ("ode_nll", e.ode_nll)):
        if asked and bound not in family.bounds:
            logging.warning("eval.%s: a %s model has no likelihood bound; skipped", bound, family.name)


def _classifier_accuracy(config, recipe: Recipe, params, mesh, details, eval_dir: str | None) -> dict[str, Any] | None:
    """A noise-conditional classifier's accuracy per band of noise levels, written to
    ``eval_dir/classifier.json`` (None: not written, another process than 0), or None without an
    evaluation split; ``details(started)`` the record's description of the run."""
    if recipe.eval_batches is None:
        return None
    started = time.perf_counter()
    accuracy = accuracy_by_band(recipe, params, mesh, recipe.eval_batches(), seed=config.eval.nll_seed,
                                draws=config.eval.elbo_draws)
    record = {**details(started), **accuracy}
    if eval_dir is not None:
        _write_json(os.path.join(eval_dir, "classifier.json"), record)
    return record


def _compute_bounds(e, recipe: Recipe, state, params, mesh, *, use_ema: bool, progress: bool, record) -> None:
    """The bounds of ``recipe.family`` that ``config.eval`` (``e``) asks for, each given to
    ``record(key, write, bound, started[, num_examples])``: the T-step NLL, the continuous ELBO (or
    VDM's T-step loss, ``elbo_T<T>``) and the PF-ODE bound."""
    bounds = recipe.family.bounds
    if "nll" in bounds:
        started = time.perf_counter()
        nll = nll_of_state(recipe, state, mesh, use_ema=use_ema, seed=e.nll_seed, chain=e.nll_chain, progress=progress)
        record("nll", write_nll_json, nll, started)
    if e.elbo and "elbo" in bounds:
        started = time.perf_counter()
        num_steps = e.elbo_steps or None  # VDM's T-step diffusion loss instead of L_inf: elbo_T<T>.json
        elbo = elbo_of_params(recipe, params, mesh, recipe.eval_batches(), draws=e.elbo_draws, seed=e.nll_seed,
                              num_steps=num_steps, progress=progress)
        record("elbo" if num_steps is None else f"elbo_T{num_steps}", write_elbo_json, elbo, started)
    if e.ode_nll and "ode_nll" in bounds:
        started = time.perf_counter()
        ode = ode_nll_of_params(
            recipe, params, mesh, first_examples(recipe.eval_batches(), e.ode_num_examples),
            probes=e.ode_probes, rtol=e.ode_rtol, atol=e.ode_atol, seed=e.ode_seed, progress=progress,
        )
        record("ode_nll", write_ode_nll_json, ode, started, e.ode_num_examples or None)


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    recipe: Recipe,
    *,
    step: int | None = None,
    compute_nll: bool = True,
    compute_samples: bool = True,
    use_ema: bool = True,
    feature_cache_dir: str | None = None,
    mesh=None,
) -> dict[str, Any]:
    """Restore a checkpoint of ``workdir`` and write its evaluation to ``workdir/eval/``.

    Every process must call it (the NLL and the sampling are sharded over all devices);
    only process 0 writes files.

    Args:
      config: the run's config (as for training).
      workdir: the run's folder, with ``checkpoints/``.
      recipe: ``build(config)`` of the experiment.
      step: which checkpoint (default: the latest).
      compute_nll: compute the bounds that apply to the model (when the recipe has an
        evaluation split): the T-step bound of a discrete model, the continuous bound when
        ``config.eval.elbo`` and the PF-ODE bound when ``config.eval.ode_nll`` (discrete and
        continuous models).
      compute_samples: sample and score (when a metric exists for the data).
      use_ema: evaluate the EMA params (the papers' protocol) instead of the raw ones.
      feature_cache_dir: where the digits classifier is cached (default ``~/.cache/diffjax``).
      mesh: the data mesh (default: every device).

    Returns:
      ``{"checkpoint_step": n, "nll": nll.json's record or None, "elbo": elbo.json's record or None,
      "ode_nll": ode_nll.json's record or None, "sample_quality": sample_quality.json's record or None}``;
      for a classifier ``{"checkpoint_step": n, "classifier": classifier.json's record or None}`` (and the
      others None).

    Raises:
      NoCheckpointError: the workdir has no checkpoint (nothing is created in it).
      CheckpointDamagedError: no checkpoint of the workdir can be read.
      CheckpointMismatchError: the checkpoint does not fit the config.
    """

    mesh = mesh or make_mesh()
    is_main = jax.process_index() == 0
    e = config.eval
    family = recipe.family
    compute_samples = compute_samples and family.draws_samples
    # Before the checkpoint and the NLL, so that a missing weights file fails at once.
    scorer = _scorer(config, feature_cache_dir, mesh) if compute_samples else None
    eval_dir = os.path.join(workdir, "eval")
    state = restore_train_state(config, workdir, recipe, mesh, step)
    checkpoint_step = int(state.step)
    params, params_name = chosen_params(state, use_ema)
    result: dict[str, Any] = {
        "checkpoint_step": checkpoint_step, "nll": None, "elbo": None, "ode_nll": None, "sample_quality": None,
    }

    def details(started: float, num_examples: int | None = None) -> dict[str, Any]:
        """What every eval record says of the run besides its numbers."""
        return {
            "checkpoint_step": checkpoint_step, "params": params_name, "data": config.data.name,
            "split": _eval_split_name(config, num_examples), "seconds": time.perf_counter() - started,
        }

    if not family.draws_samples:  # a noise-conditional classifier: its accuracy per band of noise levels
        result["classifier"] = _classifier_accuracy(config, recipe, params, mesh, details,
                                                  eval_dir if is_main else None)
        return result

    def record(key: str, write, bound, started: float, num_examples: int | None = None) -> None:
        """``result[key]``: the bound's record with the run's details, written by process 0."""
        extra = details(started, num_examples)
        if is_main:
            result[key] = write(bound, os.path.join(eval_dir, f"{key}.json"), **extra)
        else:
            result[key] = {**bound.to_json(), **extra}

    if compute_nll and recipe.eval_batches is not None:
        _warn_of_missing_bounds(e, family)
        _compute_bounds(e, recipe, state, params, mesh, use_ema=use_ema, progress=is_main, record=record)

    if scorer is not None:
        result["sample_quality"] = _sample_quality(config, recipe, mesh, params, params_name, checkpoint_step, scorer,
                                                   eval_dir)
    return result


def _sample_quality(config, recipe, mesh, params, params_name: str, checkpoint_step: int, scorer,
                    eval_dir: str) -> dict[str, Any]:
    """``sample_quality.json``: every entry of ``config.eval.sample_steps`` (or ``config.sample``'s
    choice) from the same x_T, scored, with a picture of the first samples of each."""
    e, is_main = config.eval, jax.process_index() == 0
    entries = sampling_step_list(e.sample_steps) if e.sample_steps else [None]
    choices = [SamplerChoice.from_settings(config.sample, entry) for entry in entries]
    key = jax.random.fold_in(jax.random.PRNGKey(config.train.seed + 2), checkpoint_step)
    rows = []
    for choice in choices:
        started = time.perf_counter()
        draw = make_sampler(recipe, mesh, num_samples=e.num_samples, choice=choice)
        samples = draw(params, key)  # the same key: every choice starts from the same x_T
        seconds = time.perf_counter() - started
        rows.append(quality_row(choice, recipe.family, scorer.score(samples), seconds))
        if is_main:
            picture = os.path.join(eval_dir, f"samples_{choice.label.replace(':', '_')}.png")
            recipe.save_samples(samples[:_PICTURE_SAMPLES], picture)
    quality = quality_record(checkpoint_step, params_name, scorer, config.sample, e.num_samples, recipe.family, rows)
    if is_main:
        _write_json(os.path.join(eval_dir, "sample_quality.json"), quality)
    return quality
