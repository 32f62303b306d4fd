"""`digits`: an offline tfds data set made from scikit-learn's bundled 8x8 digits.

scikit-learn ships the 1797 8x8 handwritten digits of the UCI "optdigits" test
set inside its wheel, so this data set builds with no network access, in a few
seconds, into any data_dir. It is the CPU-sized stand-in for CIFAR-10.

Contents of one example:
  image: uint8 [8, 8, 1]; sklearn's 0..16 grey levels scaled to 0..255 as
    ``round(v * 255 / 16)`` (so 0 -> 0, 8 -> 128, 16 -> 255).
  label: int64 class 0..9.
  index: int64, the row of the example in ``sklearn.datasets.load_digits()``.

Splits (deterministic, the same on every machine): the 1797 row indices are
permuted with ``numpy.random.default_rng(SPLIT_SEED).permutation(1797)``; the
first ``NUM_TRAIN`` = 1500 indices form ``train``, the other 297 ``test``.
Within a split, tfds orders the records by a hash of the key (the sklearn row),
which is deterministic too.

The records are written as tfrecord, the format that ``as_dataset`` (tf.data)
reads.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TRAIN = 1500
NUM_TEST = NUM_EXAMPLES - NUM_TRAIN
SPLIT_SEED = 0
FILE_FORMAT = "tfrecord"


def sklearn_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """Loads scikit-learn's digits as uint8 images.

    Returns:
      images: uint8 [1797, 8, 8, 1], values ``round(v * 255 / 16)`` of sklearn's
        0..16 grey levels.
      labels: int64 [1797], 0..9.
    """
    from sklearn.datasets import load_digits  # 1.3 s to import: only when the digits are read

    bunch = load_digits()
    levels = np.asarray(bunch.images, dtype=np.float64)  # [1797, 8, 8], 0..16
    images = np.rint(levels * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels


def split_indices() -> dict[str, np.ndarray]:
    """The sklearn row indices of each split.

    Returns:
      ``{"train": int64 [1500], "test": int64 [297]}``, disjoint, covering
      0..1796, each in permutation order.
    """
    order = np.random.default_rng(SPLIT_SEED).permutation(NUM_EXAMPLES)
    return {"train": order[:NUM_TRAIN], "test": order[NUM_TRAIN:]}


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's 8x8 digits as a tfds data set (built offline).

    Not registered in tfds' global catalogue (``tfds.builder("digits")`` does
    not find it); construct it with :func:`digits_builder` or ``Digits(...)``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn digits, uint8 8x8x1, 1500/297 split."}

    def _info(self) -> tfds.core.DatasetInfo:
        # `tfds.core.DatasetInfo(builder=self, ...)`: `dataset_info_from_configs`
        # needs the builder to live in a tfds package folder.
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "The 8x8 handwritten digits bundled with scikit-learn, grey levels 0..16 scaled to uint8 0..255."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": np.int64,
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        images, labels = sklearn_digits_uint8()
        return {name: self._generate_examples(images, labels, indices) for name, indices in split_indices().items()}

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            i = int(i)
            yield i, {"image": images[i], "label": int(labels[i]), "index": i}


def digits_builder(data_dir: str | None = None, *, prepare: bool = True) -> Digits:
    """Returns the `digits` builder, building it into data_dir on first use.

    Args:
      data_dir: tfds data directory; None means tfds' default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      prepare: build the data set if it is not there yet (offline, ~5 s).

    Returns:
      The builder; prepared if ``prepare`` is true.
    """
    builder = Digits(data_dir=data_dir, file_format=FILE_FORMAT)
    if prepare and not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except FileExistsError:
            # Another process (e.g. a second host on the same machine) finished
            # building the same version first; its copy is identical.
            builder = Digits(data_dir=data_dir, file_format=FILE_FORMAT)
            if not builder.is_prepared():
                raise
    return builder
