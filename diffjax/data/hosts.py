"""Which part of the data a host (JAX process) reads, and seeds derived from a step.

Every batch the data layer produces is a pure function of integers (seed,
step, ...): randomness comes from ``numpy.random.default_rng`` seeded with a
list of those integers (numpy's ``SeedSequence`` hashes the list), never from
global state.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

# Distinct first entries of the seed lists, so that the streams for different
# purposes never coincide for the same (seed, step).
SHUFFLE_STREAM = 0
FLIP_STREAM = 1
TOY_BATCH_STREAM = 2
TOY_SAMPLE_STREAM = 3
READ_ORDER_STREAM = 4


def resolve_hosts(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """Fills in jax's process index and count where not given.

    Args:
      process_index: this host's index, or None for ``jax.process_index()``.
      process_count: number of hosts, or None for ``jax.process_count()``.

    Returns:
      ``(process_index, process_count)`` with ``0 <= index < count``.

    Raises:
      ValueError: the pair is inconsistent.
    """
    if process_index is None or process_count is None:
        if process_index is None:
            process_index = jax.process_index()
        if process_count is None:
            process_count = jax.process_count()
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"Need 0 <= process_index < process_count, got process_index="
            f"{process_index}, process_count={process_count}."
        )
    return int(process_index), int(process_count)


def per_host_batch_size(global_batch_size: int, process_count: int) -> int:
    """The batch size one host produces: global batch / process count.

    Raises:
      ValueError: the global batch is not positive or not divisible.
    """
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of process_count={process_count}."
        )
    return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class HostShare:
    """One host's rows of a global batch: ``[i*b, (i+1)*b)`` of B, b = B / process_count.

    Every data source of diffjax splits its global batches this way, so the
    global batch of a step does not depend on the number of hosts.

    Attributes:
      global_batch_size: B, a positive multiple of process_count.
      process_index: i, this host.
      process_count: number of hosts.

    Raises:
      ValueError: (on construction) B is not a positive multiple of process_count.
    """

    global_batch_size: int
    process_index: int
    process_count: int

    def __post_init__(self):
        per_host_batch_size(self.global_batch_size, self.process_count)

    @classmethod
    def resolve(cls, global_batch_size: int, process_index: int | None, process_count: int | None) -> "HostShare":
        """The share of this host, with jax's process index and count where not given."""
        return cls(global_batch_size, *resolve_hosts(process_index, process_count))

    @property
    def size(self) -> int:
        """b, the rows this host takes."""
        return self.global_batch_size // self.process_count

    @property
    def rows(self) -> slice:
        """This host's rows of a global batch."""
        return slice(self.process_index * self.size, (self.process_index + 1) * self.size)


def check_seed(seed: int) -> int:
    """Returns the seed as an int; seeds must be non-negative integers."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def check_step(step: int, what: str = "start_step") -> int:
    """Returns the step as an int; steps must be non-negative integers."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {step!r}.")
    return int(step)


def rng(*entropy: int) -> np.random.Generator:
    """A numpy Generator that depends only on the given non-negative ints."""
    return np.random.default_rng([int(e) for e in entropy])


def int64_seed(*entropy: int) -> int:
    """A non-negative int64 seed (for tf.data ops) derived from the given ints."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
