"""The tf.data side of the image pipeline: a prepared tfds builder's records read in file order or
in a seeded shuffled order, the image left encoded until it is needed, and decoded to uint8 numpy.

The only module of ``diffjax.data`` that imports TensorFlow (3-5 s of CPU): ``images`` imports it
when it reads records, which an in-memory data set whose decoded split is on disk
(``decoded_cache``) never does.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from diffjax.data import hosts
from diffjax.data.catalog import ImageDatasetSpec

__all__ = ["decode_fn", "decode_split", "deterministic_options", "encoded_records", "needed_keys", "padded_batches",
           "shuffled_batches", "shuffled_records"]

_DECODE_BATCH = 1024  # Examples per tf.data batch when decoding a whole split.


def deterministic_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


def decode_fn(spec: ImageDatasetSpec, builder, image_size: int) -> Callable[[dict], tuple[tf.Tensor, tf.Tensor]]:
    """Maps a record with the image still encoded to (uint8 image, int32 label).

    The image is decoded, centre-cropped to a square when the spec asks, and
    resized (bilinear, antialiased, rounded) when its size is not image_size.
    """
    image_feature = builder.info.features["image"]
    resize = spec.center_crop or spec.native_size != image_size

    def decode(example):
        image = image_feature.decode_example(example["image"])
        if spec.center_crop:
            height, width = tf.shape(image)[0], tf.shape(image)[1]
            side = tf.minimum(height, width)
            image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
        if resize:
            image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        image = tf.ensure_shape(image, [image_size, image_size, spec.channels])
        if spec.num_classes is None:
            label = tf.zeros([], tf.int32)
        else:
            label = tf.cast(example["label"], tf.int32)
        return image, label

    return decode


def needed_keys(spec: ImageDatasetSpec) -> tuple[str, ...]:
    return ("image",) if spec.num_classes is None else ("image", "label")


def encoded_records(builder, split, keys: tuple[str, ...], *, lean: bool = False) -> tf.data.Dataset:
    """The records of a split in file order, the image left encoded (cheap to skip).

    Only the features named in ``keys`` are kept. ``lean`` reads one file at a
    time without tfds' own prefetch, for the many small concurrent readers of
    :func:`shuffled_records`.
    """
    lean_options = {}
    if lean:
        lean_options = dict(
            interleave_cycle_length=1,
            num_parallel_calls_for_interleave_files=1,
            skip_prefetch=True,
        )
    read_config = tfds.ReadConfig(try_autocache=False, options=deterministic_options(), **lean_options)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )

    @tf.autograph.experimental.do_not_convert  # plain dict selection; autograph cannot parse a lambda's source
    def select(example):
        return {key: example[key] for key in keys}

    return ds.map(select)


def shuffled_records(
    builder,
    shard,
    keys: tuple[str, ...],
    *,
    order_seed: list[int],
    num_chunks: int,
    window: int,
) -> tf.data.Dataset:
    """The records of a shard in an order fixed by ``order_seed`` alone.

    The shard is cut into ``num_chunks`` contiguous chunks, read concurrently
    and merged in a uniformly random interleaving (a numpy permutation of the
    chunk ids); the merged stream is then permuted window by window (stateless
    random numbers seeded by (order_seed, window index)). Only stateless or
    numpy randomness is used, so TensorFlow's global seed has no effect.
    """
    chunks = tfds.even_splits(shard, n=num_chunks)
    sizes = [builder.info.splits[chunk].num_examples for chunk in chunks]
    numpy_rng = hosts.rng(*order_seed)
    choice = numpy_rng.permutation(np.repeat(np.arange(len(chunks)), sizes))
    ds = tf.data.Dataset.choose_from_datasets(
        [encoded_records(builder, chunk, keys, lean=True) for chunk in chunks],
        tf.data.Dataset.from_tensor_slices(choice.astype(np.int64)),
    )
    window_seed = tf.constant(hosts.int64_seed(*order_seed) & 0x7FFFFFFF, dtype=tf.int64)

    def permute_window(index, records):
        size = tf.shape(tf.nest.flatten(records)[0])[0]
        keys = tf.random.stateless_uniform([size], seed=tf.stack([window_seed, index]), alg="philox")
        order = tf.argsort(keys)
        return tf.nest.map_structure(lambda x: tf.gather(x, order), records)

    ds = ds.batch(window).enumerate().map(permute_window)
    return ds.unbatch()


def decode_split(builder, spec, split, image_size) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a whole split (or shard) into numpy, in file order."""
    ds = encoded_records(builder, split, needed_keys(spec))
    ds = ds.map(
        decode_fn(spec, builder, image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(_DECODE_BATCH).prefetch(tf.data.AUTOTUNE)
    images, labels = [], []
    for image_chunk, label_chunk in ds.as_numpy_iterator():
        images.append(image_chunk)
        labels.append(label_chunk)
    if not images:
        shape = (0, image_size, image_size, spec.channels)
        return np.zeros(shape, np.uint8), np.zeros((0,), np.int32)
    return np.concatenate(images), np.concatenate(labels)


def shuffled_batches(builder, spec: ImageDatasetSpec, shard, decode, *, order_seed: list[int], num_chunks: int,
                     window: int, skip_batches: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of a streamed shard: :func:`shuffled_records` in ``order_seed``'s order, the
    first ``skip_batches`` batches skipped before decoding, then ``(uint8 [b, S, S, C], int32 [b])``
    batches of ``batch_size`` (the last partial batch dropped)."""
    ds = shuffled_records(builder, shard, needed_keys(spec), order_seed=order_seed, num_chunks=num_chunks,
                          window=window)
    ds = ds.skip(skip_batches * batch_size)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(deterministic_options())
    return ds.as_numpy_iterator()


def padded_batches(builder, spec: ImageDatasetSpec, shard, decode, *, shape: tuple[int, int, int], count: int,
                   padded_size: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One pass over a shard of ``count`` records in file order, padded to ``padded_size`` rows:
    ``(uint8 [b, *shape], int32 [b], bool [b])`` batches, the mask False on the zero padding."""
    ds = encoded_records(builder, shard, needed_keys(spec))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda image, label: (image, label, True))
    padding = tf.data.Dataset.from_tensors((tf.zeros(shape, tf.uint8), tf.zeros([], tf.int32), False))
    ds = ds.concatenate(padding.repeat(padded_size - count)).batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(deterministic_options())
    return ds.as_numpy_iterator()
