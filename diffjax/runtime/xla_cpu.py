"""XLA:CPU's library fusions, chosen per experiment from measurements.

From jaxlib 0.10, XLA:CPU hands dots, convolutions and reductions to YNNPACK by default.
On the x86 CPUs measured here (``bench/xla_cpu_experiments.py``, ``docs/performance.md``)
YNNPACK's convolution *gradients* are about 2x slower than XLA's own convolutions, while
its dots and reductions help the larger models. Train step, seconds (2 cores):

====================================  =======  ==========  ====  ==============
YNNPACK fusions                       default  dot,reduce  none  PyTorch (ref.)
====================================  =======  ==========  ====  ==============
DDPM CIFAR-10 UNet, batch 8, 32x32x3  4.78     2.97        4.12  3.36
digits UNet, batch 128, 8x8x1         0.40     0.28        0.23  0.25
====================================  =======  ==========  ====  ==============

so the base config asks for ``dot,reduce`` and the digits experiments for none
(``config.runtime.xla_cpu_ynn_fusions = ""``). ``launch.py`` calls ``use_cpu_fusions``
before JAX starts its backends (XLA reads its flags once). An ``XLA_FLAGS`` that already
sets the option wins. The option only affects the CPU backend; results agree with XLA's
default to float32 rounding.
"""

from __future__ import annotations

import os
from importlib.metadata import version

from diffjax.runtime.xla_env import set_xla_flags

__all__ = ["FUSION_TYPES", "XLA_DEFAULT", "YNN_FUSION_OPTION", "check_fusions", "cpu_xla_flags", "use_cpu_fusions"]

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
FUSION_TYPES = ("dot", "individual_dot", "individual_convolution", "reduce", "eltwise")
XLA_DEFAULT = "xla_default"
# The oldest jaxlib measured; older ones may not know the option (an unknown XLA flag aborts).
_MIN_JAXLIB = (0, 10)


def check_fusions(fusions: str) -> None:
    """Raise ``ValueError`` unless ``fusions`` is ``xla_default`` or a comma list of ``FUSION_TYPES``."""
    if fusions == XLA_DEFAULT:
        return
    unknown = [f for f in fusions.split(",") if f and f not in FUSION_TYPES]
    if unknown:
        raise ValueError(f"unknown fusion type(s) {unknown}; use {XLA_DEFAULT!r} or a comma list of {list(FUSION_TYPES)}")


def _jaxlib_version() -> tuple[int, ...]:
    parts = []
    for piece in version("jaxlib").split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def cpu_xla_flags(xla_flags: str, fusions: str, jaxlib_version: tuple[int, ...] | None = None) -> str:
    """``xla_flags`` with ``--xla_cpu_experimental_ynn_fusion_type=<fusions>`` added.

    Unchanged when ``fusions`` is ``xla_default``, when ``xla_flags`` already sets the
    option (the user's choice wins), or when jaxlib is older than the versions measured.
    """
    check_fusions(fusions)
    if fusions == XLA_DEFAULT or YNN_FUSION_OPTION in xla_flags:
        return xla_flags
    if (jaxlib_version or _jaxlib_version()) < _MIN_JAXLIB:
        return xla_flags
    return f"{xla_flags} --{YNN_FUSION_OPTION}={fusions}".strip()


def use_cpu_fusions(fusions: str) -> None:
    """Put ``cpu_xla_flags`` into ``os.environ["XLA_FLAGS"]``.

    Call before any array is created or ``jax.devices()`` is called (importing jax is fine).

    Raises:
      RuntimeError: JAX's backends are already initialised, so the setting would be ignored.
    """
    set_xla_flags(cpu_xla_flags(os.environ.get("XLA_FLAGS", ""), fusions), "use_cpu_fusions")
