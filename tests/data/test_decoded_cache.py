"""The decoded-split cache (``diffjax/data/decoded_cache.py``): what it returns equals the records'
decode, a hit neither decodes nor imports TensorFlow, and a changed, damaged or unwritable entry
falls back to decoding."""

from __future__ import annotations

import glob
import os
import shutil
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffjax import files
from diffjax.data import catalog, decoded_cache, digits, tf_records
from tests.support.subprocesses import run_python

SPEC = catalog.image_dataset_spec("digits")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> str:
    """A tfds data_dir with `digits` built into it, never written to by the tests (they copy it)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    digits.digits_builder(path)
    return path


@pytest.fixture
def data_dir(built, tmp_path) -> str:
    return shutil.copytree(built, str(tmp_path / "tfds"))


def _entries(builder) -> list[str]:
    return sorted(glob.glob(os.path.join(builder.data_dir, "decoded", "*.npz")))


def _refuse_to_decode(*args):
    raise AssertionError("decoded the records although the cache holds the split")


@pytest.mark.parametrize("split", ["train", tfds.even_splits("test", 2)[1]], ids=["train", "a_host_shard"])
def test_a_hit_returns_what_the_records_decode_to_without_decoding(data_dir, split, monkeypatch):
    builder = catalog.prepared_builder("digits", data_dir)
    decoded = tf_records.decode_split(builder, SPEC, split, 8)
    first = decoded_cache.load_or_decode(builder, SPEC, split, 8)
    assert len(_entries(builder)) == 1
    monkeypatch.setattr(tf_records, "decode_split", _refuse_to_decode)
    second = decoded_cache.load_or_decode(builder, SPEC, split, 8)
    for images, labels in (first, second):
        np.testing.assert_array_equal(images, decoded[0])
        np.testing.assert_array_equal(labels, decoded[1])
        assert images.dtype == np.uint8 and labels.dtype == np.int32


def test_every_input_of_the_decode_is_in_the_key(data_dir):
    builder = catalog.prepared_builder("digits", data_dir)
    key = decoded_cache.cache_key(builder, SPEC, "train", 8)
    assert decoded_cache.cache_key(builder, SPEC, "test", 8) != key
    assert decoded_cache.cache_key(builder, SPEC, "train[:10]", 8) != key
    assert decoded_cache.cache_key(builder, SPEC, "train", 16) != key
    record = glob.glob(os.path.join(builder.data_dir, "*train.tfrecord*"))[0]
    os.utime(record, ns=(0, 0))  # a rebuilt data set: its records change
    assert decoded_cache.cache_key(builder, SPEC, "train", 8) != key


def test_a_damaged_entry_is_decoded_again_and_replaced(data_dir):
    builder = catalog.prepared_builder("digits", data_dir)
    expected = decoded_cache.load_or_decode(builder, SPEC, "test", 8)
    [entry] = _entries(builder)
    with open(entry, "wb") as f:
        f.write(b"not an npz")
    again = decoded_cache.load_or_decode(builder, SPEC, "test", 8)
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(decoded_cache.load_or_decode(builder, SPEC, "test", 8)[0], expected[0])
    assert _entries(builder) == [entry] and os.path.getsize(entry) > 100


def test_an_unwritable_data_dir_decodes_every_time(data_dir, monkeypatch):
    builder = catalog.prepared_builder("digits", data_dir)

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)  # where written_atomically makes its file
    images, _ = decoded_cache.load_or_decode(builder, SPEC, "test", 8)
    assert images.shape == (digits.NUM_TEST, 8, 8, 1) and _entries(builder) == []
    assert not glob.glob(os.path.join(builder.data_dir, "decoded", "*.partial"))


def test_a_warm_start_of_the_in_memory_pipeline_does_not_import_tensorflow(data_dir):
    """Training and evaluation batches of digits, in a fresh process, once the splits are decoded."""
    script = textwrap.dedent(f"""
        import sys
        from diffjax.data import images
        train = images.make_train_iterator("digits", global_batch_size=64, seed=0, data_dir={data_dir!r},
                                           process_index=0, process_count=1)
        first = next(train)["image"]
        evaluation = images.make_eval_batches("digits", batch_size=64, data_dir={data_dir!r},
                                              process_index=0, process_count=1)
        batches = list(evaluation)
        print(first.shape, len(batches), "tensorflow" in sys.modules)
    """)
    cold = run_python(["-c", script])
    warm = run_python(["-c", script])
    assert cold.returncode == 0 and warm.returncode == 0, cold.stderr[-2000:] + warm.stderr[-2000:]
    assert cold.stdout.split()[-1] == "True"  # the first start decodes the records with tf.data
    assert warm.stdout.split() == [*cold.stdout.split()[:-1], "False"]
