"""Exact log-likelihood through the probability-flow ODE, and the dequantised bound in bits/dim.

The probability-flow ODE of a noise process x_t = alpha_t x_0 + sigma_t eps, in data
prediction D(x, t) (``solvers.x0_predictor``; see the ``solvers`` package docstring), is

    dx/dt = f(x, t) = (log sigma_t)' x + ((log alpha_t)' - (log sigma_t)') alpha_t D(x, t).

Its flow carries the model's marginal at one time to its marginal at another, and along a
trajectory the log-density changes by the instantaneous change of variables (Chen et al.
2018, theorem 1; Song et al. 2021, appendix D.2): d log p_t(x_t)/dt = -div f(x_t, t). So with
``t_start`` < ``t_end`` (default the process's ``t_min`` and ``t_max``),

    log p_{t_start}(x) = log pi(x_{t_end}) + int_{t_start}^{t_end} div f(x_t, t) dt,

where x_{t_end} is the ODE's solution started from x at ``t_start`` and pi is the prior.
``log_likelihood`` integrates the state (x, l) with dl/dt = div f from l(t_start) = 0 upward in
t with ``diffrax`` (an adaptive Runge-Kutta method, Tsit5 by default, with a PID step-size
controller) and returns log pi(x_{t_end}) + l(t_end), in nats, per example.

What density this is: that of the model's x at ``t_start`` (the data side, where sigma > 0)
evaluated at the data, as score_sde does (its eps = 1e-5); the flow from there to ``t_end``
and the prior define a normalised density whatever the prior, so the number is a true
log-likelihood of a well-defined model.

The prior: pi = N(0, v I) with v = alpha_T^2 + sigma_T^2 (T = ``t_end``), the marginal at T
of data with mean 0 and unit variance in each dimension. For a VP process v = 1, score_sde's
N(0, I); for ``processes.EDM`` v = 1 + sigma_max^2 (score_sde's VE prior is sigma_max^2: the
two differ by 1/6400 in variance). Its error: the model whose marginal at T is pi instead of
the true q_T loses, in expectation, KL(q_T || pi) nats (``prior_kl``); for data with mean m
and variance s^2 in each dimension it is, per dimension,
(1/2) [r - 1 - log r + alpha_T^2 m^2 / v] with r = (alpha_T^2 s^2 + sigma_T^2) / v (exact
for Gaussian data, up to terms of order alpha_T^4 / sigma_T^4 otherwise). For
score_sde's VP-linear process (alpha_1 = 0.0066) and data in [-1, 1] that is below
2.2e-5 nats (3.2e-5 bits) per dimension; for EDM (sigma_max = 80) below 1e-4 nats. That is
the error of the mean over data; one example's log p differs from the one with the exact q_T by
log pi(x_T) - log q_T(x_T), whose term linear in the mean, alpha_T m x_T / v per dimension, is
of order alpha_T |m| / sigma_T in size and averages out (for VP-linear 0.0066 |m|, for EDM
|m| / 80 nats per dimension; 0.008 nats over 2 dimensions in the tests' 8-bit example). Any
other log-density of x_T can be passed as ``prior`` (the tests pass the exact q_T).

Direction: the state starts from the data at ``t_start`` and moves up to ``t_end``;
``t_start`` < ``t_end`` is checked (a ValueError otherwise), so the mistake of integrating
from the noise end, or the sign of the divergence term reversed with it (a PF-ODE run the
wrong way gave ~31 bits/dim in consistency_models_cifar10 #12), cannot be made through this
API. Both ends must lie in the process's [t_min, t_max].

The divergence (per example; the denoiser must treat the examples of a batch independently,
as every network without batch statistics does):

* ``divergence="exact"``: the trace of the Jacobian of D from one JVP per dimension (all d
  basis vectors at once under ``vmap``, after one ``jax.linearize``): d tangent passes per
  evaluation; for small d (toy data, tests).
* ``divergence="hutchinson"``: Hutchinson's estimator tr J = E[v^T J v] with ``num_probes``
  probes per example, Rademacher (``probe="rademacher"``, variance 2 sum_{i != j} of the
  symmetric part's squares) or standard Gaussian (``probe="gaussian"``, variance
  2 ||sym J||_F^2), averaged; one JVP per probe. The probes are drawn once from ``key`` and
  fixed for the whole solve (FFJORD's choice: the integrand is then a smooth function of t
  that the adaptive solver can integrate), so the result is an unbiased estimate of the
  exact log-likelihood up to solver error, whatever ``num_probes`` (more probes lower its
  variance, not its mean).

The term (log sigma)' x contributes (log sigma)' d to div f exactly; only D's part is
estimated.

One solve for the whole batch: the state is the batch, so the adaptive step sizes, the
number of steps and the number of function evaluations are shared by every example (and,
under data sharding, by every device: the step-size controller's error norm is a max over
the whole global batch, an all-reduce under ``jit``). The norm is the max over examples of
each example's RMS error over x (and of the error of its l), so every example meets the
tolerance as if it were solved alone; a batch costs as many steps as its hardest example.
Solving each example with its own adaptive steps (a ``vmap`` or a per-device loop of
solves) makes the loop counts differ between devices, and a data-parallel run waiting on
a collective hangs (k-diffusion #79); this module never does that. (Checked on 2 CPU devices
with the batch sharded on a ``Mesh`` of Auto axes, as ``runtime.mesh`` builds it: the same
result and NFE as one device. On a mesh of Explicit axes, ``jax.make_mesh``'s default in
jax 0.10, diffrax 0.7.2's stage buffer does not trace: a ShardingTypeError.)

A trained discrete chain (``processes.discrete_process``): log alpha is piecewise linear in
t, so f jumps at every knot and the controller rejects steps around the jumps; give the
network fractional steps (``x0_predictor``'s default), not ``round_steps=True``, which makes
D itself jump. Measured on a 2-D mixture over the linear T = 1000 chain, float32,
rtol = atol = 1e-5, exact trace: 847 NFE (45 rejected steps) with the exact continuous D,
1489 with the table-based denoiser at rounded steps.

``nfe`` counts evaluations of f (each is one evaluation of D plus the d or ``num_probes``
tangent passes of the divergence), read from diffrax's step counts: 1 for f(x, t_start),
evaluated here and handed to the solver as its first-same-as-last state, and for every step,
accepted or rejected, the solver's new stages (Tsit5 and Dopri5: 6; Bosh3: 3). Left to
itself, diffrax 0.7 evaluates that first stage inside the first step and again after every
rejection of the first step (its "first step" flag is only cleared by an accepted step),
which its step counts cannot tell. The first step size is given (``dt0``, default 1% of the
interval), so no initial-step heuristic spends evaluations either (diffrax 0.7.2's skips
itself for the wrapped term it sees, returning 0.01). The tests check the count against the
calls of the denoiser.

8-bit images: ``bits_per_dim`` dequantises k in {0, ..., 255} uniformly, evaluates the
continuous density of the dequantised point, and adds the log-Jacobian of the map from the
8-bit lattice's unit cells to the data space; see ``dequantize``. By Jensen's inequality,
E_u[-log p(k + u)] >= -log P(k) where P(k) = int p(k + u) du is the discrete model the
continuous one induces on the cells, so the expected result is an upper bound on that model's
discrete NLL, itself >= 0 since P(k) <= 1. A single draw of u may fall below it (where the
density is peaked above 1 per unit cell); only the mean over draws is the bound. A
continuous density evaluated on the lattice itself (no dequantisation) is not a likelihood
of discrete data and can be arbitrarily large (negative bits/dim: score_sde #24):
``bits_per_dim`` accepts only integer images, and ``log_likelihood`` refuses integer ones.

References: Chen et al. 2018 (neural ODEs), section 4 and theorem 1; Grathwohl et al. 2019
(FFJORD), section 3.1 (Hutchinson's estimator with fixed noise); Song et al. 2021
(score_sde), appendix D.2 and its ``likelihood.py`` conventions; Theis et al. 2016 and Ho et
al. 2019 (Flow++) on uniform dequantisation; Kidger 2021 (diffrax).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from diffjax.diffusion.processes import NoiseProcess

__all__ = [
    "BitsPerDim",
    "DEQUANTIZATIONS",
    "ODELikelihood",
    "SOLVERS",
    "bits_per_dim",
    "dequantize",
    "draw_probes",
    "exact_divergence",
    "gaussian_prior_log_prob",
    "hutchinson_divergence",
    "hutchinson_estimates",
    "log_likelihood",
    "nfe_of",
    "prior_kl",
    "prior_variance",
]

X0Fn = Callable[[jax.Array, jax.Array], jax.Array]

SOLVERS = {"tsit5": (diffrax.Tsit5, 6), "dopri5": (diffrax.Dopri5, 6), "bosh3": (diffrax.Bosh3, 3)}
"""diffrax's adaptive explicit Runge-Kutta methods by name, with their new evaluations of f per
step (all three are first-same-as-last, so a rejected step costs as much as an accepted one)."""

INITIAL_EVALUATIONS = 1
"""Evaluations of f besides the solver's new stages per step: f(x, t_start), the first stage."""

DEQUANTIZATIONS = {"centred": 2.0 / 255.0, "score_sde": 1.0 / 128.0}
"""The width of a pixel's cell in [-1, 1] (the Jacobian dy/dv of the map from v = k + u):
``centred``: y = (k + u - 1/2) 2/255 - 1, cells centred on diffjax's pixel values k/127.5 - 1;
``score_sde``: y = 2 (k + u)/256 - 1, score_sde's [0, 1] dequantisation x = (k + u)/256 then
its centring 2x - 1."""


def _log_derivatives(process: NoiseProcess, t) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log alpha_t, (log alpha_t)', (log sigma_t)') at a scalar t, the derivatives by ``jax.jvp``."""
    one = jnp.ones_like(t)
    log_alpha, d_log_alpha = jax.jvp(process.log_alpha, (t,), (one,))
    _, d_log_sigma = jax.jvp(process.log_sigma, (t,), (one,))
    return log_alpha, d_log_alpha, d_log_sigma


def _per_example_sum(a: jax.Array) -> jax.Array:
    """[P, B, d1, d2, ...] summed over the data dimensions: [P, B]."""
    return jnp.sum(a.reshape(a.shape[:2] + (-1,)), axis=-1)


def exact_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """fn(x) and the trace of each example's Jacobian, from one JVP per dimension.

    Args:
      fn: maps x [B, ...] to [B, ...], each example independently of the others.
      x: [B, ...]; d = prod(x.shape[1:]).

    Returns:
      (fn(x) [B, ...], trace [B]). The d tangents e_j (the j-th basis vector in every
      example at once) are pushed through one ``jax.linearize`` under ``vmap``: memory d times
      a batch of tangents.
    """
    batch, dim = x.shape[0], math.prod(x.shape[1:])
    value, jvp = jax.linearize(fn, x)
    basis = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype)[:, None, :], (dim, batch, dim)).reshape((dim,) + x.shape)
    columns = jax.vmap(jvp)(basis).reshape(dim, batch, dim)  # [j, b, i] = J_b[i, j]
    return value, jnp.einsum("jbj->b", columns)


def hutchinson_estimates(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array, probes: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """fn(x) and Hutchinson's estimate v^T J v of each example's trace for each probe.

    Args:
      fn: maps x [B, ...] to [B, ...], each example independently of the others.
      x: [B, ...].
      probes: [P, B, ...], E[v v^T] = I (Rademacher or standard normal).

    Returns:
      (fn(x) [B, ...], estimates [P, B]): one JVP per probe after one ``jax.linearize``.
    """
    value, jvp = jax.linearize(fn, x)
    products = jax.vmap(jvp)(probes)
    return value, _per_example_sum(probes * products)


def hutchinson_divergence(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array, probes: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """fn(x) and the mean over the probes [P, B, ...] of ``hutchinson_estimates``: [B]."""
    value, estimates = hutchinson_estimates(fn, x, probes)
    return value, jnp.mean(estimates, axis=0)


def draw_probes(key: jax.Array, kind: str, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Hutchinson probes of ``shape`` ([P, B, ...]): ``"rademacher"`` (+-1) or ``"gaussian"`` (N(0, 1))."""
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype=dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype=dtype)
    raise ValueError(f"unknown probe {kind!r}; use 'rademacher' or 'gaussian'")


def prior_variance(process: NoiseProcess, t_end: float | None = None) -> jax.Array:
    """v = alpha_T^2 + sigma_T^2 at T = ``t_end`` (default ``process.t_max``): the prior's variance."""
    t_end = process.t_max if t_end is None else t_end
    return process.alpha(t_end) ** 2 + process.sigma(t_end) ** 2


def gaussian_prior_log_prob(process: NoiseProcess, x: jax.Array, t_end: float | None = None) -> jax.Array:
    """log N(x; 0, v I) per example [B] with v = ``prior_variance(process, t_end)``; x [B, ...]."""
    variance = prior_variance(process, t_end).astype(x.dtype)
    dim = math.prod(x.shape[1:])
    squared_norm = jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1)
    return -0.5 * squared_norm / variance - 0.5 * dim * jnp.log(2.0 * jnp.pi * variance)


def prior_kl(process: NoiseProcess, mean, variance, t_end: float | None = None) -> jax.Array:
    """KL(q_T || pi) per dimension, nats: the expected cost of the prior pi = N(0, v I) for data
    whose every dimension has this ``mean`` and ``variance``, with q_T = N(alpha_T m, alpha_T^2 s^2
    + sigma_T^2) in each dimension: the exact marginal at T for Gaussian data. For other data it
    is the KL of the Gaussian with q_T's two moments, a lower bound on the true KL (pi is
    Gaussian, so only the entropy of q_T differs), which it approaches as sigma_T dominates
    (non-Gaussian terms of order alpha_T^4 / sigma_T^4)."""
    t_end = process.t_max if t_end is None else t_end
    alpha, sigma = process.alpha(t_end), process.sigma(t_end)
    v = alpha**2 + sigma**2
    ratio = (alpha**2 * variance + sigma**2) / v
    return 0.5 * (ratio - 1.0 - jnp.log(ratio) + alpha**2 * jnp.square(mean) / v)


class ODELikelihood(NamedTuple):
    """What ``log_likelihood`` returns.

    Attributes:
      log_p: [B] log p_{t_start}(x), nats: ``prior_log_p + delta_log_p``.
      prior_log_p: [B] log pi(x_{t_end}).
      delta_log_p: [B] int_{t_start}^{t_end} div f dt.
      x_end: [B, ...] the ODE's solution at ``t_end`` (the latent).
      nfe: int32 scalar, evaluations of f (shared by the whole batch; see ``nfe_of``).
      num_steps, num_accepted_steps, num_rejected_steps: int32 scalars, diffrax's counts.
      successful: bool scalar, whether diffrax reached ``t_end`` (False: ``max_steps`` was hit;
        only seen with ``throw=False``).
    """

    log_p: jax.Array
    prior_log_p: jax.Array
    delta_log_p: jax.Array
    x_end: jax.Array
    nfe: jax.Array
    num_steps: jax.Array
    num_accepted_steps: jax.Array
    num_rejected_steps: jax.Array
    successful: jax.Array


def nfe_of(solver: str, num_steps) -> jax.Array:
    """Evaluations of f of a solve (``log_likelihood``'s) that took ``num_steps`` (accepted + rejected)."""
    return INITIAL_EVALUATIONS + SOLVERS[solver][1] * jnp.asarray(num_steps, jnp.int32)


def _batch_error_norm(error) -> jax.Array:
    """The step-size controller's norm of the scaled error (x [B, ...], l [B]): the max over
    examples of max(RMS of the example's x error, |its l error|)."""
    x_error, log_p_error = error
    x_rms = jnp.sqrt(jnp.mean(jnp.square(x_error.reshape(x_error.shape[0], -1)), axis=1))
    return jnp.maximum(jnp.max(x_rms), jnp.max(jnp.abs(log_p_error)))


def _checked_span(process: NoiseProcess, x: jax.Array, solver: str, divergence: str,
                  t_start: float | None, t_end: float | None) -> tuple[float, float]:
    """``log_likelihood``'s input checks; returns its static span (t_start, t_end)."""
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        raise TypeError(
            f"log_likelihood takes continuous data, got {x.dtype}: a continuous density on discrete data is "
            "not a likelihood (it can give negative bits/dim); dequantise 8-bit images with bits_per_dim"
        )
    if x.ndim < 2:
        raise ValueError(f"x must be a batch [B, ...] with at least one data dimension, got shape {x.shape}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; known solvers: {sorted(SOLVERS)}")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"unknown divergence {divergence!r}; use 'exact' or 'hutchinson'")
    t_start = float(process.t_min if t_start is None else t_start)
    t_end = float(process.t_max if t_end is None else t_end)
    if not t_start < t_end:
        raise ValueError(
            f"the likelihood ODE runs from the data (t_start) up to the prior (t_end): need t_start < t_end, "
            f"got t_start={t_start}, t_end={t_end}"
        )
    if t_start < process.t_min or t_end > process.t_max:
        raise ValueError(
            f"[t_start, t_end] = [{t_start}, {t_end}] must lie in the process's [t_min, t_max] = "
            f"[{process.t_min}, {process.t_max}]"
        )
    return t_start, t_end


def _probes(key: jax.Array | None, divergence: str, probe: str, num_probes: int, x: jax.Array) -> jax.Array | None:
    """The Hutchinson probes [num_probes, B, ...] of the whole solve (None for the exact divergence)."""
    if divergence != "hutchinson":
        return None
    if key is None:
        raise ValueError("the Hutchinson divergence needs a key for its probes")
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1, got {num_probes}")
    return draw_probes(key, probe, (num_probes,) + x.shape, x.dtype)


def _pf_ode_field(process: NoiseProcess, denoise_x0: X0Fn, dim: int):
    """The augmented probability-flow field ``(t, (y, _), probes) -> (dy/dt, d log p / dt)``:
    dy/dt = (d log sigma) y + (d log alpha - d log sigma) alpha x0_hat(y, t), and its divergence
    (exact, or the Hutchinson estimate with ``probes``); ``dim`` data dimensions per example."""

    def vector_field(t, state, probes):
        y, _ = state
        log_alpha, d_log_alpha, d_log_sigma = _log_derivatives(process, t)
        weight = (d_log_alpha - d_log_sigma) * jnp.exp(log_alpha)
        denoise_at_t = lambda z: denoise_x0(z, t)
        if probes is None:
            x0, trace = exact_divergence(denoise_at_t, y)
        else:
            x0, trace = hutchinson_divergence(denoise_at_t, y, probes)
        drift = d_log_sigma * y + weight * x0
        div = d_log_sigma * dim + weight * trace
        return drift.astype(y.dtype), div.astype(y.dtype)

    return vector_field


def log_likelihood(
    process: NoiseProcess,
    denoise_x0: X0Fn,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    divergence: str = "hutchinson",
    probe: str = "rademacher",
    num_probes: int = 1,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    dt0: float | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    prior: Callable[[jax.Array], jax.Array] | None = None,
    throw: bool = True,
) -> ODELikelihood:
    """log p_{t_start}(x) of the model ``denoise_x0`` through the probability-flow ODE.

    Args:
      process: the noise process (``processes``; a trained discrete chain as ``discrete_process``).
      denoise_x0: the data prediction ``denoise_x0(x, t)`` (``solvers.x0_predictor``), x [B, ...]
        and t a scalar; examples must not interact.
      x: [B, ...] continuous data (float) in the data space; dequantise 8-bit data first
        (``bits_per_dim`` does). Integer data is refused.
      key: draws the Hutchinson probes, once for the whole solve; required for ``"hutchinson"``.
      divergence: ``"exact"`` (d JVPs per evaluation; small d) or ``"hutchinson"``.
      probe: ``"rademacher"`` or ``"gaussian"``.
      num_probes: probes per example, averaged.
      solver: a name in ``SOLVERS``.
      rtol, atol: the PID controller's tolerances (scale atol + rtol |y| of each component).
      max_steps: diffrax's limit on the number of steps.
      dt0: the first step's size attempted (default 0.01 (t_end - t_start)); the controller
        rejects and shrinks it where needed.
      t_start, t_end: static floats, the ends (default ``process.t_min``, ``process.t_max``);
        ``process.t_min <= t_start < t_end <= process.t_max``.
      prior: ``prior(x_end) -> [B]`` the log-density at ``t_end`` (default
        ``gaussian_prior_log_prob(process, ., t_end)``).
      throw: raise if the solve fails (diffrax's ``throw``); otherwise see ``successful``.

    Returns:
      An ``ODELikelihood`` (all per-example numbers in nats).
    """
    t_start, t_end = _checked_span(process, x, solver, divergence, t_start, t_end)
    probes = _probes(key, divergence, probe, num_probes, x)
    vector_field = _pf_ode_field(process, denoise_x0, math.prod(x.shape[1:]))

    method, _ = SOLVERS[solver]
    state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
    # The first stage, given to the (first-same-as-last) solver as its state: (first_step, f0).
    first_stage = vector_field(jnp.asarray(t_start, x.dtype), state0, probes)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        method(),
        t_start,
        t_end,
        0.01 * (t_end - t_start) if dt0 is None else dt0,
        state0,
        probes,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=_batch_error_norm),
        max_steps=max_steps,
        throw=throw,
        solver_state=(jnp.asarray(False), first_stage),
    )
    x_end, delta_log_p = solution.ys[0][-1], solution.ys[1][-1]
    prior_log_p = gaussian_prior_log_prob(process, x_end, t_end) if prior is None else prior(x_end)
    num_steps = jnp.asarray(solution.stats["num_steps"], jnp.int32)
    return ODELikelihood(
        log_p=prior_log_p + delta_log_p,
        prior_log_p=prior_log_p,
        delta_log_p=delta_log_p,
        x_end=x_end,
        nfe=nfe_of(solver, num_steps),
        num_steps=num_steps,
        num_accepted_steps=jnp.asarray(solution.stats["num_accepted_steps"], jnp.int32),
        num_rejected_steps=jnp.asarray(solution.stats["num_rejected_steps"], jnp.int32),
        successful=solution.result == diffrax.RESULTS.successful,
    )


def dequantize(images: jax.Array, key: jax.Array, *, dequantization: str = "centred", dtype=jnp.float32):
    """Uniformly dequantised 8-bit images in [-1, 1] and the log-Jacobian of the map.

    With v = k + u, u ~ U[0, 1)^d (the unit cell of pixel values k), the data-space point is
    y = c (k + u - o) - 1, affine with dy/dv = c = ``DEQUANTIZATIONS[dequantization]`` in every
    dimension:

    * ``"centred"`` (default): c = 2/255, o = 1/2: the cell of k is centred on diffjax's pixel
      value k/127.5 - 1 (``data.images``: what the model was trained on) and 2/255 wide, as
      DDPM's discretised decoder's bins are; y in [-1 - 1/255, 1 + 1/255).
    * ``"score_sde"``: c = 1/128, o = 0: score_sde's x = (k + u)/256 in [0, 1) mapped by 2x - 1,
      y in [-1, 1). Its cell of k = 255 is [0.9922, 1), with the training value 1 at its edge.

    The densities of v and y are related by p_v(v) = p_y(y) c^d, so
    -log2 p_v(v) / d = -log2 p_y(y) / d - log2 c: the offset is log2(127.5) = 6.99435 bits for
    "centred" and log2(128) = 7 (score_sde's offset for centred data) for "score_sde".

    Args:
      images: [B, ...] integer pixel values in {0, ..., 255}.
      key: the PRNG key of u.
      dequantization: a name in ``DEQUANTIZATIONS``.
      dtype: the float dtype of the result.

    Returns:
      (y [B, ...] ``dtype``, log_jacobian [B] = d log c: log p_v = log p_y + log_jacobian).
    """
    if not jnp.issubdtype(images.dtype, jnp.integer):
        raise TypeError(f"dequantize takes integer 8-bit images, got {images.dtype}")
    if dequantization not in DEQUANTIZATIONS:
        raise ValueError(f"unknown dequantization {dequantization!r}; known: {sorted(DEQUANTIZATIONS)}")
    width = DEQUANTIZATIONS[dequantization]
    offset = 0.5 if dequantization == "centred" else 0.0
    u = jax.random.uniform(key, images.shape, dtype)
    y = (images.astype(dtype) + u - offset) * jnp.asarray(width, dtype) - 1.0
    dim = math.prod(images.shape[1:])
    log_jacobian = jnp.full((images.shape[0],), dim * math.log(width), dtype)
    return y, log_jacobian


class BitsPerDim(NamedTuple):
    """What ``bits_per_dim`` returns.

    Attributes:
      bpd: [B] -log2 p_v(k + u) / d, bits/dim of the dequantised density (its mean over u and
        examples is the upper bound on the discrete NLL).
      offset: the bits/dim added by the Jacobian, -log2(c) (6.99435 for "centred", 7 for "score_sde").
      x: [B, ...] the dequantised data the density was evaluated at.
      ode: the ``ODELikelihood`` of ``x``.
    """

    bpd: jax.Array
    offset: float
    x: jax.Array
    ode: ODELikelihood


def bits_per_dim(
    process: NoiseProcess,
    denoise_x0: X0Fn,
    images: jax.Array,
    key: jax.Array,
    *,
    dequantization: str = "centred",
    dtype=jnp.float32,
    **solve_options,
) -> BitsPerDim:
    """Bits/dim of 8-bit images under the PF-ODE density, uniformly dequantised: an upper bound
    on the discrete NLL in expectation over the dequantisation noise (Jensen), never below it.

    bpd = -(log p_y(y) + d log c) / (d log 2) with y = ``dequantize(images, ...)`` and
    log p_y from ``log_likelihood``.

    Args:
      process, denoise_x0: as ``log_likelihood``.
      images: [B, ...] integer pixel values in {0, ..., 255} (uint8 or any integer dtype). Float
        data is refused: a continuous density at the lattice's points is not a discrete
        likelihood (score_sde #24).
      key: split into the dequantisation noise's key and the probes' key.
      dequantization: ``"centred"`` or ``"score_sde"`` (``dequantize``).
      dtype: the float dtype of the solve.
      solve_options: keyword arguments of ``log_likelihood`` (``divergence``, ``num_probes``,
        ``rtol``, ...).

    Returns:
      A ``BitsPerDim``.
    """
    if not jnp.issubdtype(images.dtype, jnp.integer):
        raise TypeError(
            f"bits_per_dim takes integer 8-bit images (uint8), got {images.dtype}: it dequantises them itself; "
            "for continuous data use log_likelihood"
        )
    noise_key, probe_key = jax.random.split(key)
    y, log_jacobian = dequantize(images, noise_key, dequantization=dequantization, dtype=dtype)
    ode = log_likelihood(process, denoise_x0, y, key=probe_key, **solve_options)
    dim = math.prod(images.shape[1:])
    bpd = -(ode.log_p + log_jacobian) / (dim * math.log(2.0))
    return BitsPerDim(bpd=bpd, offset=-math.log2(DEQUANTIZATIONS[dequantization]), x=y, ode=ode)
