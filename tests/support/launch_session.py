"""Several launch.py runs in one Python process, one after another: the experiment matrix's cells.

A cell of ``tests/e2e/test_experiment_matrix.py`` is one launch.py command line. Started as its
own process, each pays Python's and JAX's start (about 3 s of CPU) before the command does
anything, and TensorFlow's import (3-5 s more) wherever it reads records; the cells of one
experiment (train, eval, sample, sample with a solver) run here instead, in one child process,
each through launch.py's own flag parsing and ``main`` exactly as ``python launch.py ...`` runs
them: absl's flags are reset to their defaults before each command is parsed, so no value of one
cell reaches the next. What a separate process adds (its exit status from ``sys.exit``, the
command line itself) is checked by ``tests/e2e/test_launch.py`` and ``test_failed_launch.py``.

Protocol (one JSON object per line): the parent writes ``{"argv": [...]}`` (the arguments after
``launch.py``) to this process's stdin; it answers on stdout with ``{"returncode": int, "stdout":
str, "stderr": str}``: the command's exit status (0, or ``sys.exit``'s status: 1 for a user error,
2 for a command-line one; an uncaught exception is 1 with its traceback in ``stderr``) and what it
printed. An empty line or the end of stdin ends the process. Started by :class:`LaunchSession`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import traceback

from tests.support.subprocesses import popen_python, python_command


def _exit_status(code) -> int:
    """The exit status of ``sys.exit(code)``, as the interpreter computes it."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _reset_flags(flag_values) -> None:
    """Every flag back to its default and unparsed, and the ``--config.*`` override flags that the
    last command's config defined removed: nothing of one command reaches the next."""
    for name in [name for name in flag_values if name.startswith("config.")]:
        delattr(flag_values, name)
    flag_values.unparse_flags()


def run_command(launch, argv: list[str]) -> dict:
    """One launch.py command (``argv``: the arguments after ``launch.py``) in this process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    _reset_flags(launch.FLAGS)
    sys.argv = ["launch.py", *argv]  # ml_collections reads the --config.* overrides from sys.argv
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            leftover = launch.parse_flags(sys.argv)
            launch.main(leftover)
            status = 0
        except SystemExit as error:
            status = _exit_status(error.code)
        except BaseException:  # noqa: BLE001 -- reported to the parent as the process would print it
            traceback.print_exc()
            status = 1
    return {"returncode": status, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def serve(commands) -> None:
    """Answer each JSON command line of ``commands`` on this process's stdout until an empty line.

    The answers get stdout's file descriptor to themselves: whatever else writes to it (Python's
    ``sys.stdout`` outside a command, a C library's printf) goes to stderr instead."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import launch  # after the parent's environment is in place (XLA_FLAGS, the compilation cache)

    for line in commands:
        if not line.strip():
            return
        reply = run_command(launch, json.loads(line)["argv"])
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


class LaunchSession:
    """The parent's end: a child process that runs launch.py commands (``run``) one after another.

    Use as a context manager (the child ends when the block does)."""

    def __init__(self, env: dict[str, str] | None = None):
        self._child = popen_python(["-m", "tests.support.launch_session"], env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``python launch.py *argv``, run in the session: its exit status and what it printed
        (launch.py's own compilation cache off, as ``tests.support.subprocesses`` starts it). A
        command still running after ``timeout`` seconds ends the session."""
        argv = python_command(["launch.py", *argv])[2:]
        self._child.stdin.write(json.dumps({"argv": argv}) + "\n")
        self._child.stdin.flush()
        watchdog = threading.Timer(timeout, self._child.kill)
        watchdog.start()
        try:
            line = self._child.stdout.readline()
        finally:
            watchdog.cancel()
        if not line:
            raise RuntimeError(f"the launch session ended (status {self._child.wait()}) during launch.py {argv}")
        reply = json.loads(line)
        return subprocess.CompletedProcess(["launch.py", *argv], reply["returncode"], reply["stdout"], reply["stderr"])

    def __enter__(self) -> LaunchSession:
        return self

    def __exit__(self, *exc) -> None:
        self._child.stdin.close()
        try:
            self._child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()


if __name__ == "__main__":
    serve(sys.stdin)
