"""Evaluate a run's latest checkpoint: NLL in bits/dim and sample quality, into ``eval/*.json``.

    evaluate(config, workdir, recipe)

writes, under ``workdir/eval/``:

* ``nll.json``: the bound over the config's evaluation split (``config.eval.split``,
  ``config.eval.num_examples``, ``config.eval.batch_size``) with the EMA params, total
  and per-t terms (see ``diffjax.evaluation.nll``). Data sets without an evaluation
  split (the 2-D toys) have none.
* ``sample_quality.json``: for each sampling step count, samples from the EMA params
  with the config's sampler (``config.sample.method``, ``eta``, ``clip_denoised``,
  ``guidance_weight``), all step counts starting from the same x_T, scored with

  - digits: FD-digits against the train and the test split, the classifier's mean
    confidence and the class histogram of the samples (``digits_features``);
  - 2-D toys: unbiased MMD^2 and sliced Wasserstein against fresh data (``toy_metrics``);
  - other image data sets: FID and IS (``diffjax.evaluation.fid``) against cached
    statistics of ``eval.fid_reference_split``, when ``eval.fid_weights`` names
    pytorch-fid's Inception weights (also added to the digits metrics when set); without
    weights, no file and a warning;

  plus ``samples_<steps>.png`` pictures of the first samples.

Options beyond the base config are read from ``config.eval`` when present there, and can
be given as arguments (which win): ``sample_steps`` (respacings, a list or one string
separated by spaces or ";", default ``[config.sample.steps]``), ``num_samples`` (default
1000), ``nll_chain`` ("" = the T-step bound, default), ``nll_seed`` (0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from diffjax.diffusion.schedules import respace
from diffjax.evaluation.nll import nll_of_state, write_nll_json
from diffjax.run.restore import chosen_params, restore_train_state
from diffjax.runtime.mesh import make_mesh
from diffjax.runtime.sampling import make_sampler

__all__ = ["evaluate", "sample_quality_kind", "sampling_step_list"]

DEFAULT_NUM_SAMPLES = 1000
# Samples in the picture written next to the json, per step count.
_PICTURE_SAMPLES = 64


def _option(config: ml_collections.ConfigDict, name: str, given: Any, default: Any) -> Any:
    """``given`` if not None, else ``config.eval.<name>`` if the config has it, else ``default``."""
    if given is not None:
        return given
    value = config.eval.get(name, None) if "eval" in config else None
    return default if value is None or value == "" else value


def sampling_step_list(steps: str | Sequence[str]) -> list[str]:
    """Respacing strings from a list, or from one string separated by spaces or ";".

    >>> sampling_step_list("ddim10 ddim50;250")
    ['ddim10', 'ddim50', '250']
    """
    if isinstance(steps, str):
        parts = [p for p in re.split(r"[\s;]+", steps) if p]
        return parts or [""]
    return [str(s) for s in steps]


def sample_quality_kind(config: ml_collections.ConfigDict) -> str | None:
    """Which sample metric applies to the config's data: "digits", "toy2d", "fid" or None.

    Digits and the 2-D toys have their in-domain metrics (plus FID on digits when
    ``eval.fid_weights`` is set); other image data sets are scored with FID/IS when
    ``eval.fid_weights`` is set, and not at all otherwise.
    """
    from diffjax.data.toy2d import TOY_NAMES

    if config.data.name == "digits":
        return "digits"
    if config.data.name in TOY_NAMES:
        return "toy2d"
    return "fid" if config.eval.fid_weights else None


def _fid_scorer(config: ml_collections.ConfigDict, mesh, cache_dir: str | None):
    """``(FidScorer, description)`` for ``eval.fid_weights``; fails at once on a missing file."""
    from diffjax.evaluation.fid import FidScorer, reference_stats
    from diffjax.evaluation.frechet import load_stats
    from diffjax.evaluation.inception import weights_digest

    e = config.eval
    info = {"fid_weights": e.fid_weights, "fid_image_size": e.fid_image_size}
    if e.fid_reference:
        if not os.path.isfile(e.fid_reference):
            raise FileNotFoundError(f"config.eval.fid_reference: no statistics file at {e.fid_reference!r}")
        reference = load_stats(e.fid_reference)
        info["fid_reference"] = e.fid_reference
    else:
        def reference(inception):
            stats, path = reference_stats(
                inception, data_name=config.data.name, split=e.fid_reference_split,
                data_image_size=config.data.image_size, weights_path=e.fid_weights, image_size=e.fid_image_size,
                num_examples=e.fid_reference_examples, cache_dir=cache_dir, data_dir=config.data.data_dir,
            )
            info["fid_reference"] = path
            return stats

    scorer = FidScorer.create(
        e.fid_weights, reference, image_size=e.fid_image_size, batch_size=e.fid_batch_size, mesh=mesh
    )
    info["fid_weights_sha256"] = weights_digest(e.fid_weights)
    info["fid_reference_count"] = scorer.reference.count
    return scorer, info


def _eval_split_name(config: ml_collections.ConfigDict) -> str:
    """The split the NLL is computed on: ``config.eval.split`` or the data set's eval split."""
    from diffjax.data.catalog import image_dataset_spec
    from diffjax.data.errors import UnknownDatasetError

    split = config.eval.split
    if not split:
        try:
            split = image_dataset_spec(config.data.name).eval_split or "?"
        except UnknownDatasetError:  # a recipe with its own evaluation batches
            split = "?"
    if config.eval.num_examples:
        split += f"[:{config.eval.num_examples}]"
    return split


def _write_json(path: str, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def _reference_scorer(kind: str, config: ml_collections.ConfigDict, num_samples: int, cache_dir: str | None, mesh=None):
    """``(score(samples) -> dict, headline metric name, description of the references)``."""
    fid = _fid_scorer(config, mesh, cache_dir) if config.eval.fid_weights and kind != "toy2d" else None
    if kind == "fid":
        return fid[0], "fid", fid[1]
    score, headline, info = _in_domain_scorer(kind, config, num_samples, cache_dir)
    if fid is None:
        return score, headline, info
    fid_scorer, fid_info = fid
    return (lambda samples: {**score(samples), **fid_scorer(samples)}), headline, {**info, **fid_info}


def _in_domain_scorer(kind: str, config: ml_collections.ConfigDict, num_samples: int, cache_dir: str | None):
    """The digits classifier's or the 2-D toys' metrics: ``(score, headline, info)``."""
    if kind == "digits":
        from diffjax.evaluation import digits_features as df
        from diffjax.evaluation.frechet import frechet_distance

        net = df.load_digits_classifier(cache_dir)
        test_images, test_labels = df.digits_arrays("test")
        references = {"train": net.stats(df.digits_arrays("train")[0]), "test": net.stats(test_images)}
        info = {
            "references": "digits train (1500) and test (297) splits",
            # What a perfect model would score, up to the sample count: the test split vs train.
            "fd_digits_test_split_vs_train": frechet_distance(references["test"], references["train"]),
            "classifier": {
                "settings": dataclasses.asdict(net.settings),
                "cache_key": net.settings.cache_key(),
                "test_accuracy": net.accuracy(test_images, test_labels),
            },
        }
        return (lambda samples: df.digits_sample_metrics(net, samples, references)), "fd_digits_train", info
    from diffjax.data.toy2d import sample as sample_toy
    from diffjax.evaluation.toy_metrics import ToySampleScorer

    reference_seed = config.train.seed + 12345
    reference = sample_toy(config.data.name, max(num_samples, 2000), seed=reference_seed)
    info = {"references": f"{len(reference)} fresh samples of {config.data.name} (seed {reference_seed})"}
    return ToySampleScorer(reference), "mmd", info


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    recipe,
    *,
    step: int | None = None,
    sample_steps: str | Sequence[str] | None = None,
    num_samples: int | None = None,
    nll_chain: str | None = None,
    nll_seed: int | None = None,
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
      sample_steps: respacings to sample with (default: ``config.eval.sample_steps`` if
        the config has it, else ``[config.sample.steps]``).
      num_samples: samples per step count (default ``config.eval.num_samples`` or 1000).
      nll_chain: "" for the T-step bound (default); a respacing for the cheaper K-step one.
      nll_seed: root seed of the NLL noise (default ``config.eval.nll_seed`` or 0).
      compute_nll: compute the bound (when the recipe has an evaluation split).
      compute_samples: sample and score (when a metric exists for the data).
      use_ema: evaluate the EMA params (the papers' protocol) instead of the raw ones.
      feature_cache_dir: where the digits classifier is cached (default ``~/.cache/diffjax``).
      mesh: the data mesh (default: every device).

    Returns:
      ``{"checkpoint_step": n, "nll": nll.json's record or None, "sample_quality":
      sample_quality.json's record or None}``.

    Raises:
      NoCheckpointError: the workdir has no checkpoint (nothing is created in it).
      CheckpointDamagedError: no checkpoint of the workdir can be read.
      CheckpointMismatchError: the checkpoint does not fit the config.
    """

    mesh = mesh or make_mesh()
    is_main = jax.process_index() == 0
    kind = sample_quality_kind(config) if compute_samples else None
    if compute_samples and kind is None:
        logging.warning(
            "no sample metric for data %r: set config.eval.fid_weights to pytorch-fid's Inception weights "
            "to compute FID/IS; sample quality is skipped", config.data.name,
        )
    if kind is not None:  # before the checkpoint and the NLL, so that a missing weights file fails at once
        count = int(_option(config, "num_samples", num_samples, DEFAULT_NUM_SAMPLES))
        score, headline, info = _reference_scorer(kind, config, count, feature_cache_dir, mesh)
    eval_dir = os.path.join(workdir, "eval")
    state = restore_train_state(config, workdir, recipe, mesh, step)
    checkpoint_step = int(state.step)
    params, params_name = chosen_params(state, use_ema)
    result: dict[str, Any] = {"checkpoint_step": checkpoint_step, "nll": None, "sample_quality": None}

    if compute_nll and recipe.eval_batches is not None:
        chain = _option(config, "nll_chain", nll_chain, "")
        seed = int(_option(config, "nll_seed", nll_seed, 0))
        started = time.perf_counter()
        nll = nll_of_state(recipe, state, mesh, use_ema=use_ema, seed=seed, chain=chain, progress=is_main)
        extra = {
            "checkpoint_step": checkpoint_step, "params": params_name, "data": config.data.name,
            "split": _eval_split_name(config), "seconds": time.perf_counter() - started,
        }
        if is_main:
            result["nll"] = write_nll_json(nll, os.path.join(eval_dir, "nll.json"), **extra)
        else:
            result["nll"] = {**nll.to_json(), **extra}

    if kind is not None:
        steps_list = sampling_step_list(_option(config, "sample_steps", sample_steps, config.sample.steps))
        key = jax.random.fold_in(jax.random.PRNGKey(config.train.seed + 2), checkpoint_step)
        s = config.sample
        rows = []
        for steps in steps_list:
            started = time.perf_counter()
            draw = make_sampler(
                recipe, mesh, num_samples=count, steps=steps, method=s.method, eta=s.eta,
                clip_denoised=s.clip_denoised, guidance_weight=s.guidance_weight,
            )
            samples = draw(params, key)  # the same key: every step count starts from the same x_T
            seconds = time.perf_counter() - started
            num_steps = respace(recipe.diffusion.schedule, steps)[0].num_timesteps
            rows.append({"steps": steps, "num_steps": num_steps, **score(samples), "seconds": seconds})
            if is_main:
                picture = os.path.join(eval_dir, f"samples_{steps or 'full'}.png")
                recipe.save_samples(samples[:_PICTURE_SAMPLES], picture)
        record = {
            "checkpoint_step": checkpoint_step,
            "kind": kind,
            "metric": headline,
            "params": params_name,
            "method": s.method,
            "eta": s.eta,
            "clip_denoised": s.clip_denoised,
            "guidance_weight": s.guidance_weight,
            "num_samples": count,
            "timesteps": recipe.diffusion.schedule.num_timesteps,
            **info,
            "results": rows,
        }
        if is_main:
            _write_json(os.path.join(eval_dir, "sample_quality.json"), record)
        result["sample_quality"] = record
    return result
