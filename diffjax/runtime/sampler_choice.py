"""How samples are drawn: a ``SamplerChoice`` (the discrete chain's respacing and step, or a
continuous-time solver of ``diffusion.solvers`` with its steps, grid and options), its checks,
its records (steps, NFE, settings) and its solver grid. ``runtime.sampling.make_sampler``
compiles one."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Mapping
from typing import Any

import jax

from diffjax.diffusion import solvers, time_grids
from diffjax.diffusion.naive import NaiveDiffusion
from diffjax.diffusion.processes import NoiseProcess, discrete_process
from diffjax.diffusion.schedules import Schedule, respace

__all__ = ["GRID_NAMES", "SOLVER_OPTION_DEFAULTS", "SamplerChoice", "accepted_options", "solver_grid"]

SOLVER_OPTION_DEFAULTS = {
    "eta": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0, "snr": 0.16,
}
"""The stochastic solvers' traced keyword options and their defaults (``config.sample.solver_options``):
eta (Euler ancestral, DPM-Solver++(2M) SDE), S_churn / S_tmin / S_tmax / S_noise (EDM's
Algorithm 2; S_noise also scales the others' noise) and snr (score_sde's Langevin corrector).
Each solver receives the ones its step function accepts."""

DISCRETE_GRID_PREFIX = "discrete_"
GRID_NAMES = (*time_grids.GRIDS, *(DISCRETE_GRID_PREFIX + rule for rule in time_grids.DISCRETE_RULES))
"""``config.sample.grid``: a continuous grid of ``time_grids.GRIDS`` (fractional model steps
between the trained ones) or ``discrete_<rule>`` (the trained integer steps strided by
``time_grids.discrete_grid``'s rule)."""

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
      solver_options: (name, value) pairs of ``SOLVER_OPTION_DEFAULTS`` (solvers only).
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
    solver_options: tuple[tuple[str, float], ...] = tuple(SOLVER_OPTION_DEFAULTS.items())

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], entry: str | None = None) -> SamplerChoice:
        """The choice of a mapping of sample settings keyed by this class's field names
        (``config.sample``, or a dict; other keys are ignored). ``entry`` (an item of
        ``config.eval.sample_steps``) overrides it: "SOLVER:K" (e.g. "dpmpp_2m:10") picks that
        solver and K, "SOLVER:K:GRID" (e.g. "heun:4:karras") also the grid; anything else is
        a respacing of the discrete chain with the settings' ``method``."""
        s = settings
        options = {**SOLVER_OPTION_DEFAULTS, **dict(s["solver_options"])}
        choice = cls(
            solver=s["solver"], steps=str(s["steps"]), method=s["method"], eta=float(s["eta"]),
            clip_denoised=bool(s["clip_denoised"]), dynamic_threshold=float(s["dynamic_threshold"]),
            guidance_weight=float(s["guidance_weight"]), classifier_scale=float(s.get("classifier_scale", 0.0)),
            grid=s["grid"], rho=float(s["rho"]),
            solver_options=tuple(sorted((k, float(v)) for k, v in options.items())),
        )
        if entry is None:
            return choice
        match = _ENTRY.match(entry)
        if match:
            grid = match.group(3) or choice.grid
            return dataclasses.replace(choice, solver=match.group(1), steps=match.group(2), grid=grid)
        return dataclasses.replace(choice, solver="", steps=entry)

    def check(self, num_timesteps: int | None, family: str = "discrete") -> None:
        """Raise ``ValueError`` naming what is wrong for a model of ``family`` ("discrete":
        trained on T = ``num_timesteps``; "continuous"; "naive")."""
        if family in ("naive", "classifier") and self.classifier_scale:
            raise ValueError(f"classifier guidance steers a Gaussian diffusion model's sampler, not a {family} model")
        if family == "classifier":
            raise ValueError("a noise-conditional classifier draws no samples: it guides a diffusion model's sampler "
                             "(sample.classifier_workdir and sample.classifier_scale of that model's command)")
        if family == "naive":
            if self.solver:
                raise ValueError(f"naive diffusion has its own iterative sampler, not the solver {self.solver!r}: "
                                 "set sample.solver='' and steps to the number of levels visited ('' for all)")
            if self.steps and not self.steps.isdigit():
                raise ValueError(f"naive diffusion takes steps = a number of levels or '', got {self.steps!r}")
            return
        if family == "continuous" and not self.solver:
            raise ValueError("a continuous-time model is sampled by a solver (sample.solver, or SOLVER:K entries "
                             f"in eval.sample_steps), not by the discrete chain ({self.label!r})")
        if family == "continuous" and self.grid.startswith(DISCRETE_GRID_PREFIX):
            raise ValueError(f"the grid {self.grid!r} strides a discrete chain; a continuous-time model takes "
                             f"one of {sorted(time_grids.GRIDS)}")
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
        if self.grid.startswith(DISCRETE_GRID_PREFIX) and int(self.steps) >= num_timesteps:
            raise ValueError(f"a discrete grid has fewer than T = {num_timesteps} steps, got {self.steps}")
        unknown = set(dict(self.solver_options)) - set(SOLVER_OPTION_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown solver options {sorted(unknown)}; known: {sorted(SOLVER_OPTION_DEFAULTS)}")
        if not 0.0 <= self.dynamic_threshold < 1.0:
            raise ValueError(f"dynamic_threshold is a percentile in (0, 1) or 0 (off), got {self.dynamic_threshold}")

    @property
    def deterministic(self) -> bool:
        """Whether x_T determines the sample (DDIM with eta = 0, a deterministic solver)."""
        if not self.solver:
            return self.method == "ddim" and self.eta == 0
        return self.solver not in solvers.STOCHASTIC

    @property
    def label(self) -> str:
        """"dpmpp_2m:10:uniform_log_snr" or the chain's respacing ("ddim50", "100", "full")."""
        return f"{self.solver}:{self.steps}:{self.grid}" if self.solver else (self.steps or "full")

    def num_steps(self, model) -> int:
        """Steps taken: K for a solver, the respaced chain's length for a discrete model (its
        ``Schedule`` or its ``Diffusion``), the levels visited for naive diffusion."""
        if self.solver:
            return int(self.steps)
        if isinstance(model, NaiveDiffusion):
            return int(self.steps) if self.steps else model.num_levels
        schedule = model if isinstance(model, Schedule) else model.schedule
        return respace(schedule, self.steps)[0].num_timesteps

    def nfe(self, model) -> int:
        """Network evaluations per sample (a guided model's two passes count once, as in the
        papers): K x the solver's NFE per step + 1 (the final denoising to x_0), or the
        chain's length."""
        if not self.solver:
            return self.num_steps(model)
        return solvers.NFE_PER_STEP[self.solver] * int(self.steps) + 1

    def settings(self) -> dict[str, Any]:
        """The settings that made the samples, for the records next to them."""
        common = {"label": self.label, "clip_denoised": self.clip_denoised, "guidance_weight": self.guidance_weight,
                  "classifier_scale": self.classifier_scale}
        if not self.solver:
            return {**common, "sampler": "chain", "method": self.method, "steps": self.steps, "eta": self.eta}
        return {**common, "sampler": "solver", "solver": self.solver, "steps": int(self.steps), "grid": self.grid,
                "rho": self.rho, "dynamic_threshold": self.dynamic_threshold,
                "solver_options": accepted_options(self.solver, dict(self.solver_options))}


def accepted_options(solver: str, options: Mapping[str, float]) -> dict[str, float]:
    """The options the solver's step takes as keyword arguments."""
    step = solvers.SOLVERS[solver]
    bound = step.keywords if isinstance(step, functools.partial) else {}
    function = step.func if isinstance(step, functools.partial) else step
    parameters = inspect.signature(function).parameters
    return {k: v for k, v in options.items() if k in parameters and k not in bound}


def solver_grid(choice: SamplerChoice, model: Schedule | NoiseProcess) -> jax.Array:
    """The time grid [K + 1] of a solver choice for a model trained on a discrete ``Schedule``,
    or on a continuous ``NoiseProcess``."""
    num_steps = int(choice.steps)
    if isinstance(model, NoiseProcess):
        process = model
    else:
        schedule, process = model, discrete_process(model)
        if choice.grid.startswith(DISCRETE_GRID_PREFIX):
            return time_grids.discrete_grid(schedule.num_timesteps, num_steps, choice.grid[len(DISCRETE_GRID_PREFIX):])
    if choice.grid == "karras":
        return time_grids.karras(process, num_steps, rho=choice.rho)
    return time_grids.GRIDS[choice.grid](process, num_steps)
