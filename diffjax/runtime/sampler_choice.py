"""How samples are drawn: a ``SamplerChoice`` (the discrete chain's respacing and step, or a
continuous-time solver of ``diffusion.solvers`` with its steps, grid and options), its checks,
its records (steps, NFE, settings) and its solver grid. ``runtime.sampling.make_sampler``
compiles one."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import jax

from diffjax.diffusion import solvers, time_grids
from diffjax.diffusion.families.gaussian import solver_grid as gaussian_solver_grid
from diffjax.diffusion.processes import NoiseProcess, discrete_process
from diffjax.diffusion.schedules import Schedule

__all__ = ["GRID_NAMES", "SamplerChoice", "accepted_options", "solver_grid"]

DISCRETE_GRID_PREFIX = "discrete_"
GRID_NAMES = (*time_grids.GRIDS, *(DISCRETE_GRID_PREFIX + rule for rule in time_grids.DISCRETE_RULES))
"""``config.sample.grid``: a continuous grid of ``time_grids.GRIDS`` (fractional model steps
between the trained ones) or ``discrete_<rule>`` (the trained integer steps strided by
``time_grids.discrete_grid``'s rule). Every grid starts at the model's top time, where
x_T ~ N(0, I) is drawn, but ``discrete_ddim_truncated`` and ``discrete_ddim_quadratic_truncated``:
DDIM's exact spacings, for reproducing DDIM's tables, which start below the top step (at step
800 of 1000 for the quadratic one) with the same x_T, an error no step count removes."""

_ENTRY = re.compile(r"^([a-z0-9_]+):(\d+)(?::([a-z_]+))?$")


@dataclasses.dataclass(frozen=True)
class SamplerChoice:
    """How samples are drawn.

    Attributes:
      solver: "" for the discrete chain (``method`` on the schedule respaced by ``steps``),
        else a key of ``solvers.SOLVERS`` run for ``steps`` steps over ``grid``.
      steps: a respacing string for the chain ("ddim50", "250", ""), or the number of
        solver steps K ("10").
      method: the chain's step, "ddpm" (ancestral, the model's own variance) or "ddim".
      eta: the chain's DDIM eta.
      clip_denoised: clip the data prediction to [-1, 1] (both paths).
      dynamic_threshold: > 0: Imagen's dynamic thresholding at this percentile instead of
        clipping (solvers only).
      guidance_weight: classifier-free guidance w (conditional models).
      classifier_scale: classifier guidance s (0: off; needs a ``GuidanceClassifier``).
      grid: a name of ``GRID_NAMES`` (solvers only).
      rho: the Karras grid's rho.
      solver_options: (name, value) pairs of ``solvers.option_defaults()``, every solver's
        options (solvers only; each solver takes its own, ``solvers.SOLVERS[solver].options``
        traced floats and ``.static_options`` compile-time bools such as ``lower_order_final``).
    """

    solver: str = ""
    steps: str = "ddim50"
    method: str = "ddim"
    eta: float = 0.0
    clip_denoised: bool = True
    dynamic_threshold: float = 0.0
    guidance_weight: float = 0.0
    classifier_scale: float = 0.0
    grid: str = "uniform_log_snr"
    rho: float = 7.0
    solver_options: tuple[tuple[str, float | bool], ...] = tuple(sorted(solvers.option_defaults().items()))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], entry: str | None = None) -> SamplerChoice:
        """The choice of a mapping of sample settings keyed by this class's field names
        (``config.sample``, or a dict; other keys are ignored). ``entry`` (an item of
        ``config.eval.sample_steps``) overrides it: "SOLVER:K" (e.g. "dpmpp_2m:10") picks that
        solver and K, "SOLVER:K:GRID" (e.g. "heun:4:karras") also the grid; anything else is
        a respacing of the discrete chain with the settings' ``method``."""
        s = settings
        options = {**solvers.option_defaults(), **dict(s["solver_options"])}
        choice = cls(
            solver=s["solver"], steps=str(s["steps"]), method=s["method"], eta=float(s["eta"]),
            clip_denoised=bool(s["clip_denoised"]), dynamic_threshold=float(s["dynamic_threshold"]),
            guidance_weight=float(s["guidance_weight"]), classifier_scale=float(s.get("classifier_scale", 0.0)),
            grid=s["grid"], rho=float(s["rho"]),
            solver_options=tuple(sorted((k, v if isinstance(v, bool) else float(v)) for k, v in options.items())),
        )
        if entry is None:
            return choice
        match = _ENTRY.match(entry)
        if match:
            grid = match.group(3) or choice.grid
            return dataclasses.replace(choice, solver=match.group(1), steps=match.group(2), grid=grid)
        return dataclasses.replace(choice, solver="", steps=entry)

    def check(self, num_timesteps: int | None = None) -> None:
        """Raise ``ValueError`` naming what is wrong with the choice itself: the chain's method, or the
        solver, its steps, grid and options (a ``discrete_`` grid on a chain of T = ``num_timesteps``).
        What a model family allows is its own ``check_choice``, which calls this."""
        if not self.solver:
            if self.method not in ("ddpm", "ddim"):
                raise ValueError(f"unknown sampling method {self.method!r}; expected 'ddpm' or 'ddim'")
            return
        if self.solver not in solvers.SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; known solvers: {sorted(solvers.SOLVERS)}")
        if not self.steps.isdigit() or int(self.steps) < 1:
            raise ValueError(f"a solver takes a number of steps K >= 1, got steps={self.steps!r}")
        if self.grid not in GRID_NAMES:
            raise ValueError(f"unknown grid {self.grid!r}; known grids: {list(GRID_NAMES)}")
        if self.grid.startswith(DISCRETE_GRID_PREFIX):
            if int(self.steps) >= num_timesteps:
                raise ValueError(f"a discrete grid has fewer than T = {num_timesteps} steps, got {self.steps}")
            time_grids.discrete_grid(num_timesteps, int(self.steps), self.grid[len(DISCRETE_GRID_PREFIX):])
        known = solvers.option_defaults()
        unknown = set(dict(self.solver_options)) - set(known)
        if unknown:
            raise ValueError(f"unknown solver options {sorted(unknown)}; known: {sorted(known)}")
        self.options()  # the solver's own options: a static one must be a bool
        if not 0.0 <= self.dynamic_threshold < 1.0:
            raise ValueError(f"dynamic_threshold is a percentile in (0, 1) or 0 (off), got {self.dynamic_threshold}")

    @property
    def deterministic(self) -> bool:
        """Whether x_T determines the sample (DDIM with eta = 0, a deterministic solver)."""
        if not self.solver:
            return self.method == "ddim" and self.eta == 0
        return not solvers.SOLVERS[self.solver].stochastic

    @property
    def label(self) -> str:
        """"dpmpp_2m:10:uniform_log_snr" or the chain's respacing ("ddim50", "100", "full")."""
        return f"{self.solver}:{self.steps}:{self.grid}" if self.solver else (self.steps or "full")

    def num_steps(self) -> int:
        """A solver's steps K (the chain's and naive diffusion's are their family's ``num_steps``)."""
        self._require_solver()
        return int(self.steps)

    def nfe(self) -> int:
        """A solver's network evaluations per sample (a guided model's two passes count once, as
        in the papers): K x its NFE per step + 1 (the final denoising to x_0). ``check`` refuses a
        discrete grid whose steps would coincide, so K is the grid's step count. (The chain's and
        naive diffusion's are their family's ``nfe``.)"""
        self._require_solver()
        return solvers.SOLVERS[self.solver].nfe_per_step * int(self.steps) + 1

    def _require_solver(self) -> None:
        if not self.solver:
            raise ValueError(f"{self.label!r} is not a solver choice: the model family counts its steps")

    def settings(self) -> dict[str, Any]:
        """The settings that made the samples, for the records next to them."""
        common = {"label": self.label, "clip_denoised": self.clip_denoised, "guidance_weight": self.guidance_weight,
                  "classifier_scale": self.classifier_scale}
        if not self.solver:
            return {**common, "sampler": "chain", "method": self.method, "steps": self.steps, "eta": self.eta}
        return {**common, "sampler": "solver", "solver": self.solver, "steps": int(self.steps), "grid": self.grid,
                "rho": self.rho, "dynamic_threshold": self.dynamic_threshold,
                "solver_options": self.options()}

    def options(self) -> dict[str, float | bool]:
        """The solver's own options (traced and static) from ``solver_options``, defaults filled in
        (``Solver.complete``; a ValueError names a bad one)."""
        solver = solvers.SOLVERS[self.solver]
        mine = {**solver.options, **solver.static_options}
        return solver.complete({k: v for k, v in self.solver_options if k in mine})

    def traced_options(self) -> dict[str, float]:
        """The solver's traced float options (arguments of a compiled sampler: no recompiling)."""
        return {k: v for k, v in self.options().items() if k in solvers.SOLVERS[self.solver].options}

    def solver_step(self):
        """The solver's step with its static options (``lower_order_final``) bound; bind the traced
        ones (``traced_options``, possibly tracers) with ``functools.partial`` inside the compiled
        function."""
        solver = solvers.SOLVERS[self.solver]
        static = {k: v for k, v in self.options().items() if k in solver.static_options}
        return functools.partial(solver.step, **static) if static else solver.step


def accepted_options(solver: str, options: Mapping[str, float]) -> dict[str, float]:
    """The traced options of ``options`` that the solver takes (its static ones are bound by
    ``SamplerChoice.solver_step``)."""
    return {k: v for k, v in options.items() if k in solvers.SOLVERS[solver].options}


def solver_grid(choice: SamplerChoice, model: Schedule | NoiseProcess) -> jax.Array:
    """The time grid [K + 1] of a solver choice for a model trained on a discrete ``Schedule``,
    or on a continuous ``NoiseProcess`` (``diffusion.families.gaussian.solver_grid``)."""
    if isinstance(model, NoiseProcess):
        return gaussian_solver_grid(choice, model)
    return gaussian_solver_grid(choice, discrete_process(model), model.num_timesteps)
