"""Decoded splits kept on disk beside their records: an in-memory data set decodes once per machine.

The in-memory path (``images``: digits, MNIST, CIFAR-10) decodes a whole split into a uint8 array
at every start of a run, through tf.data (``tf_records.decode_split``): TensorFlow's import alone
costs 3-5 s of CPU, and CIFAR-10's 50k PNGs some seconds more. :func:`load_or_decode` keeps the
result in ``<builder.data_dir>/decoded/<key>.npz`` and reads it back while the split's records are
unchanged, so a later start neither imports TensorFlow nor decodes.

The key is a hash of everything the decoded arrays depend on: the data set's name and version,
the split expression (a host's shard included), the output size and the spec's crop, native size,
channels and whether it has labels; each record file's name, size and modification time; the
installed TensorFlow's version (its PNG decoder and resize) and :data:`FORMAT`. A rebuilt data set
or an upgraded TensorFlow therefore gets a new entry, never a stale one. An entry is written to a
temporary file and renamed into place (two processes decoding at once leave one whole file); an
entry that cannot be read is decoded again and replaced; a data directory that cannot be written
(read-only, or not a local path) is decoded every time, as without the cache.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from importlib import metadata

import numpy as np
from absl import logging

from diffjax.data.catalog import ImageDatasetSpec
from diffjax.files import written_atomically

__all__ = ["FORMAT", "cache_key", "load_or_decode"]

FORMAT = 1
"""The entries' layout and the decoding they hold; raise it when either changes."""


def _record_files(data_dir: str) -> list[list]:
    """``[name, size, mtime_ns]`` of each record file of a prepared builder's folder, sorted."""
    files = []
    for path in sorted(glob.glob(os.path.join(data_dir, "*.tfrecord*"))):
        stat = os.stat(path)
        files.append([os.path.basename(path), stat.st_size, stat.st_mtime_ns])
    return files


def _tensorflow_version() -> str:
    try:
        return metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        return metadata.version("tensorflow-cpu")


def cache_key(builder, spec: ImageDatasetSpec, split, image_size: int) -> str:
    """The hex sha256 naming the entry of ``split`` of ``builder`` decoded at ``image_size``."""
    described = {
        "format": FORMAT,
        "dataset": [builder.name, str(builder.version)],
        "split": str(split),
        "image_size": int(image_size),
        "spec": [spec.center_crop, spec.native_size, spec.channels, spec.num_classes is None],
        "records": _record_files(builder.data_dir),
        "tensorflow": _tensorflow_version(),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _read(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as entry:
            return entry["images"], entry["labels"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as error:  # a damaged entry: decoded again and replaced
        logging.warning("decoded split %s is unreadable (%s); decoding the records again", path, error)
        return None


def _write(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    try:
        with written_atomically(path) as f:
            np.savez(f, images=images, labels=labels)
    except OSError as error:  # a read-only data directory: no cache, nothing else changes
        logging.info("decoded split not kept (%s): %s", path, error)


def load_or_decode(builder, spec: ImageDatasetSpec, split, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole split (or shard) decoded, in file order, from the cache or from its records.

    Args:
      builder: a prepared tfds builder (``catalog.prepared_builder``).
      spec: its data set's spec.
      split: a tfds split expression or ``tfds.even_splits`` piece.
      image_size: output side.

    Returns:
      images: uint8 [N, image_size, image_size, C]; labels: int32 [N] (0 for unlabelled sets),
      equal to ``tf_records.decode_split(builder, spec, split, image_size)``.
    """
    local = os.path.isdir(builder.data_dir)
    path = os.path.join(builder.data_dir, "decoded", cache_key(builder, spec, split, image_size) + ".npz")
    cached = _read(path) if local else None
    if cached is not None:
        return cached
    from diffjax.data import tf_records  # TensorFlow: only when the records are read

    images, labels = tf_records.decode_split(builder, spec, split, image_size)
    if local:
        _write(path, images, labels)
    return images, labels
