"""Setting ``XLA_FLAGS`` before JAX starts a backend (XLA reads its flags once, when the first backend
starts): the one place that checks it is not too late, for ``xla_cpu`` and ``xla_gpu``."""

from __future__ import annotations

import os

__all__ = ["set_xla_flags"]


def set_xla_flags(flags: str, caller: str) -> None:
    """Make ``os.environ["XLA_FLAGS"]`` equal ``flags`` (nothing to do if it already is).

    Args:
      flags: the whole new value.
      caller: the public function asking, named in the error.

    Raises:
      RuntimeError: JAX's backends are already initialised, so the flags would be ignored.
    """
    if flags == os.environ.get("XLA_FLAGS", ""):
        return
    try:
        from jax._src import xla_bridge  # private: guarded, a future jax may move it

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # a jax without the helper: cannot tell, go ahead
        started = False
    if started:
        raise RuntimeError(
            f"{caller}() was called after JAX initialised its backends; call it before the first jax.devices() or array"
        )
    os.environ["XLA_FLAGS"] = flags
