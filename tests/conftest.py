"""Test session setup: XLA:CPU's fusions as the digits experiments set them (none: the
tests' models are small) and its lowest optimisation level (``FAST_COMPILE_FLAGS``:
compiling is most of the tests' time), before JAX starts a backend (in the tests' own
processes: their children start from the user's XLA_FLAGS, with the fast-compile flags
added by ``tests.support.subprocesses``); one persistent compilation cache for the session's
child processes; and the slow end-to-end tests first.

The cache (``tests.support.subprocesses``): a fresh temporary folder made by the session's
first process (the xdist controller, or the only process), named in
``$DIFFJAX_TEST_COMPILATION_CACHE`` so that the xdist workers it starts, and the launch.py
runs they start, share it, and deleted when that process ends: no entry of one session is
read by another. A folder already named there is used and kept (to keep a warm cache over
several inner-loop runs, at your own risk of stale entries).

Under ``pytest -n 2 --dist loadscope`` (the README's command with pyproject's options) each
module (each class, for tests in classes) runs on one worker, in the order they first
appear. A module holding a long end-to-end test (marked ``slow``) that happened to be
scheduled last would run alone while the other worker sits idle; moving the slow tests to
the front (a stable sort, so every other order is kept) lets the many short tests fill the
end of the run instead."""

import os
import shutil
import tempfile

import pytest

from diffjax.runtime.xla_cpu import use_cpu_fusions
from tests.support.subprocesses import CACHE_ENV, USER_XLA_FLAGS_ENV, with_fast_compile

os.environ.setdefault(USER_XLA_FLAGS_ENV, os.environ.get("XLA_FLAGS", ""))  # for the child processes
os.environ["XLA_FLAGS"] = with_fast_compile(os.environ[USER_XLA_FLAGS_ENV])
use_cpu_fusions("")

_OWNED = pytest.StashKey[str]()  # the cache folder this process made (and deletes)


def pytest_configure(config):
    if os.environ.get(CACHE_ENV):
        return  # an xdist worker (the controller made it), or a folder the user chose
    folder = tempfile.mkdtemp(prefix="diffjax-test-xla-cache-")
    os.environ[CACHE_ENV] = folder
    config.stash[_OWNED] = folder


def pytest_unconfigure(config):
    folder = config.stash.get(_OWNED, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        del os.environ[CACHE_ENV]


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
