"""Noise schedules of discrete-time diffusion, and their respacing.

A schedule is a pytree of float32 tables indexed by the integer step ``t`` in
``[0, T)``; index 0 is the first noising step (the paper's t = 1). Every table
is computed in float64 NumPy and cast to float32 once, as in DDPM's and
improved DDPM's reference code, so the tables match them to float32 precision.

Beta schedules (float64 NumPy arrays of shape [T]) come from named
constructors, listed in ``BETA_SCHEDULES``:

* ``linear``    DDPM: 1e-4 to 0.02 for T = 1000, scaled by 1000/T for other T
                (improved DDPM's convention).
* ``cosine``    improved DDPM eq. 17: alpha_bar(t) = f(t)/f(0),
                f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), s = 0.008, betas <= 0.999.
* ``quadratic``, ``sigmoid``, ``constant``, ``jsd``: the other schedules of the
                DDPM code base (``quad``, ``const``, ``jsd``) and the common sigmoid.

Respacing (improved DDPM section 4): ``space_timesteps(T, "50")`` chooses the
kept steps with improved DDPM's rules and ``respace(schedule, kept)`` builds the
shorter chain that keeps alpha_bar on those steps, with ``timestep_map`` mapping
the new indices to the original ones (what a denoiser trained on the original
chain must be given).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "BETA_SCHEDULES",
    "Float64Betas",
    "Schedule",
    "at",
    "betas_for_alpha_bar",
    "check_batch",
    "constant_betas",
    "cosine_betas",
    "get_betas",
    "jsd_betas",
    "linear_betas",
    "make_schedule",
    "named_schedule",
    "quadratic_betas",
    "respace",
    "sigmoid_betas",
    "space_timesteps",
]


# --------------------------------------------------------------------------- betas


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear betas, scaled by 1000/T so that any T gives a similar process.

    For T = 1000 this is exactly DDPM's ``linspace(1e-4, 0.02, 1000)``; for T = 4000
    improved DDPM's 2.5e-5 to 5e-3.

    Returns:
      float64 array [T].
    """
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous alpha_bar(s), s in [0, 1], into T betas.

    beta_i = min(1 - alpha_bar((i + 1)/T) / alpha_bar(i/T), max_beta), i = 0..T-1.

    Returns:
      float64 array [T].
    """
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved DDPM's cosine schedule (eq. 17), betas clipped at ``max_beta``.

    Returns:
      float64 array [T].
    """
    return betas_for_alpha_bar(
        num_timesteps, lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2, max_beta
    )


def quadratic_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM code base's ``quad``: sqrt(beta) linear between the endpoints (scaled by 1000/T).

    Returns:
      float64 array [T].
    """
    scale = 1000.0 / num_timesteps
    root = np.linspace(math.sqrt(scale * beta_start), math.sqrt(scale * beta_end), num_timesteps)
    return root.astype(np.float64) ** 2


def sigmoid_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, steepness: float = 6.0
) -> np.ndarray:
    """Betas following a sigmoid from ``beta_start`` to ``beta_end`` (scaled by 1000/T).

    beta_i = beta_start + (beta_end - beta_start) * sigmoid(linspace(-k, k, T)[i]).

    Returns:
      float64 array [T].
    """
    scale = 1000.0 / num_timesteps
    ramp = 1.0 / (1.0 + np.exp(-np.linspace(-steepness, steepness, num_timesteps, dtype=np.float64)))
    return scale * (beta_start + (beta_end - beta_start) * ramp)


def constant_betas(num_timesteps: int, beta: float = 0.02) -> np.ndarray:
    """DDPM code base's ``const``: every beta equal (scaled by 1000/T).

    Returns:
      float64 array [T].
    """
    return np.full(num_timesteps, beta * 1000.0 / num_timesteps, dtype=np.float64)


def jsd_betas(num_timesteps: int) -> np.ndarray:
    """DDPM code base's ``jsd`` (Sohl-Dickstein et al.): 1/T, 1/(T-1), ..., 1/2, 1.

    Returns:
      float64 array [T].
    """
    return 1.0 / np.linspace(num_timesteps, 1, num_timesteps, dtype=np.float64)


BETA_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
    "constant": constant_betas,
    "jsd": jsd_betas,
}
"""Beta schedules by name. Each maps T to float64 betas [T]."""


def get_betas(name: str, num_timesteps: int) -> np.ndarray:
    """The float64 betas [T] of the schedule called ``name`` (a key of ``BETA_SCHEDULES``)."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; known schedules: {sorted(BETA_SCHEDULES)}")
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    return BETA_SCHEDULES[name](num_timesteps)


# ------------------------------------------------------------------------ schedule


@dataclasses.dataclass(frozen=True, eq=False)
class Float64Betas:
    """The float64 betas a schedule was built from, kept as static (hashable) data.

    Respacing needs them: recomputing betas from float32 alpha_bar would lose three
    digits of the small early betas. Equality and hash are by value.

    Attributes:
      values: float64 [T] betas.
      original_num_timesteps: T of the chain these were respaced from (T if not respaced).
    """

    values: np.ndarray
    original_num_timesteps: int

    def __post_init__(self):
        values = np.array(self.values, dtype=np.float64, copy=True)
        values.setflags(write=False)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "_hash", hash((values.tobytes(), self.original_num_timesteps)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Float64Betas)
            and self.original_num_timesteps == other.original_num_timesteps
            and np.array_equal(self.values, other.values)
        )


@struct.dataclass
class Schedule:
    """Float32 tables of a T-step Gaussian diffusion, each of shape [T].

    Attributes:
      betas: beta_t.
      alphas: 1 - beta_t.
      alphas_cumprod: alpha_bar_t = prod_{s<=t} alpha_s.
      alphas_cumprod_prev: alpha_bar_{t-1}, with 1 at t = 0.
      alphas_cumprod_next: alpha_bar_{t+1}, with 0 at t = T-1.
      sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, log_one_minus_alphas_cumprod,
      sqrt_recip_alphas_cumprod (1/sqrt(alpha_bar)), sqrt_recipm1_alphas_cumprod
        (sqrt(1/alpha_bar - 1)): forms used by q(x_t | x_0) and by the x_0/eps conversions.
      log_betas: log beta_t.
      posterior_variance: beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (0 at t = 0).
      posterior_log_variance_clipped: log beta~_t with the t = 0 entry (log 0) replaced by
        log beta~_1.
      posterior_mean_coef1: beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t), the x_0 coefficient.
      posterior_mean_coef2: (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t), the x_t one.
      timestep_map: int32, the step of the original process each index stands for (the
        identity unless the schedule was respaced). Denoisers are always called with it.
      source: the float64 betas (static), for respacing.
    """

    betas: jnp.ndarray
    alphas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    alphas_cumprod_next: jnp.ndarray
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    log_one_minus_alphas_cumprod: jnp.ndarray
    sqrt_recip_alphas_cumprod: jnp.ndarray
    sqrt_recipm1_alphas_cumprod: jnp.ndarray
    log_betas: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    timestep_map: jnp.ndarray
    source: Float64Betas = struct.field(pytree_node=False)

    @property
    def num_timesteps(self) -> int:
        """T, the number of steps of this (possibly respaced) chain."""
        return self.betas.shape[0]

    @property
    def original_num_timesteps(self) -> int:
        """The T of the chain this one was respaced from (its own T if not respaced)."""
        return self.source.original_num_timesteps


@np.errstate(divide="ignore")  # a schedule ending at beta = 1 (jsd) has alpha_bar = 0 there
def _tables(betas: np.ndarray) -> dict[str, np.ndarray]:
    """All float64 tables of the chain with these betas."""
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    alphas_cumprod_next = np.append(alphas_cumprod[1:], 0.0)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # log(beta~_0) = log(0): use beta~_1 there, as improved DDPM does. A one-step chain has
    # no beta~_1; then beta~_0 stands in (a T=1 chain has no posterior to speak of).
    clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else posterior_variance
    posterior_log_variance_clipped = np.log(clipped)
    return dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        alphas_cumprod_next=alphas_cumprod_next,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        log_betas=np.log(betas),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    )


def make_schedule(
    betas: np.ndarray,
    timestep_map: Iterable[int] | None = None,
    original_num_timesteps: int | None = None,
    *,
    dtype=jnp.float32,
) -> Schedule:
    """Build the schedule pytree (float32 tables unless ``dtype`` says otherwise) from float64 betas.

    Args:
      betas: [T] betas in (0, 1].
      timestep_map: [T] original step of each index (default: the identity).
      original_num_timesteps: T of the original chain (default: max(timestep_map) + 1, at
        least T).
      dtype: of the tables: float32, or float64 (under ``jax.enable_x64``) to check the
        math in float64.

    Returns:
      A ``Schedule``.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas <= 1)):
        raise ValueError(
            f"betas must lie in (0, 1]; got min {betas.min():.4g}, max {betas.max():.4g} "
            "(the linear schedule's 1000/T scaling exceeds 1 for T < 50)"
        )
    num_timesteps = betas.shape[0]
    if timestep_map is None:
        timestep_map = np.arange(num_timesteps)
    timestep_map = np.asarray(list(timestep_map), dtype=np.int64)
    if timestep_map.shape != (num_timesteps,):
        raise ValueError(f"timestep_map must have shape ({num_timesteps},), got {timestep_map.shape}")
    if original_num_timesteps is None:
        original_num_timesteps = int(max(timestep_map.max() + 1, num_timesteps))
    if np.any(timestep_map < 0) or np.any(timestep_map >= original_num_timesteps):
        raise ValueError(f"timestep_map must lie in [0, {original_num_timesteps})")
    tables = {name: jnp.asarray(value, dtype=dtype) for name, value in _tables(betas).items()}
    return Schedule(
        **tables,
        timestep_map=jnp.asarray(timestep_map, dtype=jnp.int32),
        source=Float64Betas(betas, original_num_timesteps),
    )


def named_schedule(name: str, num_timesteps: int) -> Schedule:
    """The schedule of the named beta schedule, e.g. ``named_schedule("cosine", 4000)``."""
    return make_schedule(get_betas(name, num_timesteps))


# ------------------------------------------------------------- tables at step t


def at(table: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """Gather ``table[t]`` and shape it [B, 1, ..., 1] to broadcast over a rank-``ndim`` batch.

    Args:
      table: [T] float32.
      t: [B] int.
      ndim: rank of the batch the result multiplies (e.g. 4 for NHWC images).

    Returns:
      [B] + [1] * (ndim - 1).
    """
    chex.assert_rank(t, 1)
    return table[t].reshape(t.shape + (1,) * (ndim - 1))


def check_batch(x: jax.Array, t: jax.Array) -> None:
    """Raise unless ``x`` is a batch [B, ...] and ``t`` its steps [B]."""
    chex.assert_rank(t, 1)
    if x.ndim < 2 or x.shape[0] != t.shape[0]:
        raise ValueError(f"x must be a batch [B, ...] matching t [B]; got x {x.shape} and t {t.shape}")


# ----------------------------------------------------------------------- respacing


def space_timesteps(num_timesteps: int, section_counts: str | int | Iterable[int]) -> list[int]:
    """The original steps to keep, by improved DDPM's rules (``respace.space_timesteps``).

    Args:
      num_timesteps: T of the original chain.
      section_counts: ``"ddimN"`` (the smallest integer stride giving N steps from 0:
        ``range(0, T, stride)``), or section counts ``"250"`` / ``"10,15,20"`` / an int /
        a list of ints: T is cut into that many nearly equal sections (the first ``T %
        len`` one longer) and each keeps its count of evenly spaced steps, both ends
        included, rounding half to even. ``""`` keeps every step.

    Returns:
      The kept original steps, sorted ascending.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec == "":
            return list(range(num_timesteps))
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(f"bad respacing {section_counts!r}: expected 'ddimN' with an integer N") from None
            if desired == num_timesteps:
                return list(range(num_timesteps))
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {desired} steps with an integer stride from T={num_timesteps}")
        try:
            counts = [int(part) for part in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"bad respacing {section_counts!r}: expected 'N', 'N1,N2,...' or 'ddimN'"
            ) from None
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"section counts must be positive, got {counts}")

    size_per = num_timesteps // len(counts)
    extra = num_timesteps % len(counts)
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(k * stride) for k in range(count)]
        start += size
    return sorted(set(kept))


def respace(schedule: Schedule, timesteps: str | int | Iterable[int]) -> tuple[Schedule, np.ndarray]:
    """The chain over a subset of the steps of ``schedule`` (improved DDPM's SpacedDiffusion).

    The new betas are 1 - alpha_bar_i / alpha_bar_prev over the kept steps i (the first
    "previous" being 1), computed in float64, so alpha_bar is kept exactly on the kept
    steps while the posterior variances and the learned-range bounds are those of the
    shorter chain.

    Args:
      schedule: the chain to respace. Respacing a respaced chain composes the maps.
      timesteps: kept steps of ``schedule`` (indices into it), or a respacing string for
        ``space_timesteps``.

    Returns:
      (respaced schedule, timestep_map): ``timestep_map`` [K] int gives, for each new index,
      the step of the original process; it is also ``schedule.timestep_map`` of the result.
    """
    num_timesteps = schedule.num_timesteps
    if isinstance(timesteps, (str, int)):
        kept = space_timesteps(num_timesteps, timesteps)
    else:
        kept = sorted(set(int(t) for t in timesteps))
    if not kept or kept[0] < 0 or kept[-1] >= num_timesteps:
        raise ValueError(f"kept timesteps must be a non-empty subset of [0, {num_timesteps})")
    alphas_cumprod = np.cumprod(1.0 - schedule.source.values)
    kept_alphas_cumprod = alphas_cumprod[kept]
    previous = np.append(1.0, kept_alphas_cumprod[:-1])
    new_betas = 1.0 - kept_alphas_cumprod / previous
    timestep_map = np.asarray(schedule.timestep_map)[kept].astype(np.int64)
    respaced = make_schedule(new_betas, timestep_map, schedule.original_num_timesteps)
    return respaced, timestep_map
