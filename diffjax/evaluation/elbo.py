"""The continuous-time variational bound (VDM's, T = infinity) in bits/dim over a data split.

Any Gaussian diffusion model, a continuous-time one (``diffusion.continuous``) or a discrete
chain on its continuous view (``processes.discrete_process``), is a pair (noise process,
data prediction x0_hat(x_t, t)) (``runtime.model_view.denoiser_view``), and has VDM's bound
(Kingma et al. 2021, eq. 11 with L_inf, eq. 17) on the negative log-likelihood of 8-bit data:

    -log p(x) <= KL(q(z_1 | x) || N(0, I)) + E[-log p(x | z_0)] + L_inf(x),

estimated here by ``vdm.vdm_loss`` (every term in bits/dim; see ``diffusion.vdm``).

The model in VDM's coordinates. On the model's process restricted to [t_min, t_max] (where its
denoiser is defined), with s in [0, 1] and t(s) = t_min + (t_max - t_min) s,

    gamma(s) = -lambda_{t(s)}                  (minus the log-SNR; the bound's schedule),
    z = alpha_vp x + sigma_vp eps,             alpha_vp^2 = sigmoid(-gamma), sigma_vp^2 = sigmoid(gamma),

the variance-preserving variable of the same log-SNR. The model's own x_t = alpha_t x +
sigma_t eps is z scaled by alpha_t / alpha_vp (1 for a VP process; 1 / alpha_vp =
sqrt(1 + sigma_t^2) for the variance-exploding ``edm`` process), so the denoiser is read as

    x_t = z exp(log alpha_t - log alpha_vp),   x0_hat = denoise_x0(x_t, t),
    eps_hat = (z - alpha_vp x0_hat) / sigma_vp.

The bound depends on the schedule only through the data prediction as a function of the
log-SNR and on the ends gamma(0), gamma(1) (VDM eq. 17 in v = SNR): reparameterising time to
s in [0, 1] changes nothing. The prior term is VDM's N(0, I) in the VP coordinates, i.e. on
x_{t_max}: N(0, (alpha_{t_max}^2 + sigma_{t_max}^2) I), score_sde's N(0, I) for a VP process
and N(0, (1 + sigma_max^2) I) for the VE process (score_sde's VE prior is N(0, sigma_max^2 I):
for sigma_max = 80 the two differ by 1/6400 in variance, negligibly). The reconstruction term
is VDM's factorised decoder at gamma(0) over the 256 values of diffjax's grid 2k/255 - 1.

A discrete chain's view starts at t_min = 1/T (its step 0: gamma(0) = log(beta_1 / (1 -
beta_1)), -9.2 for the linear T = 1000 chain), so its decoder sees noise of about 1.3 8-bit
steps, and its log-alpha is piecewise linear between the trained steps (gamma' jumps at each).
The number is the bound of that continuous-time model (its T = infinity limit), not of the
chain's own T-step bound (``evaluation.nll``).

A model that ignores the discreteness of the data (its denoiser is that of a smooth density
at every noise level) pays, per dimension, about the KL from q(z_0 | x) to its posterior over
z_0, nearly uniform over the value's bin: (1/2) log2(Delta^2 SNR(t_min) / (2 pi e)) bits with
Delta = 2/255 the spacing of the values, where that is positive (0.55 bits/dim for
gamma(0) = -13.3; tests/evaluation/test_elbo.py measures it on Gaussian data).

The estimator: each example gets ``draws`` times, VDM's low-discrepancy set s_j = (u + j /
draws) mod 1 with one uniform u per example, and a fresh eps and z_0 noise per draw; its terms
are averaged over the draws (each unbiased), so a bound costs ``draws`` network evaluations
per example (the NFE reported). Batch j of a call uses the key ``fold_in(PRNGKey(seed), j)``,
as ``evaluation.ode_nll`` does: the same seed, batches and batch size give the same numbers.
Padding rows (mask False) are replaced by mid-grey pixels and left out of every average; the
standard errors are over the examples (they include the spread of the data's own NLL).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffjax.diffusion import vdm
from diffjax.diffusion.families.base import require_bound
from diffjax.diffusion.families.gaussian import model_view
from diffjax.diffusion.processes import NoiseProcess, expand_to_rank
from diffjax.evaluation.ode_nll import mean_and_stderr, pixel_batches, write_result_json
from diffjax.models.denoiser import network_fn
from diffjax.runtime.mesh import make_mesh, replicated_sharding

__all__ = [
    "BOUND",
    "TERMS",
    "ELBOEvaluator",
    "ELBOResult",
    "bound_ends",
    "bound_label",
    "continuous_bound",
    "elbo_of_params",
    "vp_coordinates",
    "write_elbo_json",
]

BOUND = "continuous VDM bound (T = inf)"
"""The label of ``eval/elbo.json``'s record (``bound_label(None)``)."""


def bound_label(num_steps: int | None) -> str:
    """``BOUND``, or "VDM bound, T = 1000 steps" for the T-step diffusion loss."""
    return BOUND if not num_steps else f"VDM bound, T = {num_steps} steps"
TERMS = ("total", "diffusion", "prior", "reconstruction")
"""The per-example terms of the bound (bits/dim): ``total`` is the sum of the other three."""
GRID = "diffjax"

X0Fn = Callable[[jax.Array, jax.Array], jax.Array]

_MODEL_VIEWS = {
    "discrete": "a discrete chain on its continuous view (processes.discrete_process: log alpha piecewise linear "
                "between the trained steps, the network at fractional steps)",
    "continuous": "a continuous-time model on its own noise process",
}


def _time(process: NoiseProcess, s: jax.Array) -> jax.Array:
    """t(s) = t_min + (t_max - t_min) s."""
    return process.t_min + (process.t_max - process.t_min) * s


def vp_coordinates(process: NoiseProcess, denoise_x0: X0Fn
                   ) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array, jax.Array, jax.Array], jax.Array]]:
    """``(gamma_fn, eps_fn)`` of ``vdm.vdm_loss`` for the model (process, denoise_x0).

    gamma_fn(s) = -log_snr(t(s)) elementwise for s in [0, 1]; eps_fn(z [B, ...], s [B], gamma [B])
    is the model's noise prediction at the VP variable z (see the module docstring).
    """

    def gamma_fn(s):
        return -process.log_snr(_time(process, s))

    def eps_fn(z, s, gamma):
        t = _time(process, s)
        log_alpha_vp = -0.5 * jax.nn.softplus(gamma)
        scale = expand_to_rank(jnp.exp(process.log_alpha(t) - log_alpha_vp), z.ndim)
        x0_hat = denoise_x0(z * scale, t)
        alpha_vp, sigma_vp = vdm.alpha_sigma(gamma)
        return (z - expand_to_rank(alpha_vp, z.ndim) * x0_hat) / expand_to_rank(sigma_vp, z.ndim)

    return gamma_fn, eps_fn


def bound_ends(process: NoiseProcess, dtype=jnp.float32) -> jax.Array:
    """[2]: gamma(0), gamma(1), minus the log-SNR at t_min and t_max (the decoder's and the prior's)."""
    return -process.log_snr(jnp.asarray([process.t_min, process.t_max], dtype))


def continuous_bound(process: NoiseProcess, denoise_x0: X0Fn, x: jax.Array, key: jax.Array, *,
                     draws: int = 1, num_steps: int | None = None) -> dict[str, jax.Array]:
    """The continuous-time bound of each example, averaged over ``draws`` low-discrepancy draws.

    Args:
      process: the model's noise process.
      denoise_x0: ``denoise_x0(x_t [B, ...], t [B]) -> x0_hat [B, ...]``.
      x: [B, ...] 8-bit data on diffjax's grid 2k/255 - 1.
      key: the draws' key (one uniform per example, eps and z_0's noise per draw).
      draws: draws per example (the network evaluations per example); one network call on the
        batch per draw, in a ``lax.scan``.
      num_steps: None for L_inf; T for VDM's T-step diffusion loss L_T of the same model (its
        steps uniform in s, i.e. in the model's t between t_min and t_max; ``vdm.vdm_loss``).

    Returns:
      {name: [B]} of ``TERMS`` in bits/dim: ``total`` = ``diffusion`` + ``prior`` + ``reconstruction``.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    gamma_fn, eps_fn = vp_coordinates(process, denoise_x0)
    key_u, key_draws = jax.random.split(key)
    u = jax.random.uniform(key_u, x.shape[:1], x.dtype)

    def draw(sums, j):
        key_eps, key_0 = jax.random.split(jax.random.fold_in(key_draws, j))
        s = jnp.mod(u + j.astype(x.dtype) / draws, 1.0)
        eps = jax.random.normal(key_eps, x.shape, x.dtype)
        eps_0 = jax.random.normal(key_0, x.shape, x.dtype)
        terms = vdm.vdm_loss(eps_fn, gamma_fn, x, None, num_steps=num_steps, grid=GRID, t=s, eps=eps, eps_0=eps_0)
        return {name: sums[name] + terms[name] for name in TERMS}, None

    zeros = {name: jnp.zeros(x.shape[:1], x.dtype) for name in TERMS}
    sums, _ = jax.lax.scan(draw, zeros, jnp.arange(draws))
    return {name: value / draws for name, value in sums.items()}


@dataclasses.dataclass(frozen=True)
class ELBOResult:
    """The continuous bound over the real examples of a split.

    Attributes:
      per_example: {name: float64 [N]} of ``TERMS`` (bits/dim), in the order of the batches.
      draws: low-discrepancy draws per example (= network evaluations per example).
      num_batches: batches evaluated.
      seed: the root seed of the batches' keys.
      gamma_0, gamma_1: minus the log-SNR at the ends (the decoder's and the prior's levels).
      family: "discrete" or "continuous" (how the model was read).
      num_steps: None (L_inf) or T (VDM's T-step diffusion loss).
    """

    per_example: dict[str, np.ndarray]
    draws: int
    num_batches: int
    seed: int
    gamma_0: float
    gamma_1: float
    family: str
    num_steps: int | None = None

    @property
    def count(self) -> int:
        return len(self.per_example["total"])

    def term(self, name: str) -> tuple[float, float | None]:
        """(mean, standard error over examples) of a term of ``TERMS``."""
        _, mean, stderr = mean_and_stderr([self.per_example[name]])
        return mean, stderr

    @property
    def bpd(self) -> float:
        return self.term("total")[0]

    @property
    def bpd_stderr(self) -> float | None:
        return self.term("total")[1]

    def to_json(self) -> dict[str, Any]:
        """The record written to ``eval/elbo.json`` (plain JSON types)."""
        terms = {}
        for name in TERMS[1:]:
            terms[f"{name}_bpd"], terms[f"{name}_bpd_stderr"] = self.term(name)
        return {
            "bound": bound_label(self.num_steps),
            "num_steps": self.num_steps,
            "bpd": self.bpd,
            "bpd_stderr": self.bpd_stderr,
            **terms,
            "nfe_per_example": self.draws,
            "num_examples": self.count,
            "draws": self.draws,
            "seed": self.seed,
            "num_batches": self.num_batches,
            "gamma_0": self.gamma_0,
            "gamma_1": self.gamma_1,
            "model": _MODEL_VIEWS[self.family],
            "prior": "N(0, I) in the variance-preserving coordinates",
            "grid": "2k/255 - 1",
        }


class ELBOEvaluator:
    """The continuous bound of any params over host batches, compiled once per batch shape.

    Args:
      recipe: the experiment's ``Recipe`` (a discrete or continuous model: ``runtime.model_view``).
      mesh: the data mesh (default: every device); batches are sharded over it.
      draws: low-discrepancy time draws per example.
      num_steps: None (L_inf) or T (L_T).

    Raises:
      ValueError: a naive model (no likelihood), or draws < 1.
    """

    def __init__(self, recipe, mesh: Mesh | None = None, *, draws: int = 16, num_steps: int | None = None):
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}")
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be None (T = inf) or at least 1, got {num_steps}")
        self.num_steps = num_steps
        self.mesh = mesh or make_mesh()
        self.draws = int(draws)
        family, network = recipe.family, network_fn(recipe.model)
        require_bound(family, "elbo", "the continuous VDM bound")
        self.family = family.name
        conditional = recipe.num_classes > 0
        values = vdm.grid_values(GRID, jnp.float32)

        def per_batch(params, pixels, labels, mask, key):
            # The process is built from the params here: a learned schedule is part of them.
            process, denoise_x0 = model_view(family, network, params, labels if conditional else None)
            terms = continuous_bound(process, denoise_x0, values[pixels], key, draws=self.draws, num_steps=num_steps)
            return {**terms, "mask": mask, "ends": bound_ends(process)}

        self._per_batch = jax.jit(per_batch, out_shardings=replicated_sharding(self.mesh))

    def __call__(self, params: Any, batches: Iterable[dict[str, np.ndarray]], *, seed: int = 0,
                 progress: bool = False) -> ELBOResult:
        """The bound of ``params`` over this host's ``batches`` (all hosts call it together).

        Args:
          params: the model's params (the EMA params for the papers' protocol).
          batches: host batches {"image": float32 [b, ...] in [-1, 1] on the 8-bit grid, "label":
            int [b], "mask": bool [b] (False: padding, left out)}.
          seed: batch j's draws come from ``fold_in(PRNGKey(seed), j)``.
          progress: show a progress bar.

        Raises:
          ValueError: a real row is off the 8-bit grid, or no real example in the batches.
        """
        values: dict[str, list[np.ndarray]] = {name: [] for name in TERMS}
        ends = np.full(2, np.nan)
        for _, inputs, key in pixel_batches(self.mesh, batches, seed=seed, progress=progress, desc="elbo"):
            out = jax.device_get(self._per_batch(params, inputs["pixels"], inputs["label"], inputs["mask"], key))
            mask = np.asarray(out["mask"], bool)
            for name in TERMS:
                values[name].append(np.asarray(out[name], np.float64)[mask])
            ends = np.asarray(out["ends"], np.float64)
        per_example = {name: mean_and_stderr(parts)[0] for name, parts in values.items()}
        return ELBOResult(
            per_example=per_example, draws=self.draws, num_batches=len(values["total"]), seed=int(seed),
            gamma_0=float(ends[0]), gamma_1=float(ends[1]), family=self.family, num_steps=self.num_steps,
        )


def elbo_of_params(recipe, params: Any, mesh: Mesh | None, batches: Iterable[dict[str, np.ndarray]], *,
                   draws: int = 16, seed: int = 0, num_steps: int | None = None, progress: bool = False) -> ELBOResult:
    """``ELBOEvaluator(recipe, mesh, draws=, num_steps=)(params, batches, seed=, progress=)``."""
    return ELBOEvaluator(recipe, mesh, draws=draws, num_steps=num_steps)(params, batches, seed=seed, progress=progress)


def write_elbo_json(result: ELBOResult, path: str, **extra: Any) -> dict[str, Any]:
    """Write ``result.to_json()`` updated with ``extra`` (``checkpoint_step``, ``params``, ...) to
    ``path``; return the record."""
    return write_result_json(result, path, **extra)
