"""Tests of diffjax.data: digits builder, image pipeline, missing-data errors, toys."""

from __future__ import annotations

import time
from unittest import mock

import numpy as np
import pytest

from diffjax.data import hosts, toy2d

tfds = pytest.importorskip("tensorflow_datasets")

from diffjax.data import catalog, digits, images, tf_records  # noqa: E402
from diffjax.data.errors import DatasetNotPreparedError, UnknownDatasetError  # noqa: E402

BATCH = 128  # digits: 1500 train examples -> 11 steps per epoch in memory.
HOSTS_1 = dict(process_index=0, process_count=1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A tfds data_dir with `digits` built into it (once per session)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    digits.digits_builder(path)
    return path


@pytest.fixture(scope="session")
def sklearn_uint8():
    return digits.sklearn_digits_uint8()


def _train(data_dir, **kwargs):
    args = dict(global_batch_size=BATCH, seed=0, data_dir=data_dir, **HOSTS_1)
    if not kwargs.get("in_memory", True):
        # Streaming: several windows and chunks even on 1500 records, and quick.
        args.update(shuffle_window=512, read_chunks=4)
    args.update(kwargs)
    return images.make_train_iterator("digits", **args)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _scaled(uint8_images):
    return uint8_images.astype(np.float32) / np.float32(127.5) - np.float32(1)


def _to_uint8(image_batch):
    return np.rint((image_batch + 1.0) * 127.5).astype(np.uint8)


def _row_ids(image_batch, sklearn_uint8):
    """sklearn row of each image of a batch (digits images are all distinct)."""
    lookup = {im.tobytes(): i for i, im in enumerate(sklearn_uint8[0])}
    return [lookup[im.tobytes()] for im in _to_uint8(image_batch)]


# --- the digits builder -------------------------------------------------------


def test_digits_builder_matches_sklearn(data_dir, sklearn_uint8):
    builder = digits.digits_builder(data_dir)
    assert builder.info.file_format.value == "tfrecord"
    sk_images, sk_labels = sklearn_uint8
    seen = []
    for split, size in (("train", 1500), ("test", 297)):
        ex = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        assert ex["image"].shape == (size, 8, 8, 1)
        assert ex["image"].dtype == np.uint8
        assert set(np.unique(ex["label"])) == set(range(10))
        np.testing.assert_array_equal(ex["image"], sk_images[ex["index"]])
        np.testing.assert_array_equal(ex["label"], sk_labels[ex["index"]])
        np.testing.assert_array_equal(np.sort(ex["index"]), np.sort(digits.split_indices()[split]))
        seen.append(ex["index"])
    everything = np.concatenate(seen)
    assert len(everything) == 1797
    np.testing.assert_array_equal(np.sort(everything), np.arange(1797))


def test_digits_build_tolerates_a_concurrent_build(tmp_path):
    """Two processes building into one data_dir: the loser uses the winner's copy."""
    data_dir = str(tmp_path)
    original = digits.Digits._split_generators
    raced = []

    def split_generators_losing_the_race(self, dl_manager):
        if not raced:
            raced.append(True)  # "another process" finishes first
            digits.Digits(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
        return original(self, dl_manager)

    with mock.patch.object(digits.Digits, "_split_generators", split_generators_losing_the_race):
        builder = digits.digits_builder(data_dir)
    assert raced and builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 1500


def test_digits_pixels_are_rounded_scaled_sklearn_levels(sklearn_uint8):
    from sklearn.datasets import load_digits

    levels = load_digits().images
    expected = np.rint(levels * 255.0 / 16.0).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(sklearn_uint8[0], expected)
    assert sklearn_uint8[0][levels[..., None] == 16].min() == 255
    assert sklearn_uint8[0][levels[..., None] == 8].max() == 128


# --- training pipeline --------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
def test_train_batches_shapes_dtypes_range(data_dir, in_memory):
    it = _train(data_dir, in_memory=in_memory)
    assert it.image_shape == (8, 8, 1)
    assert it.num_classes == 10
    assert it.steps_per_epoch == (11 if in_memory else 1500 // BATCH)
    batch = next(it)
    assert it.step == 1
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (BATCH, 8, 8, 1)
    assert batch["image"].dtype == np.float32
    assert batch["label"].shape == (BATCH,) and batch["label"].dtype == np.int32
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
    assert 0 <= batch["label"].min() and batch["label"].max() <= 9
    # Pixels are exactly x / 127.5 - 1 of uint8 values.
    np.testing.assert_array_equal(batch["image"], _scaled(_to_uint8(batch["image"])))


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.slow
def test_train_batches_depend_only_on_seed(data_dir, in_memory):
    first = _take(_train(data_dir, seed=3, in_memory=in_memory, random_flip=True), 3)
    again = _take(_train(data_dir, seed=3, in_memory=in_memory, random_flip=True), 3)
    other = _take(_train(data_dir, seed=4, in_memory=in_memory, random_flip=True), 3)
    _assert_same_batches(first, again)
    for a, b in zip(first, other):
        assert not np.array_equal(a["image"], b["image"])


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.slow
def test_resumed_iterator_equals_uninterrupted_run(data_dir, in_memory):
    steps = 14  # more than one epoch of 11 steps
    resume_at = 9  # the resumed run crosses the epoch boundary at step 11
    full = _take(_train(data_dir, seed=7, in_memory=in_memory, random_flip=True), steps)
    resumed_it = _train(
        data_dir,
        seed=7,
        in_memory=in_memory,
        random_flip=True,
        start_step=resume_at,
    )
    assert resumed_it.step == resume_at
    resumed = _take(resumed_it, steps - resume_at)
    _assert_same_batches(full[resume_at:], resumed)


@pytest.mark.parametrize("in_memory", [True, False])
def test_epochs_visit_each_example_at_most_once_and_reshuffle(data_dir, sklearn_uint8, in_memory):
    it = _train(data_dir, in_memory=in_memory)
    epochs = [np.concatenate([_row_ids(b["image"], sklearn_uint8) for b in _take(it, 11)]) for _ in range(2)]
    train_rows = set(digits.split_indices()["train"].tolist())
    for rows in epochs:
        assert len(rows) == 11 * BATCH == len(set(rows.tolist()))
        assert set(rows.tolist()) <= train_rows
    assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.slow
def test_streaming_order_ignores_tensorflow_global_seed(data_dir):
    import tensorflow as tf

    reference = _take(_train(data_dir, in_memory=False), 2)
    try:
        tf.random.set_seed(1234)
        seeded = _take(_train(data_dir, in_memory=False), 2)
    finally:
        tf.random.set_seed(None)
    _assert_same_batches(reference, seeded)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.slow
def test_two_hosts_get_disjoint_data(data_dir, sklearn_uint8, in_memory):
    per_host = []
    for index in (0, 1):
        it = _train(data_dir, in_memory=in_memory, process_index=index, process_count=2)
        assert it.per_host_batch_size == BATCH // 2
        batches = _take(it, it.steps_per_epoch)  # one epoch
        assert batches[0]["image"].shape == (BATCH // 2, 8, 8, 1)
        per_host.append({r for b in batches for r in _row_ids(b["image"], sklearn_uint8)})
    assert len(per_host[0]) > 0 and len(per_host[1]) > 0
    assert not per_host[0] & per_host[1]


def test_in_memory_global_batch_does_not_depend_on_host_count(data_dir):
    (single,) = _take(_train(data_dir, random_flip=True, start_step=5), 1)
    halves = [next(_train(data_dir, random_flip=True, start_step=5, process_index=i, process_count=2)) for i in (0, 1)]
    for key in ("image", "label"):
        np.testing.assert_array_equal(single[key], np.concatenate([h[key] for h in halves]))


@pytest.mark.parametrize("in_memory", [True, False])
def test_flip_is_off_for_digits_and_mirrors_images_when_on(data_dir, in_memory):
    assert not catalog.image_dataset_spec("digits").random_flip
    assert catalog.image_dataset_spec("cifar10").random_flip
    default_it = _train(data_dir, seed=1, in_memory=in_memory)  # flip not given
    assert default_it.random_flip is False
    no_flip = _take(default_it, 2)
    flipped = _take(_train(data_dir, seed=1, in_memory=in_memory, random_flip=True), 2)
    for step, (plain, maybe) in enumerate(zip(no_flip, flipped)):
        np.testing.assert_array_equal(plain["label"], maybe["label"])
        expected = images.flip_mask(1, step, BATCH)
        assert 0 < expected.sum() < BATCH
        for row in range(BATCH):
            mirror = plain["image"][row][:, ::-1]
            want = mirror if expected[row] else plain["image"][row]
            np.testing.assert_array_equal(maybe["image"][row], want)


def test_in_memory_train_batch_is_a_pure_function():
    n = 50
    codes = np.arange(n, dtype=np.uint8)
    fake_images = np.broadcast_to(codes[:, None, None, None], (n, 2, 2, 1)).copy()
    fake_labels = codes.astype(np.int32)
    args = dict(seed=5, global_batch_size=20, random_flip=False)
    steps_per_epoch = n // 20
    for step in range(6):
        batch = images.in_memory_train_batch(fake_images, fake_labels, step=step, **args)
        epoch, j = divmod(step, steps_per_epoch)
        order = images.epoch_permutation(5, epoch, n)[j * 20 : (j + 1) * 20]
        np.testing.assert_array_equal(batch["label"], order)
        np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], _scaled(order.astype(np.uint8)))


def test_resize_to_other_image_size(data_dir):
    it = _train(data_dir, image_size=16)
    assert it.image_shape == (16, 16, 1)
    assert next(it)["image"].shape == (BATCH, 16, 16, 1)


def test_center_crop_then_resize_for_non_square_images():
    import types

    import tensorflow as tf

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)  # H=6, W=10
    features = {"image": tfds.features.Image(shape=(None, None, 3))}
    fake_builder = types.SimpleNamespace(info=types.SimpleNamespace(features=features))
    spec = catalog.image_dataset_spec("lsun/bedroom")
    example = {"image": tf.io.encode_png(picture)}
    same_size, label = tf_records.decode_fn(spec, fake_builder, 6)(example)
    np.testing.assert_array_equal(same_size.numpy(), picture[:, 2:8])  # centre 6x6
    assert label.numpy() == 0 and label.dtype == tf.int32  # unlabelled
    smaller, _ = tf_records.decode_fn(spec, fake_builder, 3)(example)
    assert smaller.shape == (3, 3, 3) and smaller.dtype == tf.uint8


def test_bad_arguments_are_clear_errors(data_dir):
    with pytest.raises(ValueError, match="multiple of process_count"):
        _train(data_dir, global_batch_size=127, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="seed"):
        _train(data_dir, seed=-1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        _train(data_dir, global_batch_size=2048)
    with pytest.raises(UnknownDatasetError, match="cifar10"):
        images.make_train_iterator("cifar100", global_batch_size=8, seed=0)


# --- evaluation ---------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
def test_eval_covers_the_split_exactly_once(data_dir, in_memory):
    test_images, test_labels = images.load_uint8_images("digits", split="test", data_dir=data_dir)
    assert test_images.shape == (297, 8, 8, 1)
    host_passes = []
    for index in (0, 1):
        evaluation = images.make_eval_batches(
            "digits",
            batch_size=64,
            data_dir=data_dir,
            process_index=index,
            process_count=2,
            in_memory=in_memory,
        )
        assert evaluation.total_examples == 297
        assert evaluation.num_batches == len(evaluation) == 5  # ceil(149 / 32)
        batches = list(evaluation)
        assert len(batches) == 5
        assert all(b["image"].shape == (32, 8, 8, 1) for b in batches)
        assert all(b["mask"].dtype == bool for b in batches)
        images_ = np.concatenate([b["image"] for b in batches])
        mask = np.concatenate([b["mask"] for b in batches])
        assert mask.sum() == evaluation.num_examples == (149, 148)[index]
        assert np.all(mask[: mask.sum()]) and not np.any(mask[mask.sum() :])
        assert np.all(images_[~mask] == -1.0)
        host_passes.append((images_[mask], np.concatenate([b["label"] for b in batches])[mask]))
        _assert_same_batches(batches, list(evaluation))  # re-iterable, same pass
    np.testing.assert_array_equal(np.concatenate([p[0] for p in host_passes]), _scaled(test_images))
    np.testing.assert_array_equal(np.concatenate([p[1] for p in host_passes]), test_labels)


def test_eval_num_examples_takes_a_prefix(data_dir):
    evaluation = images.make_eval_batches("digits", batch_size=16, num_examples=40, data_dir=data_dir, **HOSTS_1)
    assert evaluation.num_batches == 3 and evaluation.num_examples == 40
    assert sum(b["mask"].sum() for b in evaluation) == 40


def test_train_and_eval_share_the_source_keywords(data_dir):
    source = images.ImageSource("digits", image_size=16, data_dir=data_dir, process_index=1, process_count=2)
    resolved = source.resolve(64)
    assert resolved.image_shape == (16, 16, 1) and resolved.in_memory
    assert resolved.share == hosts.HostShare(64, 1, 2) and resolved.share.size == 32
    with pytest.raises(TypeError, match="in_memroy"):
        images.make_eval_batches("digits", batch_size=64, data_dir=data_dir, in_memroy=False, **HOSTS_1)


def test_host_shares_tile_the_global_batch():
    shares = [hosts.HostShare(12, index, 3) for index in range(3)]
    assert [share.rows for share in shares] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(ValueError, match="multiple of process_count"):
        hosts.HostShare(10, 0, 3)


# --- data sets that are not prepared --------------------------------------------


def test_missing_cifar10_fails_fast_with_instructions(tmp_path):
    empty = str(tmp_path / "empty_tfds")
    start = time.monotonic()
    with pytest.raises(DatasetNotPreparedError) as info:
        images.make_train_iterator("cifar10", global_batch_size=8, seed=0, data_dir=empty, **HOSTS_1)
    assert time.monotonic() - start < 10.0
    message = str(info.value)
    assert "'cifar10'" in message
    assert empty in message
    prepare = f'tfds.builder("cifar10", data_dir="{empty}").download_and_prepare()'
    assert prepare in message
    assert f"tfds build cifar10 --data_dir={empty}" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_celeb_a_hq_says_manual_download(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="MANUAL download") as info:
        catalog.prepared_builder("celeb_a_hq", data_dir=str(tmp_path))
    assert "manual_dir" in str(info.value)
    assert "celeb_a_hq/256" in str(info.value)


def test_catalogue_names():
    for name in (
        "cifar10",
        "celeb_a",
        "celeb_a_hq",
        "lsun/church_outdoor",
        "lsun/bedroom",
        "downsampled_imagenet/32x32",
        "downsampled_imagenet/64x64",
        "imagenet_resized/32x32",
        "imagenet_resized/64x64",
        "mnist",
        "fashion_mnist",
        "digits",
    ):
        spec = catalog.image_dataset_spec(name)
        assert spec.channels in (1, 3)
    assert catalog.image_dataset_spec("celeb_a").center_crop
    assert catalog.image_dataset_spec("lsun/bedroom").center_crop


def test_cifar10_path_with_mocked_tfds(tmp_path):
    # tfds' mock fakes the records but not `is_prepared`.
    with (
        tfds.testing.mock_data(num_examples=40),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        it = images.make_train_iterator(
            "cifar10",
            global_batch_size=8,
            seed=0,
            data_dir=str(tmp_path),
            **HOSTS_1,
        )
        batch = next(it)
    assert it.in_memory and it.spec.random_flip and it.steps_per_epoch == 5
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0


# --- 2-D toys -----------------------------------------------------------------


@pytest.mark.parametrize("name", toy2d.TOY_NAMES)
def test_toy_samples_shape_and_determinism(name):
    points = toy2d.sample(name, 1000, seed=0)
    assert points.shape == (1000, 2) and points.dtype == np.float32
    assert np.all(np.isfinite(points))
    np.testing.assert_array_equal(points, toy2d.sample(name, 1000, seed=0))
    assert not np.array_equal(points, toy2d.sample(name, 1000, seed=1))
    assert np.abs(points).max() < 5.0


def test_checkerboard_only_on_black_cells():
    points = toy2d.sample("checkerboard", 5000, seed=0)
    cells = np.floor(points).astype(int)
    assert np.all((cells.sum(axis=1) % 2) == 0)
    assert np.all(np.abs(points) <= 2.0)


def test_eight_gaussians_parameters_are_readable():
    mixture = toy2d.toy_distribution("eight_gaussians")
    assert isinstance(mixture, toy2d.GaussianMixture)
    assert mixture.means.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(mixture.means, axis=1), 2.0)
    np.testing.assert_allclose(mixture.stds, 0.2)
    np.testing.assert_allclose(mixture.weights, 1 / 8)


def test_gmm_sample_moments_match_parameters():
    mixture = toy2d.GaussianMixture.create(
        means=[[-2.0, 0.0], [1.0, 1.0], [3.0, -1.0]],
        stds=[[0.5, 0.2], [0.3, 0.3], [1.0, 0.1]],
        weights=[2.0, 1.0, 1.0],
    )
    np.testing.assert_allclose(mixture.weights, [0.5, 0.25, 0.25])
    points = toy2d.sample(mixture, 200_000, seed=0).astype(np.float64)
    np.testing.assert_allclose(points.mean(0), mixture.mean(), atol=0.02)
    np.testing.assert_allclose(np.cov(points.T), mixture.covariance(), atol=0.03)
    # The density integrates to one.
    grid = np.linspace(-8, 8, 401)
    xx, yy = np.meshgrid(grid, grid)
    density = np.exp(mixture.log_prob(np.stack([xx.ravel(), yy.ravel()], 1)))
    assert abs(density.sum() * (grid[1] - grid[0]) ** 2 - 1.0) < 1e-3


def test_toy_iterator_is_resumable_and_sharded():
    full = _take(toy2d.make_toy_iterator("eight_gaussians", global_batch_size=64, seed=2, **HOSTS_1), 6)
    resumed = _take(
        toy2d.make_toy_iterator("eight_gaussians", global_batch_size=64, seed=2, start_step=4, **HOSTS_1), 2
    )
    _assert_same_batches(full[4:], resumed)
    assert full[0]["x"].shape == (64, 2) and full[0]["label"].dtype == np.int32
    assert set(np.unique(full[0]["label"])) <= set(range(8))
    halves = [
        next(toy2d.make_toy_iterator("eight_gaussians", global_batch_size=64, seed=2, process_index=i, process_count=2))
        for i in (0, 1)
    ]
    np.testing.assert_array_equal(np.concatenate([h["x"] for h in halves]), full[0]["x"])
