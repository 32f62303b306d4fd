"""Checkpoints with Orbax: asynchronous saves, keep the last K, exact resume.

A checkpoint holds the whole ``TrainState`` (step, params, EMA params, optimiser state,
timestep-sampler state, root key). The data pipeline needs no state: its batches are a
pure function of (seed, step). A save interrupted by a kill leaves a temporary folder
that Orbax ignores, so a restart resumes from the last complete checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointMismatchError", "Checkpointer", "PreemptionFlag"]


class CheckpointMismatchError(ValueError):
    """The checkpoint in a workdir does not fit the state the config builds."""


class Checkpointer:
    """Saves and restores ``TrainState`` pytrees under ``workdir/checkpoints``.

    Args:
      directory: where checkpoints live (local path or a ``gs://`` URL).
      max_to_keep: keep the last K checkpoints.
      save_interval_steps: save when ``step % save_interval_steps == 0`` (or forced).
      async_save: write in a background thread while training goes on.
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
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        """The step of the last complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Start saving ``state`` as ``step`` if the interval says so (or ``force``).

        Returns:
          Whether a save was started.
        """
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore onto the shapes, dtypes and shardings of ``abstract_state``.

        Args:
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` (with shardings) or arrays.
          step: which checkpoint (default: the latest).

        Raises:
          FileNotFoundError: no checkpoint.
          CheckpointMismatchError: the stored tree or shapes differ from ``abstract_state``;
            the message names the first differing entries.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._check_fits(step, abstract_state)
        target = jax.tree.map(_as_abstract, abstract_state)
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        stored = self._manager.item_metadata(step)
        stored = getattr(stored, "tree", stored)
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

    def wait_until_finished(self) -> None:
        """Block until an asynchronous save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


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
