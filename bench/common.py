"""Helpers shared by the benchmark workers: thread pinning, timing, memory, results.

Every worker is a fresh Python process that calls :func:`pin_threads` *before* it
imports jax or torch, so that both frameworks see the same CPUs:

* the process's CPU affinity is set to the first ``threads`` allowed CPUs (XLA's CPU
  client sizes its intra-op Eigen pool from the schedulable CPUs, and so does OpenMP);
* ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (torch's intra-op pool; the worker also calls
  ``torch.set_num_threads``) and TensorFlow's intra/inter-op thread counts are set to the
  same number.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from cases import build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def pin_threads(threads: int) -> dict[str, Any]:
    """Restrict this process to ``threads`` CPUs and tell every thread pool so.

    Must run before jax, torch or tensorflow is imported. Returns what was set.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if threads > len(allowed):
        raise ValueError(f"asked for {threads} threads but only CPUs {allowed} are allowed")
    cpus = allowed[:threads]
    os.sched_setaffinity(0, cpus)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[name] = str(threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return {"threads": threads, "cpus": cpus}


def summarize(times: list[float]) -> dict[str, Any]:
    """Median, min and every rep (seconds)."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "reps": len(times),
        "times_s": [round(t, 4) for t in times],
    }


def time_reps(run: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Wall time of ``run()`` (which must block until its work is done), after warm-up."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_mib() -> float:
    """This process's peak resident set size (MiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_result(path: str, result: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=float)


def use_case_fusions(case_json: str | None) -> str:
    """XLA:CPU's fusions as ``launch.py`` sets them for the case's experiment config
    (``config.runtime.xla_cpu_ynn_fusions``); call before JAX starts. Returns the choice."""
    if not case_json:
        return "xla_default"
    # Here, not at the top: importing diffjax imports JAX, which must come after pin_threads.
    from diffjax.runtime.xla_cpu import use_cpu_fusions

    _, config = build_config(json.loads(case_json))
    use_cpu_fusions(config.runtime.xla_cpu_ynn_fusions)
    return config.runtime.xla_cpu_ynn_fusions
