"""Devices, hosts and shardings: one data-parallel code path from 1 CPU to a TPU pod.

The mesh has one axis, ``data``, over every device of every host. Batches are sharded
along it (each device holds B / num_devices examples); parameters, optimiser state and
everything else are replicated. ``jax.jit`` with these shardings inserts the gradient
all-reduce itself.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "data_sharding",
    "global_batch",
    "initialize_distributed",
    "make_mesh",
    "replicated_sharding",
]

DATA_AXIS = "data"

# Environment variables by which schedulers announce a multi-host job that
# jax.distributed.initialize() can detect by itself.
_CLUSTER_HINTS = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = True,
    force: bool = False,
) -> bool:
    """Join the processes of a multi-host run with ``jax.distributed.initialize``.

    With explicit flags (e.g. two local processes on 127.0.0.1) they are used as given.
    Otherwise, with ``force`` or when the environment announces a cluster (SLURM, Open
    MPI, TPU variables), JAX's own detection is used (on a TPU pod slice the TPU runtime
    spans the hosts even without it, but initialising is recommended: pass ``force``). A
    single-process run does nothing.

    Must run before anything touches a JAX device.

    Returns:
      Whether ``jax.distributed`` was initialised.
    """
    explicit = coordinator_address is not None or num_processes is not None
    if explicit:
        if coordinator_address is None or num_processes is None or process_id is None:
            raise ValueError(
                "a multi-process run needs all of coordinator_address, num_processes and process_id"
            )
        if num_processes == 1:
            return False
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
        return True
    if force or (auto_detect and any(name in os.environ for name in _CLUSTER_HINTS)):
        jax.distributed.initialize()
        return True
    return False


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def global_batch(mesh: Mesh, local_batch: Any) -> Any:
    """Assemble each host's numpy batch into global arrays sharded along ``data``.

    Args:
      mesh: the data mesh.
      local_batch: pytree of numpy arrays [B / process_count, ...] of this host.

    Returns:
      The same pytree of global ``jax.Array`` [B, ...], batch-sharded.
    """
    sharding = data_sharding(mesh)
    num_devices = mesh.devices.size
    local_devices = len(mesh.local_devices)

    def assemble(array):
        array = np.asarray(array)
        if array.shape[0] % local_devices:
            raise ValueError(
                f"a host's batch of {array.shape[0]} does not split over its {local_devices} devices "
                f"(global batch must be divisible by {num_devices})"
            )
        return jax.make_array_from_process_local_data(sharding, array)

    return jax.tree.map(assemble, local_batch)
