"""Image input pipeline: tfds data set -> per-host numpy batches in [-1, 1].

Every batch is ``{"image": float32 [b, H, W, C] in [-1, 1], "label": int32
[b]}`` with ``b = global_batch_size // process_count`` (the per-host batch);
pixels are ``x / 127.5 - 1`` of the uint8 values. Unlabelled data sets give
label 0.

Determinism and resumption. The training batches are a pure function of
``(seed, step)`` (and of the data set, image size, batch size and host
layout): ``make_train_iterator(..., start_step=k)`` yields exactly the batches
k, k+1, ... that an uninterrupted iterator from step 0 yields. Epochs have a
fixed length of ``steps_per_epoch`` batches, so step k lies in epoch
``k // steps_per_epoch`` at batch ``k % steps_per_epoch``; the examples left
over at the end of an epoch (fewer than a batch) are skipped in that epoch
only, since each epoch has its own order. Two paths:

* in memory (default for digits, mnist, fashion_mnist, cifar10): every host
  decodes the whole split once into a uint8 numpy array. Epoch e visits the
  examples in ``permutation(seed, e)``; global batch j of the epoch is
  positions ``[j*B, (j+1)*B)`` of it and host i takes rows ``[i*b, (i+1)*b)``
  of that global batch. So the *global* batch of a step does not depend on the
  number of hosts, and hosts never share an example within an epoch.
  Resuming costs nothing (random access). The decoded split is kept beside
  the records (``decoded_cache``): a later start reads it back without
  TensorFlow.
* streaming (the other data sets; or ``in_memory=False``): host i reads only
  its own contiguous 1/process_count of the split
  (``tfds.even_splits(split, n, drop_remainder=True)[i]``) through tf.data
  (``tf_records``).
  In epoch e the shard is cut into ``read_chunks`` contiguous chunks that are
  read concurrently and merged in a random interleaving, and the merged
  stream is permuted window by window (``shuffle_window`` records), all from
  (seed, e, i) through numpy or stateless TF random ops, so TensorFlow's
  global seed (``tf.random.set_seed``) has no effect. (tfds already stores
  records in a hashed, i.e. random, order.) Images are decoded after the
  shuffle and after skipping, so resuming in the middle of an epoch only
  reads, never decodes, the skipped records.

Random horizontal flips (on by default where the spec says, e.g. CIFAR-10;
never on by default for digits or MNIST) are drawn per step from
``(seed, step)`` for the whole global batch, and each host applies its slice.

Evaluation: :func:`make_eval_batches` goes over a split exactly once, in file
order, each host its contiguous shard (``tfds.even_splits``), padding the last
batches with zero images (-1 after scaling) and ``mask == False`` so that all
hosts yield the same number of batches.

Both :func:`make_train_iterator` and :func:`make_eval_batches` take the
keywords of :class:`ImageSource` (image_size, data_dir, process_index,
process_count, in_memory), and both split every global batch between hosts
by :class:`diffjax.data.hosts.HostShare`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from diffjax.data import decoded_cache, hosts
from diffjax.data.catalog import ImageDatasetSpec, image_dataset_spec, prepared_builder

Batch = dict[str, np.ndarray]

# ---------------------------------------------------------------------------
# Pure numpy pieces shared by both paths.


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order in which the in-memory path visits a split in one epoch.

    Returns:
      int64 [num_examples], a permutation depending only on (seed, epoch).
    """
    return hosts.rng(hosts.SHUFFLE_STREAM, seed, epoch).permutation(num_examples)


def flip_mask(seed: int, step: int, global_batch_size: int) -> np.ndarray:
    """Which images of the global batch of a step are flipped horizontally.

    Returns:
      bool [global_batch_size], each True with probability 1/2, depending only
      on (seed, step). Host i uses entries ``[i*b, (i+1)*b)``.
    """
    draws = hosts.rng(hosts.FLIP_STREAM, seed, step).random(global_batch_size)
    return draws < 0.5


def to_model_batch(images: np.ndarray, labels: np.ndarray, flips: np.ndarray | None = None) -> Batch:
    """Flips and scales a uint8 batch into the model's convention.

    Args:
      images: uint8 [b, H, W, C].
      labels: integer [b].
      flips: optional bool [b]; True flips that image left-right (along W).

    Returns:
      ``{"image": float32 [b, H, W, C] = images / 127.5 - 1, "label": int32 [b]}``.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"Expected uint8 images [b, H, W, C], got {images.dtype} {images.shape}.")
    if flips is not None:
        images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    scaled = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return {"image": scaled, "label": np.asarray(labels, dtype=np.int32)}


def in_memory_train_batch(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    step: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    random_flip: bool = False,
    permutation: np.ndarray | None = None,
) -> Batch:
    """The training batch of one host at one step, from arrays in memory.

    A pure function of its arguments (see the module docstring for the order).

    Args:
      images: uint8 [N, H, W, C], the whole training split.
      labels: integer [N].
      seed: non-negative int.
      step: non-negative int, the training step.
      global_batch_size: B, a multiple of process_count, at most N.
      process_index: this host, in [0, process_count).
      process_count: number of hosts.
      random_flip: flip images left-right with probability 1/2.
      permutation: ``epoch_permutation(seed, step // steps_per_epoch, N)``
        when the caller has it already (saves recomputing it each step).

    Returns:
      ``{"image": float32 [b, H, W, C], "label": int32 [b]}``, b = B / P.
    """
    seed, step = hosts.check_seed(seed), hosts.check_step(step, "step")
    share = hosts.HostShare(global_batch_size, process_index, process_count)
    return _in_memory_batch(images, labels, seed, step, share, random_flip, permutation)


def _in_memory_batch(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    step: int,
    share: hosts.HostShare,
    random_flip: bool,
    permutation: np.ndarray | None,
) -> Batch:
    """:func:`in_memory_train_batch` of checked arguments."""
    num_examples = images.shape[0]
    steps_per_epoch = _steps_per_epoch(num_examples, share.global_batch_size)
    epoch, batch_in_epoch = divmod(step, steps_per_epoch)
    if permutation is None:
        permutation = epoch_permutation(seed, epoch, num_examples)
    start = batch_in_epoch * share.global_batch_size
    rows = permutation[start : start + share.global_batch_size][share.rows]
    return to_model_batch(images[rows], labels[rows], _host_flips(seed, step, share, random_flip))


def _host_flips(seed: int, step: int, share: hosts.HostShare, random_flip: bool) -> np.ndarray | None:
    """This host's entries of :func:`flip_mask`, or None without random flips."""
    if not random_flip:
        return None
    return flip_mask(seed, step, share.global_batch_size)[share.rows]


def _steps_per_epoch(num_examples: int, batch_size: int) -> int:
    if num_examples < batch_size:
        raise ValueError(
            f"The split has {num_examples} examples (per host where streaming), fewer than one batch of {batch_size}."
        )
    return num_examples // batch_size


def load_uint8_images(
    name: str,
    *,
    split: str | None = None,
    image_size: int | None = None,
    data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a whole split into memory, in the data set's file order.

    Args:
      name: catalogue name, e.g. ``"digits"``.
      split: tfds split expression; default the spec's train split.
      image_size: output side; default the spec's default size.
      data_dir: tfds data directory (None: tfds' default).

    Returns:
      images: uint8 [N, image_size, image_size, C].
      labels: int32 [N] (0 for unlabelled data sets).

    Raises:
      DatasetNotPreparedError: the data set is not in data_dir.
    """
    spec = image_dataset_spec(name)
    image_size = image_size or spec.default_image_size
    builder = prepared_builder(name, data_dir)
    return decoded_cache.load_or_decode(builder, spec, split or spec.train_split, image_size)


# ---------------------------------------------------------------------------
# Where one host's images come from (shared by training and evaluation).


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """A data set and this host's part of it: the keywords that
    :func:`make_train_iterator` and :func:`make_eval_batches` share.

    Attributes:
      name: catalogue name (``"digits"``, ``"cifar10"``, ``"lsun/bedroom"``...).
      image_size: output side; None: the spec's default size. Centre crop +
        resize where the spec says; resize whenever the stored size differs.
      data_dir: tfds data directory (None: tfds' default).
      process_index: this host (None: ``jax.process_index()``).
      process_count: number of hosts (None: ``jax.process_count()``).
      in_memory: decode the split (evaluation: this host's shard) into memory
        once and keep it (None: the spec's default).
    """

    name: str
    image_size: int | None = None
    data_dir: str | None = None
    process_index: int | None = None
    process_count: int | None = None
    in_memory: bool | None = None

    def resolve(self, global_batch_size: int) -> _ResolvedSource:
        """The spec, the defaults filled in and this host's share of the batches; reads no data.

        Raises:
          UnknownDatasetError: unknown name.
          ValueError: bad host arguments or batch size.
        """
        spec = image_dataset_spec(self.name)
        return _ResolvedSource(
            spec=spec,
            share=hosts.HostShare.resolve(global_batch_size, self.process_index, self.process_count),
            image_size=self.image_size or spec.default_image_size,
            in_memory=spec.in_memory if self.in_memory is None else bool(self.in_memory),
            data_dir=self.data_dir,
        )


@dataclasses.dataclass(frozen=True)
class _ResolvedSource:
    """An :class:`ImageSource` with its spec, its defaults filled in and this host's share."""

    spec: ImageDatasetSpec
    share: hosts.HostShare
    image_size: int
    in_memory: bool
    data_dir: str | None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.spec.channels)

    def builder(self):
        """The prepared tfds builder (raises DatasetNotPreparedError at once)."""
        return prepared_builder(self.spec.name, self.data_dir)


# ---------------------------------------------------------------------------
# Training iterator.


class TrainIterator(Iterator[Batch]):
    """Infinite iterator over one host's training batches.

    Attributes:
      step: the step of the batch the next ``next()`` returns.
      steps_per_epoch: batches per epoch.
      per_host_batch_size: b, the leading dimension of each batch.
      image_shape: (H, W, C) of the images.
      num_classes: number of labels, or None (unlabelled; labels are 0).
      spec: the data set's :class:`ImageDatasetSpec`.
      in_memory: which path produces the batches.
      random_flip: whether images are flipped at random.
    """

    def __init__(
        self,
        batches: Iterator[Batch],
        *,
        start_step: int,
        steps_per_epoch: int,
        per_host_batch_size: int,
        image_shape: tuple[int, int, int],
        spec: ImageDatasetSpec,
        in_memory: bool,
        random_flip: bool,
    ):
        self._batches = batches
        self.step = start_step
        self.steps_per_epoch = steps_per_epoch
        self.per_host_batch_size = per_host_batch_size
        self.image_shape = image_shape
        self.num_classes = spec.num_classes
        self.spec = spec
        self.in_memory = in_memory
        self.random_flip = random_flip

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> Batch:
        batch = next(self._batches)
        self.step += 1
        return batch


def make_train_iterator(
    name: str,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    random_flip: bool | None = None,
    split: str | None = None,
    shuffle_window: int = 10_000,
    read_chunks: int = 16,
    **source: Any,
) -> TrainIterator:
    """Infinite, deterministic, resumable training batches of one host.

    Args:
      name: catalogue name (``"digits"``, ``"cifar10"``, ``"lsun/bedroom"``...).
      global_batch_size: B over all hosts; each host yields B / process_count.
      seed: non-negative int; with the step it fixes every batch.
      start_step: the step of the first batch (to resume a run).
      random_flip: random left-right flips; None takes the spec's default
        (True for cifar10, celeb_a, celeb_a_hq, lsun; False otherwise).
      split: tfds split expression; default the spec's train split.
      shuffle_window: streaming path: records permuted together in a window;
        they are held encoded in memory (10k ImageNet-64 PNGs ~ 100 MB; lower
        it for LSUN at 256).
      read_chunks: streaming path: contiguous chunks of the host's shard read
        concurrently and merged in a random interleaving.
      **source: ``image_size``, ``data_dir``, ``process_index``,
        ``process_count``, ``in_memory``: see :class:`ImageSource`.

    Returns:
      A :class:`TrainIterator` of ``{"image": float32 [b, S, S, C] in [-1, 1],
      "label": int32 [b]}``.

    Raises:
      DatasetNotPreparedError: the data set is not in data_dir (immediately).
      ValueError: bad batch size, seed, step or host arguments.
    """
    resolved = ImageSource(name, **source).resolve(global_batch_size)
    spec, share = resolved.spec, resolved.share
    seed = hosts.check_seed(seed)
    start_step = hosts.check_step(start_step)
    random_flip = spec.random_flip if random_flip is None else bool(random_flip)
    split = split or spec.train_split
    builder = resolved.builder()
    if resolved.in_memory:
        images, labels = decoded_cache.load_or_decode(builder, spec, split, resolved.image_size)
        steps_per_epoch = _steps_per_epoch(len(images), global_batch_size)
        batches = _in_memory_batches(images, labels, seed, start_step, share, random_flip)
    else:
        shard = tfds.even_splits(split, share.process_count, drop_remainder=True)[share.process_index]
        shard_size = builder.info.splits[shard].num_examples
        steps_per_epoch = _steps_per_epoch(shard_size, share.size)
        batches = _streaming_batches(
            builder,
            spec,
            shard,
            seed=seed,
            start_step=start_step,
            share=share,
            random_flip=random_flip,
            image_size=resolved.image_size,
            steps_per_epoch=steps_per_epoch,
            shard_size=shard_size,
            shuffle_window=shuffle_window,
            read_chunks=read_chunks,
        )
    return TrainIterator(
        batches,
        start_step=start_step,
        steps_per_epoch=steps_per_epoch,
        per_host_batch_size=share.size,
        image_shape=resolved.image_shape,
        spec=spec,
        in_memory=resolved.in_memory,
        random_flip=random_flip,
    )


def _in_memory_batches(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    start_step: int,
    share: hosts.HostShare,
    random_flip: bool,
) -> Iterator[Batch]:
    steps_per_epoch = _steps_per_epoch(len(images), share.global_batch_size)
    epoch, permutation = None, None
    for step in itertools.count(start_step):
        if step // steps_per_epoch != epoch:
            epoch = step // steps_per_epoch
            permutation = epoch_permutation(seed, epoch, len(images))
        yield _in_memory_batch(images, labels, seed, step, share, random_flip, permutation)


def _streaming_batches(
    builder,
    spec,
    shard,
    *,
    seed,
    start_step,
    share,
    random_flip,
    image_size,
    steps_per_epoch,
    shard_size,
    shuffle_window,
    read_chunks,
) -> Iterator[Batch]:
    from diffjax.data import tf_records  # TensorFlow: only a streamed data set imports it

    decode = tf_records.decode_fn(spec, builder, image_size)

    def open_epoch(epoch: int, skip_batches: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Epoch ``epoch``'s batches from ``skip_batches`` on, the first already read
        (filling the shuffle window is the slow part of starting an epoch)."""
        batches = tf_records.shuffled_batches(
            builder,
            spec,
            shard,
            decode,
            order_seed=[hosts.READ_ORDER_STREAM, seed, epoch, share.process_index],
            num_chunks=max(1, min(read_chunks, shard_size)),
            window=shuffle_window,
            skip_batches=skip_batches,
            batch_size=share.size,
        )
        first = next(batches, None)
        return batches if first is None else itertools.chain([first], batches)

    step = start_step
    # The next epoch's pipeline is opened on a thread while this one is consumed, so an
    # epoch boundary costs no pause (its content depends on (seed, epoch) only).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="diffjax-next-epoch") as pool:
        epoch, skip_batches = divmod(step, steps_per_epoch)
        upcoming = pool.submit(open_epoch, epoch, skip_batches)
        while True:
            batches = upcoming.result()
            upcoming = pool.submit(open_epoch, epoch + 1, 0)
            for images, labels in batches:
                yield to_model_batch(images, labels, _host_flips(seed, step, share, random_flip))
                step += 1
            epoch += 1
            if step != epoch * steps_per_epoch:
                raise RuntimeError(
                    f"epoch {epoch - 1} of the streaming pipeline ended at step {step}, not at "
                    f"{epoch * steps_per_epoch} ({steps_per_epoch} steps per epoch)"
                )


# ---------------------------------------------------------------------------
# Evaluation: one pass over a split.


class EvalBatches:
    """One host's batches of an evaluation split; each ``iter()`` is one pass.

    Each batch is ``{"image": float32 [b, S, S, C], "label": int32 [b],
    "mask": bool [b]}``; ``mask`` is False on padding rows (zero images, i.e.
    -1 after scaling, label 0), which only occur in the last batches.

    Attributes:
      num_batches: batches per pass, the same on every host.
      num_examples: real (unpadded) examples of this host.
      total_examples: real examples over all hosts (the split's size).
      per_host_batch_size: b.
      image_shape: (S, S, C).
    """

    def __init__(
        self,
        make_pass: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]],
        *,
        num_batches: int,
        num_examples: int,
        total_examples: int,
        per_host_batch_size: int,
        image_shape: tuple[int, int, int],
    ):
        self._make_pass = make_pass
        self.num_batches = num_batches
        self.num_examples = num_examples
        self.total_examples = total_examples
        self.per_host_batch_size = per_host_batch_size
        self.image_shape = image_shape

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, mask in self._make_pass():
            batch = to_model_batch(images, labels)
            batch["mask"] = np.asarray(mask, dtype=bool)
            yield batch


def make_eval_batches(
    name: str,
    *,
    batch_size: int,
    split: str | None = None,
    num_examples: int | None = None,
    **source: Any,
) -> EvalBatches:
    """Batches that cover an evaluation split exactly once per pass (no flips).

    Host i reads ``tfds.even_splits(split, process_count)[i]`` (contiguous, in
    file order, sizes differing by at most one); all hosts yield
    ``ceil(max shard size / b)`` batches, the missing rows padded and masked.

    Args:
      name: catalogue name.
      batch_size: global batch size, a multiple of process_count.
      split: tfds split expression; default the spec's eval split.
      num_examples: use only the first n examples of the split (the split must
        then be a plain split name such as ``"test"``).
      **source: ``image_size``, ``data_dir``, ``process_index``,
        ``process_count``, ``in_memory``: see :class:`ImageSource`.

    Returns:
      An :class:`EvalBatches` (re-iterable).

    Raises:
      DatasetNotPreparedError: the data set is not in data_dir (immediately).
      ValueError: no split given for a data set without an eval split, or bad
        arguments.
    """
    resolved = ImageSource(name, **source).resolve(batch_size)
    spec, share = resolved.spec, resolved.share
    split = split or spec.eval_split
    if split is None:
        raise ValueError(
            f"Data set {spec.name!r} has no evaluation split; pass split= "
            f"explicitly, e.g. split='{spec.train_split}[-1000:]'."
        )
    if num_examples is not None:
        if any(c in split for c in "[]+"):
            raise ValueError(
                f"num_examples needs a plain split name, got split={split!r}; write the slice into the split instead."
            )
        split = f"{split}[:{int(num_examples)}]"
    per_host = share.size
    image_size = resolved.image_size
    builder = resolved.builder()

    shards = tfds.even_splits(split, share.process_count, drop_remainder=False)
    shard_sizes = [builder.info.splits[s].num_examples for s in shards]
    num_batches = math.ceil(max(shard_sizes) / per_host)
    padded_size = num_batches * per_host
    shard = shards[share.process_index]
    shape = resolved.image_shape

    if resolved.in_memory:
        images, labels = decoded_cache.load_or_decode(builder, spec, shard, image_size)
        count = len(images)
        images = np.concatenate([images, np.zeros((padded_size - count, *shape), np.uint8)])
        labels = np.concatenate([labels, np.zeros((padded_size - count,), np.int32)])
        mask = np.arange(padded_size) < count

        def make_pass():
            for start in range(0, padded_size, per_host):
                stop = start + per_host
                yield images[start:stop], labels[start:stop], mask[start:stop]

    else:
        from diffjax.data import tf_records  # TensorFlow: only a streamed data set imports it

        decode = tf_records.decode_fn(spec, builder, image_size)
        count = shard_sizes[share.process_index]

        def make_pass():
            return tf_records.padded_batches(builder, spec, shard, decode, shape=shape, count=count,
                                             padded_size=padded_size, batch_size=per_host)

    return EvalBatches(
        make_pass,
        num_batches=num_batches,
        num_examples=count,
        total_examples=sum(shard_sizes),
        per_host_batch_size=per_host,
        image_shape=shape,
    )
