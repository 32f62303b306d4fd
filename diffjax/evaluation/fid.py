"""FID and Inception Score of samples, with cached reference statistics of a data set.

    scorer = FidScorer.create(weights_path, reference_stats, mesh=mesh)
    scorer(samples)  # {"fid": ..., "inception_score": ..., "inception_score_std": ...}

Protocol (pytorch-fid's): samples in [-1, 1] are first quantised to uint8 as if saved as
PNGs (``to_uint8``), then fed to the FID Inception-v3 (``inception.py``), which resizes
them to 299x299. FID is the Fréchet distance (float64, ``frechet.py``) between the
2048-d pool features of the samples and of the reference images; IS is
exp(E_x KL(p(y|x) || p(y))) over the 1008-way softmax, averaged over 10 splits.

Reference statistics of a tfds split (``reference_stats``) are computed once and cached
under ``<cache_dir>/fid_stats/``, named by data set, split, resolution, number of images,
Inception input size and a digest of the weights file; a statistics file made elsewhere
(pytorch-fid's ``mu``/``sigma`` ``.npz``) can be used instead.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax.data.pictures import to_uint8
from diffjax.evaluation.cache import default_cache_dir
from diffjax.evaluation.frechet import FeatureStats, feature_stats, frechet_distance, load_stats, save_stats
from diffjax.evaluation.inception import FID_IMAGE_SIZE, FIDInceptionV3, load_fid_inception, weights_digest
from diffjax.runtime.mesh import data_sharding, make_mesh, replicated_sharding

__all__ = [
    "FidScorer",
    "InceptionOutputs",
    "inception_score",
    "make_inception_fn",
    "reference_stats",
    "reference_stats_path",
]

DEFAULT_BATCH_SIZE = 100
IS_SPLITS = 10


@dataclasses.dataclass(frozen=True)
class InceptionOutputs:
    """Network outputs of N images: ``pool`` float32 [N, 2048], ``logits`` float32 [N, 1008]."""

    pool: np.ndarray
    logits: np.ndarray


def make_inception_fn(
    params: Any,
    *,
    image_size: int = FID_IMAGE_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mesh: Mesh | None = None,
) -> Callable[[np.ndarray], InceptionOutputs]:
    """``outputs(images_uint8) -> InceptionOutputs``: the network over N images, in batches.

    Each batch is split over the mesh's devices (``batch_size`` is rounded up to a
    multiple of the device count; the last batch is padded and cut back). With several
    processes, every process passes the same images and gets all the outputs.

    Args:
      params: the network's params (``load_fid_inception``).
      image_size: Inception's input side (299 for FID).
      batch_size: images per compiled call.
      mesh: the data mesh (default: every device).

    The returned function takes uint8 [N, H, W, C], C in {1, 3}.
    """
    mesh = mesh or make_mesh()
    devices = mesh.devices.size
    batch_size = -(-batch_size // devices) * devices
    model = FIDInceptionV3(image_size=image_size)
    params = jax.device_put(params, replicated_sharding(mesh))
    sharding = data_sharding(mesh)

    @jax.jit
    def forward(params, images_uint8):
        images = images_uint8.astype(jnp.float32) / 127.5 - 1.0
        return model.apply({"params": params}, images)

    def outputs(images_uint8: np.ndarray) -> InceptionOutputs:
        images_uint8 = np.asarray(images_uint8)
        if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
            raise ValueError(f"Inception takes uint8 images [N, H, W, C], got {images_uint8.dtype} {images_uint8.shape}")
        pools, logits = [], []
        for start in range(0, len(images_uint8), batch_size):
            chunk = images_uint8[start : start + batch_size]
            padded = np.zeros((batch_size, *chunk.shape[1:]), np.uint8)
            padded[: len(chunk)] = chunk
            batch = jax.make_array_from_callback(padded.shape, sharding, lambda index, padded=padded: padded[index])
            out = forward(params, batch)
            if jax.process_count() > 1:
                out = multihost_utils.process_allgather(out, tiled=True)
            pools.append(np.asarray(out["pool"])[: len(chunk)])
            logits.append(np.asarray(out["logits"])[: len(chunk)])
        if not pools:
            raise ValueError("no images given")
        return InceptionOutputs(pool=np.concatenate(pools), logits=np.concatenate(logits))

    return outputs


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))): mean and std over ``splits`` equal splits.

    Args:
      logits: [N, K] (float64 internally), N >= splits.

    Returns:
      (mean, std) of the per-split scores; p(y) is each split's mean softmax, as in the
      original implementation.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"inception_score needs logits [N >= {splits}, K], got shape {logits.shape}")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        log_marginal = np.log(np.exp(part).mean(axis=0))
        kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def reference_stats_path(
    cache_dir: str, data_name: str, split: str, data_image_size: int, num_examples: int, image_size: int, digest: str
) -> str:
    """The cache file of a data set's reference statistics."""
    split_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("_")
    count = num_examples or "all"
    name = f"{data_name}_{split_name}_{data_image_size}px_{count}_inception{image_size}_{digest}.npz"
    return os.path.join(cache_dir, "fid_stats", name)


def reference_stats(
    inception: Callable[[np.ndarray], InceptionOutputs],
    *,
    data_name: str,
    split: str,
    data_image_size: int,
    weights_path: str,
    image_size: int = FID_IMAGE_SIZE,
    num_examples: int = 0,
    cache_dir: str | None = None,
    data_dir: str | None = None,
) -> tuple[FeatureStats, str]:
    """Pool-feature statistics of a tfds split, computed once and cached.

    Args:
      inception: ``make_inception_fn(...)`` of the weights at ``weights_path``.
      data_name: catalogue name (``cifar10``, ``digits``, ...).
      split: tfds split of the references (FID's convention is the train split).
      data_image_size: resolution the images are loaded at (the model's).
      weights_path: the Inception weights file (its digest names the cache file).
      image_size: Inception's input side.
      num_examples: use the first N images of the split (0: all).
      cache_dir: default ``default_cache_dir()``.
      data_dir: tfds data directory.

    Returns:
      (statistics, path of the cache file).

    Raises:
      DatasetNotPreparedError: the data set is not prepared (at once, with the command).
    """
    from diffjax.data.images import load_uint8_images  # tfds (and TensorFlow to decode): only without cached statistics

    path = reference_stats_path(
        cache_dir or default_cache_dir(), data_name, split, data_image_size, num_examples, image_size,
        weights_digest(weights_path),
    )
    if os.path.exists(path):
        return load_stats(path), path
    images, _ = load_uint8_images(data_name, split=split, image_size=data_image_size, data_dir=data_dir)
    if num_examples:
        images = images[:num_examples]
    stats = feature_stats(inception(images).pool)
    if jax.process_index() == 0:
        save_stats(stats, path)
    return stats, path


@dataclasses.dataclass(frozen=True)
class FidScorer:
    """Scores samples in [-1, 1]: FID against reference statistics, and IS.

    Build with ``FidScorer.create``; calling it returns ``{"fid", "inception_score",
    "inception_score_std"}`` (IS needs at least 10 samples).
    """

    inception: Callable[[np.ndarray], InceptionOutputs]
    reference: FeatureStats

    @classmethod
    def create(
        cls,
        weights_path: str,
        reference: FeatureStats | Callable[[Callable[[np.ndarray], InceptionOutputs]], FeatureStats],
        *,
        image_size: int = FID_IMAGE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        mesh: Mesh | None = None,
    ) -> FidScorer:
        """Load the weights and the references (statistics, or a function computing them).

        Raises:
          FidWeightsNotFoundError / FidWeightsError: as ``load_fid_inception``.
        """
        inception = make_inception_fn(
            load_fid_inception(weights_path), image_size=image_size, batch_size=batch_size, mesh=mesh
        )
        if not isinstance(reference, FeatureStats):
            reference = reference(inception)
        return cls(inception=inception, reference=reference)

    def __call__(self, samples: np.ndarray) -> dict[str, float]:
        outputs = self.inception(to_uint8(samples))
        result = {"fid": frechet_distance(feature_stats(outputs.pool), self.reference)}
        if len(samples) >= IS_SPLITS:
            result["inception_score"], result["inception_score_std"] = inception_score(outputs.logits)
        return result
