"""2-D toy distributions in numpy, and a deterministic batch iterator over them.

Names for :func:`sample` / :func:`toy_distribution`:
  eight_gaussians  8 isotropic Gaussians (std 0.2) evenly spaced on a circle of
                   radius 2, equal weights; a :class:`GaussianMixture`.
  swiss_roll       2-D swiss roll: angle t ~ U[1.5 pi, 4.5 pi], point
                   (t cos t, t sin t) / 5 plus N(0, 0.05^2) noise; in about
                   [-3, 3]^2.
  checkerboard     uniform on the 8 black cells of a 4x4 board on [-2, 2]^2
                   (cells whose integer corner (i, j) has i + j even).
  two_moons        two interleaved half circles of radius 1 (upper one
                   centred at (0, 0), lower at (1, 0.5)), shifted by
                   (-0.5, -0.25), plus N(0, 0.05^2) noise.

A general Gaussian mixture is a :class:`GaussianMixture` with explicit means,
stds and weights; its parameters stay readable (the exact denoiser of a
Gaussian mixture under Gaussian noise is computed from them).

Samples are float32 [n, 2]; every sample is a pure function of its seed.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Iterator, Protocol

import numpy as np

from diffjax.data import hosts


class ToyDistribution(Protocol):
    def sample_with_labels(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Returns points float32 [n, D] and int32 labels [n]."""


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A mixture of K Gaussians with diagonal covariances in D dimensions.

    Attributes:
      means: float64 [K, D].
      stds: float64 [K, D], per-dimension standard deviations (an isotropic
        component has equal entries).
      weights: float64 [K], positive, summing to 1.
    """

    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray

    @classmethod
    def create(cls, means, stds, weights=None) -> "GaussianMixture":
        """Builds and checks a mixture.

        Args:
          means: [K, D].
          stds: scalar, [K] (isotropic per component) or [K, D].
          weights: [K] non-negative (normalised here), or None for equal weights.
        """
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {means.shape}.")
        k, d = means.shape
        stds = np.asarray(stds, dtype=np.float64)
        if stds.ndim == 1:
            stds = stds[:, None]
        stds = np.broadcast_to(stds, (k, d)).copy()
        if np.any(stds <= 0):
            raise ValueError("stds must be positive.")
        if weights is None:
            weights = np.full((k,), 1.0 / k)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (k,) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, got {weights}.")
        for array in (means, stds, weights):
            array.setflags(write=False)
        return cls(means=means, stds=stds, weights=weights / weights.sum())

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> np.ndarray:
        """The mixture's mean, float64 [D]."""
        return self.weights @ self.means

    def covariance(self) -> np.ndarray:
        """The mixture's covariance, float64 [D, D]."""
        centred = self.means - self.mean()
        within = np.einsum("k,kd->d", self.weights, self.stds**2)
        between = np.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return np.diag(within) + between

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Log density at points x [n, D]; returns float64 [n]."""
        x = np.asarray(x, dtype=np.float64)
        z = (x[:, None, :] - self.means[None]) / self.stds[None]  # [n, K, D]
        log_normal = (
            -0.5 * np.sum(z**2, -1) - np.sum(np.log(self.stds), -1) - (0.5 * self.dim * np.log(2 * np.pi))
        )  # [n, K]
        with np.errstate(divide="ignore"):
            log_joint = log_normal + np.log(self.weights)
        top = np.max(log_joint, axis=1, keepdims=True)
        return (top + np.log(np.sum(np.exp(log_joint - top), axis=1, keepdims=True)))[:, 0]

    def sample_with_labels(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draws n points and the component each came from.

        Returns:
          points: float32 [n, D].
          components: int32 [n], in [0, K).
        """
        components = rng.choice(self.num_components, size=n, p=self.weights)
        noise = rng.standard_normal((n, self.dim))
        points = self.means[components] + self.stds[components] * noise
        return points.astype(np.float32), components.astype(np.int32)


def eight_gaussians(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """8 equally weighted isotropic Gaussians at angles 0, 45, ..., 315 degrees."""
    angles = np.arange(8) * (2 * np.pi / 8)
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture.create(means, std)


@dataclasses.dataclass(frozen=True)
class _SampledToy:
    """A toy distribution given by a sampling function (labels all 0)."""

    draw: Callable[[int, np.random.Generator], np.ndarray]

    def sample_with_labels(self, n, rng):
        return self.draw(n, rng).astype(np.float32), np.zeros((n,), np.int32)


def _swiss_roll(n: int, rng: np.random.Generator, noise: float = 0.05):
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0
    return points + noise * rng.standard_normal((n, 2))


def _checkerboard(n: int, rng: np.random.Generator):
    # Black cells of a 4x4 board with integer corners in {-2, -1, 0, 1}^2.
    cells = np.array([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0], dtype=np.float64)
    chosen = cells[rng.integers(0, len(cells), size=n)]
    return chosen + rng.random((n, 2))


def _two_moons(n: int, rng: np.random.Generator, noise: float = 0.05):
    upper = rng.random(n) < 0.5
    angle = np.pi * rng.random(n)
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x - 0.5, y - 0.25], axis=1)
    return points + noise * rng.standard_normal((n, 2))


TOY_NAMES = ("eight_gaussians", "swiss_roll", "checkerboard", "two_moons")


def toy_distribution(name: str) -> ToyDistribution:
    """The distribution of a name; ``eight_gaussians`` is a GaussianMixture.

    Raises:
      ValueError: unknown name.
    """
    if name == "eight_gaussians":
        return eight_gaussians()
    draws = {
        "swiss_roll": _swiss_roll,
        "checkerboard": _checkerboard,
        "two_moons": _two_moons,
    }
    if name not in draws:
        raise ValueError(f"Unknown toy distribution {name!r}; known: {TOY_NAMES}.")
    return _SampledToy(draws[name])


def _resolve(distribution: str | ToyDistribution) -> ToyDistribution:
    if isinstance(distribution, str):
        return toy_distribution(distribution)
    return distribution


def sample(distribution: str | ToyDistribution, n: int, seed: int) -> np.ndarray:
    """n points of a toy distribution, a pure function of (distribution, n, seed).

    Args:
      distribution: a name (see module docstring) or a distribution object such
        as a :class:`GaussianMixture`.
      n: number of points.
      seed: non-negative int.

    Returns:
      float32 [n, D] (D = 2 for the named ones).
    """
    seed = hosts.check_seed(seed)
    points, _ = _resolve(distribution).sample_with_labels(n, hosts.rng(hosts.TOY_SAMPLE_STREAM, seed))
    return points


def toy_batch(
    distribution: str | ToyDistribution,
    *,
    seed: int,
    step: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """The batch of one host at one step: a pure function of (seed, step).

    The global batch of B points is drawn from ``(seed, step)``; host i takes
    rows ``[i*b, (i+1)*b)``, b = B / process_count.

    Returns:
      ``{"x": float32 [b, D], "label": int32 [b]}``; label is the mixture
      component for a GaussianMixture and 0 otherwise.
    """
    seed, step = hosts.check_seed(seed), hosts.check_step(step, "step")
    share = hosts.HostShare(global_batch_size, process_index, process_count)
    return _toy_batch(_resolve(distribution), seed, step, share)


def _toy_batch(distribution: ToyDistribution, seed: int, step: int, share: hosts.HostShare) -> dict[str, np.ndarray]:
    """:func:`toy_batch` of checked arguments."""
    rng = hosts.rng(hosts.TOY_BATCH_STREAM, seed, step)
    points, labels = distribution.sample_with_labels(share.global_batch_size, rng)
    return {"x": points[share.rows], "label": labels[share.rows]}


def make_toy_iterator(
    distribution: str | ToyDistribution,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite batches ``toy_batch(..., step=s)`` for s = start_step, ...

    Args:
      distribution: a name or a distribution object.
      global_batch_size: B over all hosts, a multiple of process_count.
      seed: non-negative int.
      start_step: step of the first batch (to resume a run).
      process_index: this host (None: ``jax.process_index()``).
      process_count: number of hosts (None: ``jax.process_count()``).

    Yields:
      ``{"x": float32 [b, D], "label": int32 [b]}``.
    """
    seed = hosts.check_seed(seed)
    start_step = hosts.check_step(start_step)
    share = hosts.HostShare.resolve(global_batch_size, process_index, process_count)
    distribution = _resolve(distribution)
    for step in itertools.count(start_step):
        yield _toy_batch(distribution, seed, step, share)
