"""Time grids as data: K + 1 float32 times from t_max down to t_min, for a solver's K steps.

A grid is an array, not a setting: a solver scans over it, so its values can change between
calls without recompiling (only K, its length, is static). Each continuous grid takes a
noise process (``processes``), the step count K (a Python int) and optional ends; by
default the ends are the process's ``t_max`` (where sampling starts) and ``t_min`` (where
its last step lands): 1e-3 for the VP processes (sigma = 0 and lambda = +inf at t = 0;
score_sde's and DPM-Solver's eps), 0 for ``EDM`` (sigma_min = 0.002), 1/T for a discrete
chain (step 0, the least noisy step its network was trained on). A solver that wants a
clean x_0 at the end takes a last denoising step from t_min (EDM's sigma_{N} = 0); that is
the solver's choice, not a point of the grid. The first and last values are the ends exactly.

* ``uniform_t``: linear in t (DDIM's "uniform" skip, DPM-Solver's ``time_uniform``).
* ``uniform_log_snr``: linear in lambda (DPM-Solver's ``logSNR``, its default for few steps).
* ``karras``: EDM's eq. 5 in the process's ``edm_sigma``, rho = 7:
  sigma_i = (sigma_max^(1/rho) + i/K (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
* ``quadratic``: linear in sqrt(t) (DDIM's "quad" skip, DPM-Solver's ``time_quadratic``).
* ``discrete_grid``: integer steps of a T-step chain at their times (n + 1)/T, strided by
  improved DDPM's or DDIM's rules, for a ``processes.discrete_process`` of that chain; all
  start at the top step but the ``*_truncated`` ones (DDIM's exact spacings, see
  ``DISCRETE_RULES``).

References: Song et al. 2021 (DDIM) appendix C.2; Lu et al. 2022 (DPM-Solver) section 3.3
and appendix; Karras et al. 2022 (EDM) eq. 5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.processes import NoiseProcess
from diffjax.diffusion.schedules import space_timesteps

__all__ = ["DISCRETE_RULES", "GRIDS", "discrete_grid", "karras", "quadratic", "uniform_log_snr", "uniform_t"]


def _ends(process: NoiseProcess, num_steps: int, t_max, t_min) -> tuple[float, float]:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    return (process.t_max if t_max is None else t_max), (process.t_min if t_min is None else t_min)


def _pinned(grid: jax.Array, t_max, t_min) -> jax.Array:
    """The grid as float32 with its first and last values set to the ends exactly."""
    return grid.astype(jnp.float32).at[0].set(t_max).at[-1].set(t_min)


def _fractions(num_steps: int) -> jax.Array:
    """i / K for i = 0..K."""
    return jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps


def uniform_t(process: NoiseProcess, num_steps: int, t_max=None, t_min=None) -> jax.Array:
    """t_i = t_max + i/K (t_min - t_max), i = 0..K. Returns float32 [K + 1], decreasing."""
    t_max, t_min = _ends(process, num_steps, t_max, t_min)
    return _pinned(t_max + _fractions(num_steps) * (t_min - t_max), t_max, t_min)


def uniform_log_snr(process: NoiseProcess, num_steps: int, t_max=None, t_min=None) -> jax.Array:
    """Times whose log-SNRs are evenly spaced from lambda(t_max) to lambda(t_min).

    Returns float32 [K + 1], decreasing in t (increasing in lambda).
    """
    t_max, t_min = _ends(process, num_steps, t_max, t_min)
    lam_start, lam_end = process.log_snr(jnp.float32(t_max)), process.log_snr(jnp.float32(t_min))
    lam = lam_start + _fractions(num_steps) * (lam_end - lam_start)
    return _pinned(process.t_from_log_snr(lam), t_max, t_min)


def karras(process: NoiseProcess, num_steps: int, t_max=None, t_min=None, rho: float = 7.0) -> jax.Array:
    """EDM's grid (Karras et al. 2022, eq. 5): rho-th-root spacing in sigma = ``edm_sigma``.

    sigma_max and sigma_min are the process's sigma at t_max and t_min (for ``EDM``: 80 and
    0.002). EDM's appended sigma_N = 0 is not part of the grid (see the module docstring).

    Returns float32 [K + 1], decreasing.
    """
    t_max, t_min = _ends(process, num_steps, t_max, t_min)
    root_max = process.edm_sigma(jnp.float32(t_max)) ** (1.0 / rho)
    root_min = process.edm_sigma(jnp.float32(t_min)) ** (1.0 / rho)
    sigmas = (root_max + _fractions(num_steps) * (root_min - root_max)) ** rho
    return _pinned(process.t_from_edm_sigma(sigmas), t_max, t_min)


def quadratic(process: NoiseProcess, num_steps: int, t_max=None, t_min=None) -> jax.Array:
    """t_i = (sqrt(t_max) + i/K (sqrt(t_min) - sqrt(t_max)))^2: denser near t_min.

    Returns float32 [K + 1], decreasing.
    """
    t_max, t_min = _ends(process, num_steps, t_max, t_min)
    root_max, root_min = float(np.sqrt(t_max)), float(np.sqrt(t_min))
    return _pinned((root_max + _fractions(num_steps) * (root_min - root_max)) ** 2, t_max, t_min)


GRIDS = {"uniform_t": uniform_t, "uniform_log_snr": uniform_log_snr, "karras": karras, "quadratic": quadratic}
"""The continuous grids by name; each is ``grid(process, num_steps, t_max=None, t_min=None)``."""


def _even_steps(num_timesteps: int, num_steps: int) -> list[int]:
    return space_timesteps(num_timesteps, num_steps + 1)


def _ddim_steps(num_timesteps: int, num_steps: int) -> list[int]:
    stride, remainder = divmod(num_timesteps - 1, num_steps)
    return [i * stride + max(0, i - (num_steps - remainder)) for i in range(num_steps + 1)]


def _ddim_quadratic_steps(num_timesteps: int, num_steps: int) -> list[int]:
    steps = (np.linspace(0.0, np.sqrt(num_timesteps - 1.0), num_steps + 1) ** 2).astype(np.int64)
    steps = np.maximum(steps, np.arange(num_steps + 1))
    steps[-1] = num_timesteps - 1
    return steps.tolist()


def _ddim_truncated_steps(num_timesteps: int, num_steps: int) -> list[int]:
    stride = (num_timesteps - 1) // num_steps
    return [i * stride for i in range(num_steps + 1)]


def _ddim_quadratic_truncated_steps(num_timesteps: int, num_steps: int) -> list[int]:
    return (np.linspace(0.0, np.sqrt(0.8 * num_timesteps), num_steps + 1) ** 2).astype(np.int64).tolist()


DISCRETE_RULES = {
    "even": _even_steps, "ddim": _ddim_steps, "ddim_quadratic": _ddim_quadratic_steps,
    "ddim_truncated": _ddim_truncated_steps, "ddim_quadratic_truncated": _ddim_quadratic_truncated_steps,
}
"""How ``discrete_grid`` picks K + 1 distinct integer steps of a T-step chain (each list includes 0).

The first three start at the top step T - 1, where x_T ~ N(0, I) is the chain's state:

* ``even``: improved DDPM's ``space_timesteps(T, K + 1)``, K + 1 evenly spaced steps with
  both ends 0 and T - 1 (rounded half to even).
* ``ddim``: DDIM's "uniform" skip from step 0 with the integer stride c = (T - 1) // K, the
  remainder r = (T - 1) mod K spread over the top r gaps (c + 1 each): 0, c, 2c, ..., up to
  T - 1 (DDIM's own steps when K divides T - 1).
* ``ddim_quadratic``: DDIM's "quad" skip over the whole chain, n_i = floor((i/K)^2 (T - 1))
  (floor(linspace(0, sqrt(T - 1), K + 1)^2), the last one T - 1), raised to at least i so
  that the steps near 0 stay one apart (they would merge for K > sqrt(T - 1)).

The truncated ones are DDIM's exact spacings (Song et al. 2021, appendix C.2, and its code),
for reproducing DDIM's tables. **They start below the top step**, and the sampler still
takes x_T ~ N(0, I) as the state at their first step (as DDIM's code does), an error
that does not fall with K:

* ``ddim_truncated``: 0, c, ..., K c with c = (T - 1) // K, so its top K c is below T - 1
  when K does not divide T - 1 (DDIM's code strides by T // K from 0, which gives K points;
  one more point needs the stride that still fits the chain).
* ``ddim_quadratic_truncated``: floor(linspace(0, sqrt(0.8 T), K + 1)^2): it tops out at
  0.8 T (step 800 of 1000). For K > about sqrt(0.8 T) its first steps coincide; such a K is
  refused (``discrete_grid`` names the largest K that is not).
"""


def _distinct_steps(num_timesteps: int, num_steps: int, rule: str) -> list[int]:
    """The rule's K + 1 steps, increasing; ValueError naming the largest K <= num_steps whose steps
    are distinct when two of them coincide (a merged step would make fewer model calls than K
    says)."""
    steps = DISCRETE_RULES[rule](num_timesteps, num_steps)
    if len(set(steps)) == num_steps + 1:
        return steps
    largest = next(k for k in range(num_steps - 1, 0, -1) if len(set(DISCRETE_RULES[rule](num_timesteps, k))) == k + 1)
    raise ValueError(f"the discrete grid rule {rule!r} at T = {num_timesteps} has coinciding steps for K = {num_steps}; "
                     f"the largest K whose {rule!r} steps are distinct is {largest}")


def discrete_grid(num_timesteps: int, num_steps: int, rule: str = "even") -> jax.Array:
    """The times (n + 1)/T of K + 1 integer steps n of a T-step chain, from the largest to step 0.

    Step 0 sits at t = 1/T, the end of the chain's continuous view
    (``processes.discrete_process``), so the last step lands on the least noisy step the
    network was trained with and the network is only ever called at trained integer steps
    (``DiscreteVP.model_step`` of these times gives them back).

    Args:
      num_timesteps: T of the chain the network was trained on (``original_num_timesteps``).
      num_steps: K.
      rule: a key of ``DISCRETE_RULES``.

    Returns:
      float32 [K + 1], decreasing, ending at 1/T (starting at 1, step T - 1, but for the
      ``*_truncated`` rules).

    Raises:
      ValueError: for a K at which the rule's steps coincide (``ddim_quadratic_truncated`` for
        K > about sqrt(0.8 T)); the message names the largest K at which they do not.
    """
    if rule not in DISCRETE_RULES:
        raise ValueError(f"unknown discrete grid rule {rule!r}; known rules: {sorted(DISCRETE_RULES)}")
    if not isinstance(num_steps, int) or not 1 <= num_steps < num_timesteps:
        raise ValueError(f"num_steps must be an int in [1, {num_timesteps}), got {num_steps!r}")
    steps = np.asarray(_distinct_steps(num_timesteps, num_steps, rule), dtype=np.float64)
    return jnp.asarray((steps[::-1] + 1.0) / num_timesteps, dtype=jnp.float32)
