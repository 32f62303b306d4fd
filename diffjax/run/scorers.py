"""The sample metric of a run's data, built from its config: what ``evaluate`` scores samples with.

* digits: FD-digits against the train and the test split, the classifier's mean confidence
  and the class histogram of the samples (``diffjax.evaluation.digits_features``);
* 2-D toys: unbiased MMD^2 and sliced Wasserstein against fresh data
  (``diffjax.evaluation.toy_metrics``);
* other image data sets: FID and IS (``diffjax.evaluation.fid``) against cached statistics of
  ``eval.fid_reference_split``, when ``eval.fid_weights`` names pytorch-fid's Inception
  weights (also added to the digits metrics when set); without weights, none.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from diffjax.data.toy2d import TOY_NAMES
from diffjax.data.toy2d import sample as sample_toy
from diffjax.evaluation import digits_features
from diffjax.evaluation.fid import FidScorer, reference_stats
from diffjax.evaluation.frechet import frechet_distance, load_stats
from diffjax.evaluation.inception import weights_digest
from diffjax.evaluation.toy_metrics import ToySampleScorer

__all__ = ["SampleScorer", "sample_quality_kind", "sample_scorer"]


@dataclasses.dataclass(frozen=True)
class SampleScorer:
    """``score(samples [N, *input_shape]) -> {metric: value}``, the ``kind`` of metric
    ("digits", "toy2d", "fid"), its ``headline`` metric and a description of its
    references (``info``, written into ``sample_quality.json``)."""

    score: Callable[[np.ndarray], dict[str, Any]]
    kind: str
    headline: str
    info: dict[str, Any]


def sample_quality_kind(config: ml_collections.ConfigDict) -> str | None:
    """Which sample metric applies to the config's data: "digits", "toy2d", "fid" or None
    (an image data set other than digits without ``eval.fid_weights``)."""
    if config.data.name == "digits":
        return "digits"
    if config.data.name in TOY_NAMES:
        return "toy2d"
    return "fid" if config.eval.fid_weights else None


def sample_scorer(config: ml_collections.ConfigDict, num_samples: int, cache_dir: str | None = None,
                  mesh=None) -> SampleScorer | None:
    """The scorer of the config's data (None where no metric applies). Reads its
    references now, so that a missing weights or statistics file fails at once.

    Args:
      config: the run's config (``data``, ``eval``, ``train.seed``).
      num_samples: how many samples each call scores (sizes the toy reference set).
      cache_dir: where the digits classifier and FID statistics are cached (default
        ``~/.cache/diffjax``).
      mesh: the data mesh of the FID network (default: every device).
    """
    kind = sample_quality_kind(config)
    if kind is None:
        return None
    fid = _fid_scorer(config, mesh, cache_dir) if config.eval.fid_weights and kind != "toy2d" else None
    if kind == "fid":
        return SampleScorer(fid[0], "fid", "fid", fid[1])
    if kind == "digits":
        score, headline, info = _digits_scorer(cache_dir)
    else:
        score, headline, info = _toy_scorer(config, num_samples)
    if fid is not None:
        score, info = _merged(score, fid[0]), {**info, **fid[1]}
    return SampleScorer(score, kind, headline, info)


def _merged(first: Callable, second: Callable) -> Callable:
    """A scorer returning both scorers' metrics."""
    return lambda samples: {**first(samples), **second(samples)}


def _digits_scorer(cache_dir: str | None):
    """FD-digits against both splits: ``(score, headline, info)``."""
    net = digits_features.load_digits_classifier(cache_dir)
    test_images, test_labels = digits_features.digits_arrays("test")
    references = {"train": net.stats(digits_features.digits_arrays("train")[0]), "test": net.stats(test_images)}
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
    return (lambda samples: digits_features.digits_sample_metrics(net, samples, references)), "fd_digits_train", info


def _toy_scorer(config: ml_collections.ConfigDict, num_samples: int):
    """MMD^2 and sliced Wasserstein against fresh samples: ``(score, headline, info)``."""
    reference_seed = config.train.seed + 12345
    reference = sample_toy(config.data.name, max(num_samples, 2000), seed=reference_seed)
    info = {"references": f"{len(reference)} fresh samples of {config.data.name} (seed {reference_seed})"}
    return ToySampleScorer(reference), "mmd", info


def _fid_scorer(config: ml_collections.ConfigDict, mesh, cache_dir: str | None):
    """``(FidScorer, description)`` for ``eval.fid_weights``; fails at once on a missing file."""
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
