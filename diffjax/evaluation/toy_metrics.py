"""Distances between low-dimensional sample sets (the 2-D toys): MMD and sliced Wasserstein.

Both are numpy float64, deterministic and cheap for a few thousand points:

* ``mmd_rbf``: the unbiased estimate of MMD^2 with a sum of RBF kernels. Its expectation
  is 0 exactly when the two distributions agree (it can come out slightly negative).
* ``sliced_wasserstein``: the Wasserstein-p distance averaged over random 1-D projections
  (fixed directions from a seed), in the data's units (p = 1 by default: W_2 weighs a
  small fraction of mass moved far, e.g. a few points too many in one mode, heavily).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ToySampleScorer", "median_bandwidths", "mmd_rbf", "sliced_wasserstein", "toy_sample_metrics"]

# Multiples of the median pairwise distance used as RBF bandwidths by default: the small
# ones see the shape of each mode, the large ones whether the modes have the right mass.
_BANDWIDTH_SCALES = (0.125, 0.25, 0.5, 1.0)


def _as_points(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be [N, D] with N >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N, M] squared Euclidean distances (exact differences, no cancellation)."""
    return np.sum(np.square(x[:, None, :] - y[None, :, :]), axis=-1)


def median_bandwidths(
    reference: np.ndarray, scales: Sequence[float] = _BANDWIDTH_SCALES, max_points: int = 1000
) -> tuple[float, ...]:
    """RBF bandwidths as multiples of the median pairwise distance of ``reference``.

    Args:
      reference: [N, D] points (the data); the first ``max_points`` are used.
      scales: the multiples.
      max_points: cap on the points used for the median.

    Returns:
      One bandwidth per scale. Computed from the data only, so that every model
      evaluated against the same reference is measured with the same kernel.
    """
    reference = _as_points("reference", reference)[:max_points]
    distances = np.sqrt(_squared_distances(reference, reference))
    median = float(np.median(distances[np.triu_indices(len(reference), k=1)]))
    if median <= 0:
        raise ValueError("the reference points all coincide; give bandwidths explicitly")
    return tuple(median * s for s in scales)


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidths: float | Sequence[float] | None = None) -> float:
    """Unbiased MMD^2 between samples ``x`` and ``y`` with k = sum_s exp(-|a-b|^2 / (2 s^2)).

    Args:
      x: [N, D] samples (e.g. the model's).
      y: [M, D] samples (e.g. the data).
      bandwidths: the kernel widths s; None: ``median_bandwidths(y)``.

    Returns:
      The unbiased estimate of MMD^2 (diagonal terms excluded), a float.
    """
    x, y = _as_points("x", x), _as_points("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    if bandwidths is None:
        bandwidths = median_bandwidths(y)
    bandwidths = _check_bandwidths(bandwidths)
    within = _kernel_mean(x, x, bandwidths, True) + _kernel_mean(y, y, bandwidths, True)
    return float(within - 2.0 * _kernel_mean(x, y, bandwidths, False))


def _check_bandwidths(bandwidths) -> np.ndarray:
    bandwidths = np.atleast_1d(np.asarray(bandwidths, np.float64))
    if np.any(bandwidths <= 0):
        raise ValueError(f"bandwidths must be positive, got {bandwidths}")
    return bandwidths


def _kernel_mean(a: np.ndarray, b: np.ndarray, bandwidths: np.ndarray, exclude_diagonal: bool) -> float:
    """Mean of sum_s exp(-|a_i - b_j|^2 / (2 s^2)) over pairs (i != j when ``exclude_diagonal``)."""
    squared = _squared_distances(a, b)
    total = np.zeros_like(squared)
    for s in bandwidths:
        total += np.exp(squared * (-0.5 / (s * s)))
    if exclude_diagonal:
        return float((total.sum() - np.trace(total)) / (len(a) * (len(a) - 1)))
    return float(total.mean())


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, num_projections: int = 256, p: int = 1, seed: int = 0) -> float:
    """Sliced Wasserstein-p distance: (mean over directions of W_p^p of the projections)^(1/p).

    Each 1-D W_p compares the two empirical quantile functions, on the midpoints of
    max(N, M) equal bins (exact sorting when N == M).

    Args:
      x: [N, D] samples.
      y: [M, D] samples.
      num_projections: random unit directions (drawn from ``seed``, the same for every call).
      p: the order: 1 (default; robust to a few far points) or 2.
      seed: seed of the directions.

    Returns:
      The distance, in the units of the data.
    """
    x, y = _as_points("x", x), _as_points("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    directions = np.random.default_rng(seed).normal(size=(x.shape[1], num_projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    px, py = x @ directions, y @ directions  # [N, P], [M, P]
    if len(x) == len(y):
        qx, qy = np.sort(px, axis=0), np.sort(py, axis=0)
    else:
        levels = (np.arange(max(len(x), len(y))) + 0.5) / max(len(x), len(y))
        qx, qy = np.quantile(px, levels, axis=0), np.quantile(py, levels, axis=0)
    per_direction = np.mean(np.abs(qx - qy) ** p, axis=0)
    return float(np.mean(per_direction) ** (1.0 / p))


class ToySampleScorer:
    """Both distances of model samples to one fixed reference set, for the eval json.

    The reference's kernel bandwidths and its own kernel term are computed once, so
    scoring several sample sets (one per number of sampling steps) costs little.

    Args:
      reference: [M, D] data.
    """

    def __init__(self, reference: np.ndarray):
        self.reference = _as_points("reference", reference)
        self.bandwidths = np.asarray(median_bandwidths(self.reference))
        self._reference_term = _kernel_mean(self.reference, self.reference, self.bandwidths, True)

    def __call__(self, samples: np.ndarray) -> dict[str, float]:
        """``{"mmd": unbiased MMD^2 (median bandwidths of the reference),
        "sliced_wasserstein": SW_1 over 256 directions}`` of samples [N, D]."""
        x = _as_points("samples", samples)
        if x.shape[1] != self.reference.shape[1]:
            raise ValueError(f"samples have dimension {x.shape[1]}, the reference {self.reference.shape[1]}")
        mmd = (
            _kernel_mean(x, x, self.bandwidths, True)
            + self._reference_term
            - 2.0 * _kernel_mean(x, self.reference, self.bandwidths, False)
        )
        return {"mmd": float(mmd), "sliced_wasserstein": sliced_wasserstein(x, self.reference)}


def toy_sample_metrics(samples: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``ToySampleScorer(reference)(samples)``: MMD^2 and SW_1 of samples [N, D] to data [M, D]."""
    return ToySampleScorer(reference)(samples)
