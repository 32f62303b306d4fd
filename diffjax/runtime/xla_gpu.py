"""XLA:GPU compiler flags, chosen per experiment: a small allow-listed set that can matter
for a convolutional UNet on one GPU.

``config.runtime.xla_gpu_flags`` holds them in ``XLA_FLAGS`` syntax, e.g.
``"--xla_gpu_autotune_level=2 --xla_gpu_force_conv_nhwc=true"``; ``""`` (the base config)
leaves XLA's defaults. The flags allowed (every name found in jaxlib 0.10.2's XLA), with
XLA's default in brackets as its ``debug_options_flags.cc`` documented it around jaxlib 0.7
(defaults move between versions):

=============================================  ======  ==============================================
flag                                           values  what it changes
=============================================  ======  ==============================================
``xla_gpu_autotune_level``                     0-5     how hard XLA autotunes cuDNN convolution and
                                                       GEMM algorithms [4]; 0 is off (faster
                                                       compile, maybe slower kernels)
``xla_gpu_force_conv_nhwc``                    bool    cuDNN convolutions always in NHWC layout
                                                       (tensor-core friendly in bf16) [false]
``xla_gpu_enable_latency_hiding_scheduler``    bool    the latency-hiding scheduler [false]; mostly
                                                       overlaps collectives with compute
``xla_gpu_enable_triton_gemm``                 bool    matmuls by XLA's Triton emitter instead of
                                                       cuBLAS [version-dependent]
``xla_gpu_enable_command_buffer``              list    which ops are recorded into CUDA graphs (cuts
                                                       the launch overhead of many small kernels,
                                                       e.g. the 1,220-leaf Adam/EMA update):
                                                       comma list of ``COMMAND_BUFFER_TYPES``, or
                                                       ``+TYPE``/``-TYPE`` edits of XLA's default
                                                       list; empty: none [FUSION, CUBLAS,
                                                       CUBLASLT, CUSTOM_CALL, CUDNN]
=============================================  ======  ==============================================

None of them has been measured here (no GPU lent; ``docs/performance.md``, "Accelerator"):
they are switches for an accelerator run to compare, not recommendations.

``launch.py`` calls ``use_gpu_flags`` next to ``use_cpu_fusions``, before JAX starts its
backends (XLA reads its flags once). A flag the user's own ``XLA_FLAGS`` already sets wins,
flag by flag. XLA:CPU parses these flags and ignores them (checked with jaxlib 0.10.2), so a
config with GPU flags still runs on the CPU, unchanged. An unknown flag is a ``ValueError``
here (``ConfigError`` from ``validate``) rather than XLA's abort at start-up.
"""

from __future__ import annotations

import os
import re

from diffjax.runtime.xla_env import set_xla_flags

__all__ = ["BOOL_FLAGS", "COMMAND_BUFFER_TYPES", "GPU_FLAGS", "gpu_xla_flags", "parse_gpu_flags", "use_gpu_flags"]

BOOL_FLAGS = ("xla_gpu_force_conv_nhwc", "xla_gpu_enable_latency_hiding_scheduler", "xla_gpu_enable_triton_gemm")
AUTOTUNE_LEVELS = range(0, 6)
# The command types of jaxlib 0.10.2's XLA (xla_gpu_enable_command_buffer).
COMMAND_BUFFER_TYPES = ("FUSION", "CUBLAS", "CUBLASLT", "CUSTOM_CALL", "CUDNN", "COLLECTIVES", "CONDITIONAL", "WHILE",
                        "DYNAMIC_SLICE_FUSION")
GPU_FLAGS = ("xla_gpu_autotune_level", *BOOL_FLAGS, "xla_gpu_enable_command_buffer")


def _check_value(name: str, value: str) -> str:
    """``value`` of flag ``name`` in XLA's spelling; ``ValueError`` if it is not allowed."""
    if name == "xla_gpu_autotune_level":
        if not re.fullmatch(r"\d+", value) or int(value) not in AUTOTUNE_LEVELS:
            raise ValueError(f"--{name} takes an integer from 0 to 5, got {value!r}")
        return str(int(value))
    if name in BOOL_FLAGS:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"--{name} takes true or false, got {value!r}")
        return value.lower()
    entries = [e for e in value.split(",") if e]
    signed = [e[0] in "+-" for e in entries]
    if any(signed) and not all(signed):
        raise ValueError(f"--{name}: either a list of command types or +TYPE/-TYPE edits of XLA's default list, "
                         f"not both, got {value!r}")
    unknown = [e for e in entries if e.lstrip("+-") not in COMMAND_BUFFER_TYPES]
    if unknown:
        raise ValueError(f"--{name}: unknown command type(s) {unknown}; known: {list(COMMAND_BUFFER_TYPES)}")
    return ",".join(entries)


def parse_gpu_flags(flags: str) -> dict[str, str]:
    """``{name: value}`` of ``flags`` (``"--name=value ..."``), each checked.

    Raises:
      ValueError: a token that is not ``--name=value``, a flag outside ``GPU_FLAGS``, a bad
        value, or a flag given twice.
    """
    parsed: dict[str, str] = {}
    for token in flags.split():
        match = re.fullmatch(r"--([a-z0-9_]+)=(.*)", token)
        if not match:
            raise ValueError(f"{token!r} is not of the form --xla_gpu_NAME=VALUE")
        name, value = match.groups()
        if name not in GPU_FLAGS:
            raise ValueError(f"--{name} is not one of the XLA:GPU flags allowed here: {list(GPU_FLAGS)} "
                             "(set others through the XLA_FLAGS environment variable)")
        if name in parsed:
            raise ValueError(f"--{name} is given twice")
        parsed[name] = _check_value(name, value)
    return parsed


def _flags_set_in(xla_flags: str) -> set[str]:
    return set(re.findall(r"--([a-z0-9_]+)(?:=|\s|$)", xla_flags))


def gpu_xla_flags(xla_flags: str, flags: str) -> str:
    """``xla_flags`` with each flag of ``flags`` added that ``xla_flags`` does not already set
    (the user's own setting of a flag wins)."""
    already = _flags_set_in(xla_flags)
    added = [f"--{name}={value}" for name, value in parse_gpu_flags(flags).items() if name not in already]
    return " ".join([xla_flags.strip(), *added]).strip() if added else xla_flags


def use_gpu_flags(flags: str) -> None:
    """Put ``gpu_xla_flags`` into ``os.environ["XLA_FLAGS"]``.

    Call before any array is created or ``jax.devices()`` is called (importing jax is fine).

    Raises:
      ValueError: ``flags`` is not allowed (see ``parse_gpu_flags``).
      RuntimeError: JAX's backends are already initialised, so the flags would be ignored.
    """
    set_xla_flags(gpu_xla_flags(os.environ.get("XLA_FLAGS", ""), flags), "use_gpu_flags")
