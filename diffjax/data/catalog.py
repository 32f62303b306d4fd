"""The image data sets diffjax knows by name, and opening their tfds builders offline.

A data set is read from a tfds ``data_dir`` that the user prepared beforehand.
Training machines may have no network: :func:`prepared_builder` never
downloads. A catalogue data set that is not in the data_dir raises
:class:`DatasetNotPreparedError` at once (plain tfds would retry the download
for minutes) with the command that prepares it. The exception is ``digits``,
built offline from scikit-learn's bundled digits on first use.

Names (``image_dataset_spec(name)``):
  digits                      8x8x1, 10 classes, built offline (1500/297)
  mnist, fashion_mnist        28x28x1, 10 classes
  cifar10                     32x32x3, 10 classes
  celeb_a                     218x178x3, center crop 178x178 then resize (64)
  celeb_a_hq (= /256), celeb_a_hq/128, celeb_a_hq/64
                              square faces; tfds needs a MANUAL download
  lsun/church_outdoor, lsun/bedroom
                              variable size, center crop then resize (256)
  downsampled_imagenet/32x32, downsampled_imagenet/64x64
                              unlabelled ImageNet 32/64 (van den Oord et al.)
  imagenet_resized/32x32, imagenet_resized/64x64
                              the same images with the 1000 labels
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import types
from typing import Mapping

import tensorflow_datasets as tfds

from diffjax.data import digits as digits_lib
from diffjax.data.errors import DatasetNotPreparedError, UnknownDatasetError


@dataclasses.dataclass(frozen=True)
class ImageDatasetSpec:
    """How to read one image data set.

    Attributes:
      name: the name diffjax uses (a key of ``IMAGE_DATASETS``).
      tfds_name: the tfds name with config, e.g. ``"lsun/bedroom"``.
      train_split: tfds split the training iterator reads by default.
      eval_split: tfds split the evaluation iterator reads by default; None when
        the data set has only a training split (give one explicitly).
      native_size: side of the stored square images, or None when the stored
        images are not square or vary in size.
      default_image_size: side of the images the pipeline produces by default.
      channels: 1 (grey) or 3 (RGB).
      center_crop: crop the largest centred square before resizing.
      random_flip: whether training uses random horizontal flips by default.
      num_classes: number of labels; None when the data set is unlabelled (the
        pipeline then gives label 0 for every image).
      in_memory: whether the training split is small enough to be decoded once
        into a numpy array (the fast, random-access path) by default.
      prepare_note: extra advice printed when the data set is not prepared.
    """

    name: str
    tfds_name: str
    train_split: str
    eval_split: str | None
    native_size: int | None
    default_image_size: int
    channels: int
    center_crop: bool
    random_flip: bool
    num_classes: int | None
    in_memory: bool
    prepare_note: str = ""

    @property
    def needs_manual_download(self) -> bool:
        return self.tfds_name.startswith("celeb_a_hq")


_HQ_NOTE = (
    "celeb_a_hq cannot be downloaded by tfds: it needs a MANUAL download. "
    "Build the data{N}x{N}.tar files as described in the README of "
    'https://github.com/tkarras/progressive_growing_of_gans ("Preparing '
    'datasets for training"), put them in a manual_dir and pass it as shown.'
)
_LSUN_NOTE = (
    "tfds reads LSUN's lmdb files through tensorflow-io: `pip install "
    "tensorflow-io` on the machine that builds it. Downloads are large "
    "(church_outdoor ~2.3 GB, bedroom ~43 GB)."
)
_IMAGENET_NOTE = (
    "The files come from image-net.org (downsampled ImageNet); if that "
    "download needs a login, fetch them by hand into a manual_dir."
)
_CELEB_A_NOTE = (
    "The tfds download of celeb_a comes from Google Drive and is often rate-limited; retry later if it fails."
)
_DIGITS_NOTE = "Built offline from scikit-learn on first use."

# The catalogue, one data set a row: ImageDatasetSpec's fields in their order, the tfds
# name left out (it is diffjax's name for every one of them). Columns: name,
# train_split, eval_split, native_size, default_image_size, channels, center_crop,
# random_flip, num_classes, in_memory, prepare_note.
# fmt: off
_SPEC_TABLE = (
    # name                         train    eval          native size   ch crop   flip   classes in_mem note
    ("digits",                     "train", "test",       8,     8,     1, False, False, 10,     True,  _DIGITS_NOTE),
    ("mnist",                      "train", "test",       28,    28,    1, False, False, 10,     True,  ""),
    ("fashion_mnist",              "train", "test",       28,    28,    1, False, False, 10,     True,  ""),
    ("cifar10",                    "train", "test",       32,    32,    3, False, True,  10,     True,  ""),
    ("celeb_a",                    "train", "test",       None,  64,    3, True,  True,  None,   False, _CELEB_A_NOTE),
    ("celeb_a_hq/256",             "train", None,         256,   256,   3, False, True,  None,   False, _HQ_NOTE),
    ("celeb_a_hq/128",             "train", None,         128,   128,   3, False, True,  None,   False, _HQ_NOTE),
    ("celeb_a_hq/64",              "train", None,         64,    64,    3, False, True,  None,   False, _HQ_NOTE),
    ("lsun/church_outdoor",        "train", "validation", None,  256,   3, True,  True,  None,   False, _LSUN_NOTE),
    ("lsun/bedroom",               "train", "validation", None,  256,   3, True,  True,  None,   False, _LSUN_NOTE),
    ("downsampled_imagenet/32x32", "train", "validation", 32,    32,    3, False, False, None,   False, _IMAGENET_NOTE),
    ("imagenet_resized/32x32",     "train", "validation", 32,    32,    3, False, False, 1000,   False, _IMAGENET_NOTE),
    ("downsampled_imagenet/64x64", "train", "validation", 64,    64,    3, False, False, None,   False, _IMAGENET_NOTE),
    ("imagenet_resized/64x64",     "train", "validation", 64,    64,    3, False, False, 1000,   False, _IMAGENET_NOTE),
)
# fmt: on

IMAGE_DATASETS: Mapping[str, ImageDatasetSpec] = types.MappingProxyType(
    {name: ImageDatasetSpec(name, name, *fields) for name, *fields in _SPEC_TABLE}
)
_ALIASES: Mapping[str, str] = types.MappingProxyType({"celeb_a_hq": "celeb_a_hq/256"})


def image_dataset_spec(name: str) -> ImageDatasetSpec:
    """The spec of a data set name (see the module docstring for the names).

    Raises:
      UnknownDatasetError: the name is not in the catalogue.
    """
    spec = IMAGE_DATASETS.get(_ALIASES.get(name, name))
    if spec is None:
        known = sorted([*IMAGE_DATASETS, *_ALIASES])
        raise UnknownDatasetError(f"Unknown image data set {name!r}. Known names: {', '.join(known)}.")
    return spec


def prepare_command(spec: ImageDatasetSpec, data_dir: str) -> str:
    """The shell command that prepares a catalogue data set into data_dir.

    A Python one-liner rather than ``tfds build``: the tfds 4.9.10 command line
    tool imports apache_beam at start-up and fails without it.
    """
    arguments = ""
    if spec.needs_manual_download:
        arguments = 'download_config=tfds.download.DownloadConfig(manual_dir="/path/to/manual_dir")'
    code = (
        "import tensorflow_datasets as tfds; "
        f"tfds.builder({json.dumps(spec.tfds_name)}, "
        f"data_dir={json.dumps(data_dir)})"
        f".download_and_prepare({arguments})"
    )
    return f"python -c {shlex.quote(code)}"


def _not_prepared_message(spec: ImageDatasetSpec, builder) -> str:
    root = os.fspath(builder.data_dir_root)
    dataset_dir = os.path.join(root, spec.tfds_name)
    found = sorted(os.listdir(dataset_dir)) if os.path.isdir(dataset_dir) else []
    found_text = (
        f" ({dataset_dir!r} holds versions {found}, not the {builder.version} this tfds expects)" if found else ""
    )
    cli = f"tfds build {spec.tfds_name} --data_dir={shlex.quote(root)}"
    if spec.needs_manual_download:
        cli += " --manual_dir=/path/to/manual_dir"
    lines = [
        f"Image data set {spec.name!r} (tfds {spec.tfds_name!r}, version "
        f"{builder.version}) is not prepared in data_dir {root!r}: looked for "
        f"{os.fspath(builder.data_dir)!r}{found_text}.",
        "diffjax never downloads data sets while training (training machines "
        "may have no network, and tfds would retry the download for minutes).",
        "Prepare it on a machine with network access, with tensorflow-datasets installed:",
        f"    {prepare_command(spec, root)}",
        f"(or `{cli}`, which also needs `pip install apache-beam`),",
        f"then copy the folder {dataset_dir!r} from there into data_dir {root!r} "
        "here (keep the same relative path), or pass data_dir= pointing at it.",
    ]
    if spec.prepare_note:
        lines.append(f"Note: {spec.prepare_note}")
    return "\n".join(lines)


def prepared_builder(name: str, data_dir: str | None = None):
    """Opens the tfds builder of a data set that is ready to read, never downloading.

    ``digits`` is built into data_dir on first use (offline, a few seconds); any
    other data set must already be prepared there.

    Args:
      name: a catalogue name, e.g. ``"cifar10"`` or ``"lsun/bedroom"``.
      data_dir: tfds data directory; None means tfds' default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
      A prepared ``tfds.core.DatasetBuilder`` whose records are tfrecord.

    Raises:
      UnknownDatasetError: unknown name.
      DatasetNotPreparedError: the data set is not in data_dir (immediately, with
        the command that prepares it).
      ValueError: the data set was prepared in a file format ``as_dataset``
        cannot read.
    """
    spec = image_dataset_spec(name)
    if spec.name == "digits":
        return digits_lib.digits_builder(data_dir)
    # With GCS disabled (tfds' default) creating a builder only reads local files.
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        raise DatasetNotPreparedError(_not_prepared_message(spec, builder))
    file_format = builder.info.file_format
    if file_format is not None and file_format.value != "tfrecord":
        raise ValueError(
            f"Data set {spec.name!r} in {builder.data_dir!r} is stored as "
            f"{file_format.value}; diffjax reads it with tf.data, which needs "
            "tfrecord. Rebuild it with download_and_prepare(file_format='tfrecord')."
        )
    return builder
