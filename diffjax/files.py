"""Files that appear whole or not at all: write to a temporary file beside the target, then rename
it over the target (``os.replace``, atomic on one file system), so a concurrent reader (another
process, another host on shared storage) never sees half a file, and a crash leaves the old file
or none."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["written_atomically"]


@contextlib.contextmanager
def written_atomically(path: str) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s contents to; when the block ends without an error it
    replaces ``path``, and on an error it is removed (``path`` untouched). Makes ``path``'s folder.

    Example: ``with written_atomically("stats.npz") as f: np.savez(f, mean=m)``.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as f:
            yield f
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
