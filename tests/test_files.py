"""``diffjax.files.written_atomically``: the target appears whole or not at all."""

import os

import pytest

from diffjax.files import written_atomically


def test_the_file_replaces_the_target_only_when_the_block_ends(tmp_path):
    target = tmp_path / "new" / "stats.bin"  # its folder is made
    with written_atomically(str(target)) as f:
        f.write(b"first")
        assert not target.exists()  # nothing at the target while it is written
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with written_atomically(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"first"  # the old file, untouched
    assert os.listdir(target.parent) == ["stats.bin"]  # no partial file left
