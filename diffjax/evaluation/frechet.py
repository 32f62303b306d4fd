"""Fréchet distance between Gaussians fitted to features (FID's formula), in float64.

    d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2})

The square root is ``scipy.linalg.sqrtm`` of the product. As in the usual FID code, when
the product is near singular (the root is not finite or does not square back to the
product) eps * I is added to both covariances; a small imaginary part of the root
(numerical noise) is dropped and a large one is an error. Which features are fed in
(Inception pool_3, the digits classifier's penultimate layer, ...) is the caller's choice.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from diffjax.files import written_atomically

__all__ = ["FeatureStats", "feature_stats", "frechet_distance", "load_stats", "save_stats"]

# sqrtm's root must square back to the product within this relative Frobenius error.
_SQRT_RELATIVE_TOLERANCE = 1e-5
# The imaginary part of the root's diagonal that is still numerical noise.
_IMAGINARY_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a set of feature vectors.

    Attributes:
      mean: float64 [D].
      cov: float64 [D, D], the unbiased sample covariance (N - 1 in the denominator).
      count: N, the number of feature vectors.
    """

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def __post_init__(self):
        mean = np.asarray(self.mean, np.float64)
        cov = np.asarray(self.cov, np.float64)
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"FeatureStats needs mean [D] and cov [D, D], got {mean.shape} and {cov.shape}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "count", int(self.count))


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and covariance, in float64, of N feature vectors.

    Args:
      features: [N, D] (any float dtype), N >= 2.

    Returns:
      Their ``FeatureStats``.
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {features.shape[0]}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or inf")
    return FeatureStats(
        mean=features.mean(axis=0), cov=np.atleast_2d(np.cov(features, rowvar=False)), count=features.shape[0]
    )


def _sqrtm_of_product(cov1: np.ndarray, cov2: np.ndarray) -> np.ndarray | None:
    """(cov1 cov2)^{1/2}, or None when it is not finite or inaccurate (near singular)."""
    product = cov1 @ cov2
    root = scipy.linalg.sqrtm(product)
    if not np.all(np.isfinite(root)):
        return None
    scale = max(np.linalg.norm(product), np.finfo(np.float64).tiny)
    if np.linalg.norm(root @ root - product) / scale > _SQRT_RELATIVE_TOLERANCE:
        return None
    return root


def frechet_distance(stats1: FeatureStats, stats2: FeatureStats, eps: float = 1e-6) -> float:
    """The Fréchet distance d^2 between N(mu_1, S_1) and N(mu_2, S_2), in float64.

    Args:
      stats1, stats2: statistics of the two feature sets (same D).
      eps: added to both covariances' diagonals when the product is near singular.

    Returns:
      d^2 (a float; FID is this number for Inception pool_3 features).

    Raises:
      ValueError: different dimensions, or the square root has a large imaginary part
        (the covariances are not positive semi-definite, e.g. not from real data).
    """
    mu1, mu2, cov1, cov2 = stats1.mean, stats2.mean, stats1.cov, stats2.cov
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} and {mu2.shape[0]}")
    root = _sqrtm_of_product(cov1, cov2)
    if root is None:
        offset = eps * np.eye(mu1.shape[0])
        root = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
        if not np.all(np.isfinite(root)):
            raise ValueError(f"sqrtm of the covariance product is not finite even with eps={eps} added")
    if np.iscomplexobj(root):
        largest = np.max(np.abs(np.diagonal(root).imag))
        if largest > _IMAGINARY_TOLERANCE:
            raise ValueError(
                f"the square root of the covariance product has an imaginary part of {largest:.3g} "
                "on its diagonal: the covariances are not positive semi-definite"
            )
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(root))


def save_stats(stats: FeatureStats, path: str) -> None:
    """Write statistics to ``path`` (a ``.npz`` with ``mean``, ``cov``, ``count``), whole or not at
    all (``files.written_atomically``)."""
    with written_atomically(path) as f:
        np.savez(f, mean=stats.mean, cov=stats.cov, count=np.int64(stats.count))


def load_stats(path: str) -> FeatureStats:
    """Read statistics written by ``save_stats``, or pytorch-fid's ``.npz`` (``mu``, ``sigma``;
    its count is unknown and read as 0)."""
    with np.load(path) as data:
        if "mu" in data.files:
            return FeatureStats(mean=data["mu"], cov=data["sigma"], count=0)
        return FeatureStats(mean=data["mean"], cov=data["cov"], count=int(data["count"]))
