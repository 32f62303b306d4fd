"""An in-domain feature network for the 8x8 digits: "FD-digits", confidence, mode coverage.

Inception features mean nothing on 8x8 grey digits, so sample quality on ``digits`` is
measured with a small MLP classifier trained on the digits train split: the Fréchet
distance between its penultimate-layer features of samples and of data ("FD-digits",
computed like FID), its mean confidence on samples, and the histogram of the classes it
assigns to samples (does the model cover every digit?).

The classifier is trained deterministically (fixed seed, one jitted ``lax.scan`` of
Adam steps, seconds on a CPU) and cached as a msgpack file named by a hash of its
settings, under ``cache_dir`` (default ``$DIFFJAX_CACHE_DIR`` or ``~/.cache/diffjax``).
Its data are scikit-learn's digits split exactly as the tfds ``digits`` set
(``diffjax.data.digits.split_indices``), read with numpy, so no TensorFlow is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from diffjax.data.pictures import to_uint8
from diffjax.evaluation.cache import default_cache_dir
from diffjax.evaluation.frechet import FeatureStats, feature_stats, frechet_distance
from diffjax.files import written_atomically

__all__ = [
    "ClassifierSettings",
    "DigitsClassifier",
    "DigitsFeatureNet",
    "default_cache_dir",
    "digits_arrays",
    "digits_sample_metrics",
    "load_digits_classifier",
    "quantize",
    "train_digits_classifier",
]

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
# Bump when the network, the data or the training code changes in a way the settings
# do not show, so that old cache files are not reused.
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """Everything that determines the classifier's weights (and its cache file name).

    Attributes:
      hidden: widths of the hidden layers; the last one is the feature dimension.
      seed: seed of the initialisation, the batches and the input noise.
      steps: Adam steps.
      batch_size: examples per step (drawn with replacement).
      learning_rate: Adam's learning rate (constant).
      weight_decay: AdamW's decoupled weight decay.
      input_noise: std of Gaussian noise added to training inputs (in [-1, 1] units), so
        that the features vary smoothly around the data, where samples land.
    """

    hidden: tuple[int, ...] = (128, 32)
    seed: int = 0
    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    input_noise: float = 0.1

    def cache_key(self) -> str:
        """12 hex digits of a hash of the settings and the format version."""
        text = json.dumps({**dataclasses.asdict(self), "format": _FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


class DigitsClassifier(nn.Module):
    """MLP on flattened 8x8 images: ``(logits [B, 10], features [B, hidden[-1]])``."""

    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = images.reshape(images.shape[0], -1)
        for width in self.hidden:
            x = nn.gelu(nn.Dense(width)(x))
        return nn.Dense(NUM_CLASSES)(x), x


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits of a split, as the model sees them.

    Args:
      split: "train" (1500) or "test" (297): the same examples as the tfds splits.

    Returns:
      images: float32 [N, 8, 8, 1] in [-1, 1] (``x / 127.5 - 1`` of the uint8 images).
      labels: int32 [N].
    """
    from diffjax.data.digits import sklearn_digits_uint8, split_indices  # imports TensorFlow (3-6 s)

    indices = split_indices()
    if split not in indices:
        raise ValueError(f"unknown digits split {split!r}; expected one of {sorted(indices)}")
    images, labels = sklearn_digits_uint8()
    rows = np.sort(indices[split])
    return images[rows].astype(np.float32) / np.float32(127.5) - np.float32(1.0), labels[rows].astype(np.int32)


def quantize(samples: np.ndarray) -> np.ndarray:
    """Samples [N, ...] in [-1, 1] onto the 8-bit grid (what a saved PNG holds), float32."""
    return to_uint8(samples).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def train_digits_classifier(settings: ClassifierSettings = ClassifierSettings()) -> Any:
    """Train the classifier on the digits train split; deterministic for given settings.

    Returns:
      The params pytree.
    """
    images, labels = digits_arrays("train")
    model = DigitsClassifier(settings.hidden)
    params = model.init(jax.random.PRNGKey(settings.seed), jnp.zeros((1, *IMAGE_SHAPE)))["params"]
    optimizer = optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay)
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    def loss_fn(params, x, y):
        logits, _ = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # Batches and input noise come from numpy (cheaper to compile and run than drawing
    # them inside the scan), a pure function of the seed.
    rng = np.random.default_rng(settings.seed)
    rows = rng.integers(0, images.shape[0], size=(settings.steps, settings.batch_size))
    noise = settings.input_noise * rng.standard_normal((settings.steps, settings.batch_size, *IMAGE_SHAPE), np.float32)

    def step(carry, inputs):
        params, opt_state = carry
        batch_rows, batch_noise = inputs
        grads = jax.grad(loss_fn)(params, images[batch_rows] + batch_noise, labels[batch_rows])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @jax.jit
    def train(params, rows, noise):
        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), (rows, noise))
        return params

    return jax.device_get(train(params, jnp.asarray(rows, jnp.int32), jnp.asarray(noise)))


@dataclasses.dataclass(frozen=True)
class DigitsFeatureNet:
    """A trained classifier with numpy helpers (all take images [N, 8, 8, 1] in [-1, 1]).

    Attributes:
      settings: how it was trained.
      params: its params.
      path: the cache file it was loaded from or saved to (None if not cached).
    """

    settings: ClassifierSettings
    params: Any
    path: str | None = None

    @property
    def feature_dim(self) -> int:
        return self.settings.hidden[-1]

    def _apply(self, images: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"digits images must be [N, 8, 8, 1], got shape {images.shape}")
        apply = _jitted_apply(self.settings.hidden)
        logits, features = [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out_logits, out_features = apply(self.params, chunk)
            logits.append(np.asarray(out_logits, np.float64))
            features.append(np.asarray(out_features, np.float64))
        return np.concatenate(logits), np.concatenate(features)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate-layer features, float64 [N, feature_dim]."""
        return self._apply(images)[1]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float64 [N, 10]."""
        logits = self._apply(images)[0]
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of ``images`` classified as ``labels`` [N]."""
        return float(np.mean(np.argmax(self._apply(images)[0], axis=1) == np.asarray(labels)))

    def stats(self, images: np.ndarray) -> FeatureStats:
        """Feature statistics of ``images`` (for FD-digits)."""
        return feature_stats(self.features(images))


_APPLY_CACHE: dict[tuple[int, ...], Any] = {}


def _jitted_apply(hidden: tuple[int, ...]):
    if hidden not in _APPLY_CACHE:
        model = DigitsClassifier(hidden)
        _APPLY_CACHE[hidden] = jax.jit(lambda params, x: model.apply({"params": params}, x))
    return _APPLY_CACHE[hidden]


def load_digits_classifier(
    cache_dir: str | None = None, settings: ClassifierSettings = ClassifierSettings()
) -> DigitsFeatureNet:
    """The classifier of ``settings``: read from the cache, or trained and cached.

    Args:
      cache_dir: folder of the cache files (default ``default_cache_dir()``).
      settings: the training settings; the file is ``digits_classifier_<hash>.msgpack``.

    Returns:
      The ``DigitsFeatureNet``.
    """
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"digits_classifier_{settings.cache_key()}.msgpack")
    template = jax.eval_shape(
        lambda: DigitsClassifier(settings.hidden).init(jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE_SHAPE)))["params"]
    )
    if os.path.exists(path):
        with open(path, "rb") as f:
            params = serialization.from_bytes(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template), f.read())
        return DigitsFeatureNet(settings, params, path)
    params = train_digits_classifier(settings)
    with written_atomically(path) as f:  # a concurrent reader (another host) never sees half a file
        f.write(serialization.to_bytes(params))
    return DigitsFeatureNet(settings, params, path)


def digits_sample_metrics(
    net: DigitsFeatureNet, samples: np.ndarray, references: dict[str, FeatureStats]
) -> dict[str, Any]:
    """Quality of digit samples as the classifier sees them.

    The samples are first quantized to the 8-bit grid, like the data.

    Args:
      net: the classifier.
      samples: [N, 8, 8, 1] in [-1, 1], N >= 2.
      references: feature statistics of data, by name (e.g. {"train": ..., "test": ...}).

    Returns:
      ``fd_digits_<name>`` for each reference; ``mean_confidence`` (mean max
      probability); ``class_histogram`` (counts of predicted classes, [10]);
      ``classes_present`` (classes predicted at least once); ``class_tv_from_uniform``
      (total variation between the predicted-class frequencies and uniform: 0 is even
      coverage, 0.9 is a single class); ``classifier_score`` (exp E_x KL(p(y|x) || p(y)),
      the Inception-score formula: 1 to 10).
    """
    images = quantize(samples)
    logits, features = net._apply(images)
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    stats = feature_stats(features)
    counts = np.bincount(np.argmax(probs, axis=1), minlength=NUM_CLASSES)
    marginal = probs.mean(axis=0)
    kl = np.sum(probs * (np.log(np.maximum(probs, 1e-30)) - np.log(np.maximum(marginal, 1e-30))), axis=1)
    metrics: dict[str, Any] = {f"fd_digits_{name}": frechet_distance(stats, ref) for name, ref in references.items()}
    metrics.update(
        mean_confidence=float(probs.max(axis=1).mean()),
        class_histogram=[int(c) for c in counts],
        classes_present=int(np.count_nonzero(counts)),
        class_tv_from_uniform=float(0.5 * np.abs(counts / counts.sum() - 1.0 / NUM_CLASSES).sum()),
        classifier_score=float(np.exp(kl.mean())),
    )
    return metrics
