"""Checkpoints with Orbax: asynchronous saves, keep the last K, exact resume.

A checkpoint holds the whole ``TrainState`` (step, params, EMA params, optimiser state,
timestep-sampler state, root key). The data pipeline needs no state: its batches are a
pure function of (seed, step). A save interrupted by a kill leaves a temporary folder
that Orbax ignores, so a restart resumes from the last complete checkpoint.

A checkpoint damaged after it was written (a truncated or deleted file, a garbled
``_METADATA``) does not stop a resume: ``restore_latest`` falls back to the newest one
that reads, with a warning naming the damaged one. Nothing is ever deleted: when the run
then saves, the damaged folder is renamed ``<step>.damaged-<UTC time>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from diffjax.errors import UserError

__all__ = [
    "CheckpointDamagedError",
    "CheckpointMismatchError",
    "Checkpointer",
    "DamagedCheckpoint",
    "NoCheckpointError",
    "PreemptionFlag",
    "RestoredCheckpoint",
]


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint in a workdir does not fit the state the config builds."""


class NoCheckpointError(UserError, FileNotFoundError):
    """The checkpoint directory holds no checkpoint (at the step asked for)."""


@dataclasses.dataclass(frozen=True)
class DamagedCheckpoint:
    """A checkpoint that could not be read: its step, its folder and why (one line)."""

    step: int
    path: str
    reason: str

    def __str__(self) -> str:
        return f"step {self.step} ({self.path}): {self.reason}"


class CheckpointDamagedError(UserError, OSError):
    """The checkpoint asked for, or every checkpoint, cannot be read: its files are
    truncated, missing or garbled. ``damaged`` lists each one tried. ``launch.py`` prints
    the message alone (a ``UserError``)."""

    def __init__(self, message: str, damaged: tuple[DamagedCheckpoint, ...]):
        super().__init__(message)
        self.damaged = damaged


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    """What ``Checkpointer.restore_latest`` restored: the state, its step, and the newer
    checkpoints that were skipped because they could not be read (newest first)."""

    state: Any
    step: int
    damaged: tuple[DamagedCheckpoint, ...] = ()


class Checkpointer:
    """Saves and restores ``TrainState`` pytrees under ``workdir/checkpoints``.

    Args:
      directory: where checkpoints live (local path or a ``gs://`` URL).
      max_to_keep: keep the last K checkpoints.
      save_interval_steps: save when ``step % save_interval_steps == 0`` (or forced).
      async_save: write in a background thread while training goes on.

    Creating one writes nothing: the directory is made by the first save. So a run can
    ``restore_latest`` and later ``save`` with the same instance, which then knows which
    newer checkpoints were damaged.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1000, async_save: bool = True):
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                save_interval_steps=save_interval_steps,
                enable_async_checkpointing=async_save,
                create=False,  # nothing is written before the first save
            ),
        )
        self._damaged_steps: set[int] = set()  # found unreadable by this instance
        self._saved_steps: set[int] = set()  # written by this instance

    def latest_step(self) -> int | None:
        """The step of the last complete checkpoint, or None. Skips the checkpoints that
        ``restore_latest`` found damaged, so after it this is the restored step."""
        steps = [step for step in self._manager.all_steps() if step not in self._damaged_steps]
        return max(steps, default=None)

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Start saving ``state`` as ``step`` if the interval says so (or ``force``).

        Before it, the checkpoints ``restore_latest`` found damaged, and any others at
        ``step`` or later that this instance did not write (a run that went back past them),
        are renamed ``<step>.damaged-<UTC time>`` (``.superseded-`` for the others), never
        deleted: they neither block this save, nor shadow it, nor get rotated away.

        Returns:
          Whether a save was started.
        """
        stale = [s for s in self._manager.all_steps()
                 if s in self._damaged_steps or (s >= step and s not in self._saved_steps)]
        if stale:
            self._set_aside(stale)
        started = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
        if started:
            self._saved_steps.add(step)
        return started

    def restore_latest(self, abstract_state: Any) -> RestoredCheckpoint:
        """Restore the newest checkpoint that can be read, onto ``abstract_state``.

        A checkpoint whose files cannot be read is skipped with an absl warning naming its
        step, folder and the first line of the error; it is left in place, listed in the
        result's ``damaged``, and ``latest_step()`` skips it from then on.

        Raises:
          NoCheckpointError: no checkpoint.
          CheckpointMismatchError: the newest readable checkpoint's tree or shapes differ
            from ``abstract_state`` (raised at once: older ones of the run have the same).
          CheckpointDamagedError: no checkpoint could be read; one line per step tried.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise NoCheckpointError(f"no checkpoint in {self.directory}: train first, with the same --workdir")
        damaged: list[DamagedCheckpoint] = []
        for step in steps:
            try:
                state, problem = self._restore_step(step, abstract_state), None
            except CheckpointDamagedError as error:
                state, problem = None, error.damaged[0]
            if not _on_every_process(problem is None):  # agree, or processes would diverge
                damaged.append(problem or DamagedCheckpoint(step, self._step_path(step), "unreadable on another process"))
                continue
            for bad in damaged:
                logging.warning("checkpoint %s; restored step %d instead. The damaged folder is left in "
                                "place until this run saves, then renamed %s.damaged-<UTC time> (never deleted).",
                                bad, step, bad.step)
            self._damaged_steps.update(bad.step for bad in damaged)
            return RestoredCheckpoint(state, step, tuple(damaged))
        lines = "\n".join(f"  {bad}" for bad in damaged)
        raise CheckpointDamagedError(
            f"no checkpoint in {self.directory} could be read (all left in place):\n{lines}\n"
            "Copy an intact checkpoint back, or start afresh in a new --workdir.",
            tuple(damaged),
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore onto the shapes, dtypes and shardings of ``abstract_state``.

        Args:
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` (with shardings) or arrays.
          step: which checkpoint; default: the newest that can be read
            (``restore_latest(abstract_state).state``).

        Raises:
          NoCheckpointError: no checkpoint (at ``step``).
          CheckpointMismatchError: the stored tree or shapes differ from ``abstract_state``;
            the message names the first differing entries.
          CheckpointDamagedError: the checkpoint's files cannot be read (with ``step``), or
            none can (without).
        """
        if step is None:
            return self.restore_latest(abstract_state).state
        if step not in self._manager.all_steps():
            raise NoCheckpointError(f"no checkpoint for step {step} in {self.directory} (it has {sorted(self._manager.all_steps())})")
        return self._restore_step(step, abstract_state)

    def _restore_step(self, step: int, abstract_state: Any) -> Any:
        """Restore ``step``. A read error becomes ``CheckpointDamagedError`` whose message
        is the error's first line (the error itself is dropped, with Orbax's noise about
        it); ``CheckpointMismatchError`` passes through."""
        with _without_orbax_read_noise():
            try:
                self._check_fits(step, abstract_state)
                target = jax.tree.map(_as_abstract, abstract_state)
                return self._manager.restore(step, args=ocp.args.StandardRestore(target))
            except CheckpointMismatchError:
                raise
            except Exception as error:
                reason = _first_line(error)
        damage = DamagedCheckpoint(step, self._step_path(step), reason)
        raise CheckpointDamagedError(f"checkpoint {damage}", (damage,))

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        metadata = epath.Path(self._step_path(step)) / "default" / "_METADATA"
        try:
            stored = self._manager.item_metadata(step)
        except json.JSONDecodeError as error:
            raise ValueError(f"{metadata} is not valid JSON ({error})") from None
        stored = getattr(stored, "tree", stored)
        if stored is None:  # Orbax reads a missing _METADATA as "no tree": damage, not a mismatch
            raise FileNotFoundError(f"{metadata} is missing" if not metadata.exists() else f"{metadata} holds no tree")
        stored_shapes = {
            _path_name(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]
            if hasattr(leaf, "shape")
        }
        wanted_shapes = {
            _path_name(path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
        }
        problems = []
        for name in sorted(set(stored_shapes) | set(wanted_shapes)):
            if name not in stored_shapes:
                problems.append(f"{name}: missing from the checkpoint (config wants {wanted_shapes[name]})")
            elif name not in wanted_shapes:
                problems.append(f"{name}: in the checkpoint {stored_shapes[name]} but not in the config's state")
            elif stored_shapes[name] != wanted_shapes[name]:
                problems.append(f"{name}: checkpoint has shape {stored_shapes[name]}, config wants {wanted_shapes[name]}")
        if problems:
            shown = "\n  ".join(problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} does not fit this config "
                f"({len(problems)} mismatches):\n  {shown}{more}\n"
                "Use a new --workdir for a different model, or the config the checkpoint was made with."
            )

    def _step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _set_aside(self, steps: list[int]) -> None:
        """Rename the folders of ``steps`` to ``<step>.damaged-<UTC time>`` (or
        ``.superseded-``); process 0 renames, every process then rereads the directory."""
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for step in steps:
                label = "damaged" if step in self._damaged_steps else "superseded"
                source = epath.Path(self._step_path(step))
                target = source.parent / f"{step}.{label}-{stamp}"
                source.rename(target)
                logging.warning("checkpoint step %d set aside as %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("diffjax_checkpoint_set_aside")
        self._damaged_steps.difference_update(steps)
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Block until an asynchronous save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _first_line(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``error``, without TensorStore's spec
    dump (Orbax wraps a read error as ``Exception('... See full TensorStore details: ...')``)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = (lines[0] if lines else "").split(" [tensorstore_spec", 1)[0].split(" See full TensorStore details", 1)[0]
    line = line if len(line) <= 400 else line[:400] + " ..."
    return f"{type(error).__name__}: {line}"


@contextlib.contextmanager
def _without_orbax_read_noise():
    """Drop what Orbax 0.12 leaves behind a failed read: its pending array reads, closed,
    raise ``Exception('Encountered error while reading array index ... <TensorStore spec>')``
    and TensorStore calls back into its closed event loop; Python would print each as a
    60-line "Exception ignored in". Anything else goes to the usual hook."""
    previous = sys.unraisablehook

    def hook(unraisable):
        message = str(unraisable.exc_value)
        if not message.startswith("Encountered error while reading array index") and message != "Event loop is closed":
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()  # finalise the failed read's coroutines now, under this hook
        sys.unraisablehook = previous


def _on_every_process(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (just ``ok`` with one process)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _path_name(path) -> str:
    """'params/dense/kernel' for a pytree path, whether it went through dataclass
    attributes (the live state) or dict keys (the stored tree)."""
    parts = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _as_abstract(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))


class PreemptionFlag:
    """Set by SIGTERM (what schedulers send before preempting), read by the train loop.

    Installs its handler on creation (main thread only) and restores the previous one
    on ``restore()``.
    """

    def __init__(self):
        self._event = threading.Event()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._event.set())

    def is_set(self) -> bool:
        return self._event.is_set()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
