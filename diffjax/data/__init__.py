"""diffjax's data layer: tfds image data sets, the offline `digits` set, 2-D toys.

Public names (imported on first use). TensorFlow (3-5 s to import) is imported only by
``diffjax.data.tf_records``, when records are read: an in-memory data set whose decoded
split is kept on disk (``diffjax.data.decoded_cache``) and the 2-D toys never import it.

  make_train_iterator, make_eval_batches, load_uint8_images,
  in_memory_train_batch, to_model_batch, TrainIterator, EvalBatches
                                          (diffjax.data.images)
  IMAGE_DATASETS, ImageDatasetSpec, image_dataset_spec, prepared_builder
                                          (diffjax.data.catalog)
  Digits, digits_builder                  (diffjax.data.digits)
  GaussianMixture, eight_gaussians, toy_distribution, sample, toy_batch,
  make_toy_iterator, TOY_NAMES            (diffjax.data.toy2d)
  DatasetNotPreparedError, UnknownDatasetError
                                          (diffjax.data.errors)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "images": (
        "make_train_iterator",
        "make_eval_batches",
        "load_uint8_images",
        "in_memory_train_batch",
        "to_model_batch",
        "epoch_permutation",
        "flip_mask",
        "TrainIterator",
        "EvalBatches",
    ),
    "catalog": (
        "IMAGE_DATASETS",
        "ImageDatasetSpec",
        "image_dataset_spec",
        "prepared_builder",
    ),
    "digits": ("Digits", "digits_builder"),
    "toy2d": (
        "GaussianMixture",
        "eight_gaussians",
        "toy_distribution",
        "sample",
        "toy_batch",
        "make_toy_iterator",
        "TOY_NAMES",
    ),
    "errors": ("DatasetNotPreparedError", "UnknownDatasetError"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'diffjax.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"diffjax.data.{module}"), name)


def __dir__():
    return sorted([*globals(), *__all__])
