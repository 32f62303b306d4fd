"""The solvers as records: ``Solver`` (a step function with its NFE per step, whether it draws
noise, and the keyword options it takes with their defaults) and ``SOLVERS``, the registry by
name that samplers, configs and records read.

A solver's options are of two kinds, kept apart because they are compiled differently:

* ``options``: **traced** float options (eta, S_churn, ..., snr). A compiled sampler takes
  them as arguments: changing one does not recompile.
* ``static_options``: **static** (compile-time) options (``lower_order_final``, a bool): they
  select code paths, so they are bound before compiling and changing one recompiles.

``Solver.complete`` validates a user's options for one solver (an unknown name is a
``ValueError`` naming it) and fills in the defaults; ``Solver.bind`` binds them to the step.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from diffjax.diffusion.solvers.ode import ddim_step, dpmpp_2m_step, dpmpp_3m_step, euler_step, heun_step
from diffjax.diffusion.solvers.sde import (
    ddpm_ancestral_step,
    dpmpp_2m_sde_step,
    edm_stochastic_step,
    euler_ancestral_step,
    pc_step,
)
from diffjax.diffusion.solvers.unipc import unipc_step

__all__ = ["SOLVERS", "Solver", "option_defaults"]

_LOWER_ORDER_FINAL = {"lower_order_final": True}


@dataclasses.dataclass(frozen=True)
class Solver:
    """One solver of ``SOLVERS``.

    Attributes:
      name: its key in ``SOLVERS`` (``config.sample.solver``).
      step: the step function ``step(process, denoise_x0, x, t_cur, t_next, carry, **options)
        -> (x_next, carry)`` (package docstring), its fixed settings already bound (UniPC's order).
      nfe_per_step: denoiser calls per step (``heun``, ``edm_stochastic``: 1 on a step that lands
        on sigma~ = 0; ``pc``: 1 + corrector_steps, 2 at its default of one corrector step).
      stochastic: whether a step draws noise (``solve`` gives it its ``key``).
      options: the traced float keyword options the step takes, with their defaults.
      static_options: the static keyword options the step takes, with their defaults
        (``lower_order_final``: the multistep solvers' lower-order final steps).
    """

    name: str
    step: Callable
    nfe_per_step: int
    stochastic: bool
    options: Mapping[str, float] = dataclasses.field(default_factory=dict)
    static_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "static_options", MappingProxyType(dict(self.static_options)))
        parameters = inspect.signature(self.step).parameters
        missing = [k for k in (*self.options, *self.static_options) if k not in parameters]
        if missing:
            raise ValueError(f"solver {self.name!r}: its step takes no options {missing}")

    def complete(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` (a subset of this solver's traced and static options) with the defaults of
        the others: the traced ones as floats, the static ones as bools. Raises ``ValueError``
        naming any option this solver does not take."""
        known = {**self.options, **self.static_options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"the solver {self.name!r} takes no options {unknown}; its options: {sorted(known)}")
        out = {}
        for key, default in known.items():
            value = options.get(key, default)
            if key in self.static_options:
                if not isinstance(value, (bool, int, float)) or value not in (0, 1):
                    raise ValueError(f"the solver {self.name!r}'s static option {key} is a bool, got {value!r}")
                out[key] = bool(value)
            else:
                out[key] = value if not isinstance(value, (int, float)) else float(value)
        return out

    def traced(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The traced options of ``self.complete(options)``."""
        return {k: v for k, v in self.complete(options).items() if k in self.options}

    def static(self, options: Mapping[str, Any]) -> dict[str, bool]:
        """The static options of ``self.complete(options)``."""
        return {k: v for k, v in self.complete(options).items() if k in self.static_options}

    def bind(self, options: Mapping[str, Any] = MappingProxyType({})) -> Callable:
        """The step with ``self.complete(options)`` bound (traced values may be tracers)."""
        return functools.partial(self.step, **self.complete(options))


def _solvers(*records: Solver) -> dict[str, Solver]:
    return {record.name: record for record in records}


SOLVERS = _solvers(
    Solver("euler", euler_step, 1, False),
    Solver("ddim", ddim_step, 1, False),
    Solver("heun", heun_step, 2, False),
    Solver("dpmpp_2m", dpmpp_2m_step, 1, False, static_options=_LOWER_ORDER_FINAL),
    Solver("dpmpp_3m", dpmpp_3m_step, 1, False, static_options=_LOWER_ORDER_FINAL),
    Solver("unipc_2", functools.partial(unipc_step, order=2), 1, False, static_options=_LOWER_ORDER_FINAL),
    Solver("unipc_3", functools.partial(unipc_step, order=3), 1, False, static_options=_LOWER_ORDER_FINAL),
    Solver("edm_stochastic", edm_stochastic_step, 2, True,
           options=dict(s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0)),
    Solver("euler_ancestral", euler_ancestral_step, 1, True, options=dict(eta=1.0, s_noise=1.0)),
    Solver("dpmpp_2m_sde", dpmpp_2m_sde_step, 1, True, options=dict(eta=1.0, s_noise=1.0),
           static_options=_LOWER_ORDER_FINAL),
    Solver("ddpm", ddpm_ancestral_step, 1, True, options=dict(s_noise=1.0)),
    Solver("pc", pc_step, 2, True, options=dict(snr=0.16, s_noise=1.0)),
)
"""The solvers by name (see the package docstring for each one's formula)."""


def option_defaults() -> dict[str, Any]:
    """Every option of every solver of ``SOLVERS`` with its default (``config.sample.solver_options``:
    one mapping for all solvers, each taking its own). Raises if two solvers disagree on a default."""
    out: dict[str, Any] = {}
    for solver in SOLVERS.values():
        for key, default in {**solver.options, **solver.static_options}.items():
            if out.setdefault(key, default) != default:
                raise ValueError(f"solvers disagree on the default of {key}: {out[key]!r} and {default!r}")
    return out
