"""Child Python processes of the tests (launch.py, scripts, workers): the repo on their path and
the test session's persistent compilation cache.

``tests/conftest.py`` makes one fresh cache folder per test session (shared by the xdist
workers, deleted at the end, so no entry outlives the session) and names it in
``$DIFFJAX_TEST_COMPILATION_CACHE``. Every child started through :func:`subprocess_env` caches
its XLA compilations there, however short (JAX's thresholds set to 0: on the CPU most of the
tests' compilations take under the 1 s that launch.py's own cache asks for), so the second
launch of an experiment (``--mode=eval`` after training, a resume, the other worker's run of
the same model) loads its executables instead of compiling them. The tests' own process does
not use it.

XLA compiles at its lowest optimisation level in the tests' processes and their children
(``FAST_COMPILE_FLAGS``, added by ``tests/conftest.py`` and :func:`subprocess_env`): the tests
check values at tolerances and files, not speed, and backend compilation is most of a test's
time (``--xla_backend_optimization_level=0`` alone: 127 -> 97 s of CPU on
tests/diffusion/test_continuous.py and tests/evaluation/test_elbo.py). The bitwise golden test
runs its child at the flags it was recorded at (``fast_compile=False``)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE_ENV = "DIFFJAX_TEST_COMPILATION_CACHE"
USER_XLA_FLAGS_ENV = "DIFFJAX_TEST_USER_XLA_FLAGS"
"""XLA_FLAGS as the session found them: tests/conftest.py sets XLA:CPU's fusions in the tests'
own process, and a child should start from the user's environment, not from that (a launch.py
that touched JAX before setting its own flags passed in the tests and failed outside them)."""
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


DEFAULT_OPTIMISATION = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}
"""``compiler_options`` that undo ``FAST_COMPILE_FLAGS`` for one compilation, for a test of a
property that XLA keeps only when it optimises (``tests/diffusion/test_vdm.py``'s exact ends)."""


def with_fast_compile(xla_flags: str) -> str:
    """``xla_flags`` with each of ``FAST_COMPILE_FLAGS`` that it does not set itself (the user's wins)."""
    added = [flag for flag in FAST_COMPILE_FLAGS if flag.split("=")[0] + "=" not in xla_flags]
    return " ".join([xla_flags, *added]).strip()


def compilation_cache_env() -> dict[str, str]:
    """JAX's environment settings of the session's persistent cache ({} outside a test session)."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": folder, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def subprocess_env(env: dict[str, str] | None = None, fast_compile: bool = True) -> dict[str, str]:
    """``os.environ`` for a child Python: XLA_FLAGS as the user set them, the session's
    compilation cache, the repo first on PYTHONPATH, then ``env`` (which wins over all); then
    ``FAST_COMPILE_FLAGS`` added to XLA_FLAGS unless ``fast_compile`` is False."""
    full = dict(os.environ, **compilation_cache_env())
    full["XLA_FLAGS"] = full.pop(USER_XLA_FLAGS_ENV, full.get("XLA_FLAGS", ""))
    full.update(env or {})
    if fast_compile:
        full["XLA_FLAGS"] = with_fast_compile(full["XLA_FLAGS"])
    if not full["XLA_FLAGS"]:
        del full["XLA_FLAGS"]
    full["PYTHONPATH"] = REPO + os.pathsep + full.get("PYTHONPATH", "")
    return full


def python_command(args) -> list[str]:
    """``python args...``; a launch.py command without ``--compilation_cache`` gets
    ``--compilation_cache=`` (launch.py's own cache off: it would set its folder and its 1 s
    threshold over the session's, which the environment sets)."""
    args = [str(a) for a in args]
    if args and args[0] == "launch.py" and not any(a.startswith("--compilation_cache") for a in args):
        args.append("--compilation_cache=")
    return [sys.executable, *args]


def run_python(args, env=None, timeout=240, fast_compile=True, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python args...`` from the repo root (output captured as text); return the CompletedProcess."""
    return subprocess.run(python_command(args), cwd=REPO, env=subprocess_env(env, fast_compile), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def popen_python(args, env=None, fast_compile=True, **kwargs) -> subprocess.Popen:
    """Start ``python args...`` from the repo root, as :func:`run_python` runs it."""
    return subprocess.Popen(python_command(args), cwd=REPO, env=subprocess_env(env, fast_compile), **kwargs)
