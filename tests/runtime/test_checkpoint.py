"""Checkpoints damaged after they were written: a resume falls back to the newest one that
reads, says which one was damaged and why, and deletes nothing.

What Orbax 0.12 writes for step N (with OCDBT): ``N/_CHECKPOINT_METADATA``,
``N/default/_METADATA`` (the tree), ``N/default/manifest.ocdbt`` and ``N/default/d/*`` (the
merged database: manifest and b-tree root), ``N/default/ocdbt.process_0/{manifest.ocdbt,d/*}``
(the process's own database: the array chunks), ``_sharding``, ``array_metadatas/``.
Values under 1 KiB are inlined in the b-tree node, so ``w`` below is big enough to get a data
file of its own. Restore reads the merged database only: damage to ``ocdbt.process_0/manifest.ocdbt``
or to ``_CHECKPOINT_METADATA`` goes unnoticed, and is not tested.
"""

import logging
import os
import shutil

import jax
import numpy as np
import pytest

from diffjax.runtime.checkpoint import CheckpointDamagedError, Checkpointer, CheckpointMismatchError


def make_state(step: int, width: int = 32) -> dict:
    return {
        "step": jax.numpy.asarray(step, np.int32),
        "w": jax.numpy.arange(width * width, dtype=np.float32).reshape(width, width) * step,
        "b": jax.numpy.full((4,), step, np.float32),
    }


@pytest.fixture
def directory(tmp_path) -> str:
    """A checkpoint directory with steps 1, 2 and 3."""
    path = str(tmp_path / "checkpoints")
    checkpointer = Checkpointer(path, save_interval_steps=1, async_save=False)
    for step in (1, 2, 3):
        checkpointer.save(step, make_state(step))
    checkpointer.close()
    return path


def truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def largest_data_file(step_dir: str) -> str:
    data = os.path.join(step_dir, "default", "ocdbt.process_0", "d")
    return max((os.path.join(data, name) for name in os.listdir(data)), key=os.path.getsize)


def write_garbage(path: str) -> None:
    with open(path, "w") as f:
        f.write("{not json")


DAMAGES = {
    "truncated_data_file": lambda step_dir: truncate(largest_data_file(step_dir)),
    "deleted_data_file": lambda step_dir: os.remove(largest_data_file(step_dir)),
    "truncated_manifest": lambda step_dir: truncate(os.path.join(step_dir, "default", "manifest.ocdbt")),
    "missing_metadata": lambda step_dir: os.remove(os.path.join(step_dir, "default", "_METADATA")),
    "garbled_metadata": lambda step_dir: write_garbage(os.path.join(step_dir, "default", "_METADATA")),
    "deleted_btree_root": lambda step_dir: [
        os.remove(os.path.join(step_dir, "default", "d", name)) for name in os.listdir(os.path.join(step_dir, "default", "d"))
    ],
}


def listing(directory: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)


def assert_state_equal(state, step: int) -> None:
    expected = make_state(step)
    for name in expected:
        np.testing.assert_array_equal(np.asarray(state[name]), np.asarray(expected[name]), err_msg=name)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.slow
def test_damaged_latest_falls_back_to_previous(directory, damage, caplog):
    DAMAGES[damage](os.path.join(directory, "3"))
    files_before = listing(directory)
    checkpointer = Checkpointer(directory, async_save=False)  # a new run, after the damage
    with caplog.at_level(logging.WARNING):
        restored = checkpointer.restore_latest(make_state(0))
    assert restored.step == 2
    assert_state_equal(restored.state, 2)
    assert [bad.step for bad in restored.damaged] == [3]
    assert restored.damaged[0].path == os.path.join(directory, "3")
    assert "\n" not in restored.damaged[0].reason and len(restored.damaged[0].reason) < 600
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "restored step 2" in r.getMessage()]
    assert len(warnings) == 1 and "step 3" in warnings[0] and os.path.join(directory, "3") in warnings[0]
    assert checkpointer.latest_step() == 2
    assert listing(directory) == files_before  # nothing deleted, nothing moved
    assert_state_equal(Checkpointer(directory).restore(make_state(0)), 2)  # restore() falls back too
    checkpointer.close()


@pytest.mark.parametrize("damage", ["missing_metadata", "garbled_metadata"])
def test_damaged_metadata_is_named_not_a_mismatch(directory, damage):
    DAMAGES[damage](os.path.join(directory, "3"))
    with pytest.raises(CheckpointDamagedError) as raised:
        Checkpointer(directory).restore(make_state(0), step=3)
    assert os.path.join(directory, "3", "default", "_METADATA") in str(raised.value)
    assert "mismatch" not in str(raised.value) and len(str(raised.value).splitlines()) == 1


def test_explicit_step_does_not_fall_back(directory):
    DAMAGES["truncated_data_file"](os.path.join(directory, "3"))
    with pytest.raises(CheckpointDamagedError, match=r"step 3 .*/3\)") as raised:
        Checkpointer(directory).restore(make_state(0), step=3)
    assert [bad.step for bad in raised.value.damaged] == [3]
    assert len(str(raised.value).splitlines()) == 1
    assert_state_equal(Checkpointer(directory).restore(make_state(0), step=2), 2)


def test_all_damaged_is_one_short_error(directory):
    for step, damage in zip((1, 2, 3), ("truncated_data_file", "missing_metadata", "truncated_manifest")):
        DAMAGES[damage](os.path.join(directory, str(step)))
    files_before = listing(directory)
    with pytest.raises(CheckpointDamagedError) as raised:
        Checkpointer(directory).restore_latest(make_state(0))
    message = str(raised.value)
    assert len(message.splitlines()) <= 10, message
    for step in (1, 2, 3):
        assert sum(f"step {step} ({os.path.join(directory, str(step))})" in line for line in message.splitlines()) == 1
    assert "_METADATA is missing" in message and "DATA_LOSS" in message
    assert "TensorStore" not in message and "tensorstore_spec" not in message
    assert [bad.step for bad in raised.value.damaged] == [3, 2, 1]
    assert listing(directory) == files_before


def test_shape_mismatch_raises_at_once(directory):
    with pytest.raises(CheckpointMismatchError, match="step 3"):
        Checkpointer(directory).restore_latest(make_state(0, width=16))


@pytest.mark.parametrize("next_save", [3, 4])
def test_training_continues_and_saves_the_damaged_step_again(directory, next_save):
    DAMAGES["truncated_data_file"](os.path.join(directory, "3"))
    files_of_step_3 = listing(os.path.join(directory, "3"))
    checkpointer = Checkpointer(directory, save_interval_steps=1, async_save=False)
    restored = checkpointer.restore_latest(make_state(0))
    assert restored.step == checkpointer.latest_step() == 2
    assert checkpointer.save(next_save, make_state(30))  # the run's new step 3 (or a later one)
    if next_save == 4:
        assert checkpointer.save(3, make_state(30)) is False  # orbax: step 3 is before the latest
    checkpointer.close()
    aside = [name for name in os.listdir(directory) if name.startswith("3.damaged-")]
    assert len(aside) == 1 and listing(os.path.join(directory, aside[0])) == files_of_step_3
    assert sorted(name for name in os.listdir(directory) if "." not in name) == ["1", "2", str(next_save)]
    fresh = Checkpointer(directory, async_save=False)
    assert fresh.latest_step() == next_save
    restored = fresh.restore_latest(make_state(0))
    assert restored.step == next_save and not restored.damaged
    np.testing.assert_array_equal(np.asarray(restored.state["w"]), np.asarray(make_state(30)["w"]))


def test_a_new_instance_sets_aside_newer_checkpoints_when_saving(directory):
    """As when the restoring and the saving ``Checkpointer`` differ: steps at or after the one
    saved are stale, renamed ``.superseded-``; steps this instance saved are not touched."""
    shutil.rmtree(os.path.join(directory, "1"))
    checkpointer = Checkpointer(directory, save_interval_steps=1, async_save=False)
    checkpointer.save(2, make_state(20))
    checkpointer.close()
    names = sorted(os.listdir(directory))
    assert names[0] == "2" and [name.split("-")[0] for name in names[1:]] == ["2.superseded", "3.superseded"]
    assert Checkpointer(directory).latest_step() == 2


def test_creating_a_checkpointer_writes_nothing(tmp_path):
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    assert checkpointer.latest_step() is None and not os.path.exists(tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError):
        checkpointer.restore_latest(make_state(0))
    checkpointer.close()
