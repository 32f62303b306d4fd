"""The contract of a model family, and the record of a family's sampler.

A family is one frozen dataclass that owns everything that depends on what kind of model is
trained; the trainer, the samplers, the evaluators and ``run/`` ask it, never its name. Its
fields are plain values (``run/`` builds it from ``config.diffusion``, whose keys are exactly
the family's ``CONFIG`` keys); its methods are pure and jit-able.

The network every family calls is ``network(params, x, time_input, cond) -> output``
(``models.denoiser.network_fn``): the family decides what ``time_input`` is (the discrete
chain's step, rescaled or not; a continuous model's c(lambda); naive diffusion's level).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import jax

__all__ = ["BOUNDS", "Draw", "Family", "GaussianFamily", "Network", "check_one_of", "require_bound"]

BOUNDS = ("nll", "elbo", "ode_nll")
"""The likelihood bounds a family may support: the discrete chain's T-step bound (``nll``),
VDM's continuous-time bound of any Gaussian model (``elbo``) and the probability-flow ODE's
(``ode_nll``)."""

Network = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
"""``network(params, x [B, ...], time_input [B], cond) -> output [B, ...]``."""


def check_one_of(key: str, value: Any, allowed) -> None:
    """Raise ``ValueError("key: 'value' is not one of [...]")`` unless ``value`` is allowed (a family's
    errors start with the key they are about, so ``run/`` can name ``config.diffusion.<key>``)."""
    if value not in allowed:
        raise ValueError(f"{key}: {value!r} is not one of {sorted(allowed)}")


def require_bound(family, bound: str, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` (e.g. "the PF-ODE bound") unless ``bound`` is one of the
    family's ``bounds``."""
    if bound not in family.bounds:
        raise ValueError(f"{what} needs a Gaussian diffusion model; this model's family is {family.name!r}, "
                         "which has no likelihood")


@dataclasses.dataclass(frozen=True)
class Draw:
    """A family's sampler for one sampler choice, before it is jitted and sharded.

    Attributes:
      fn: ``fn(params, key, labels, guidance_weight, classifier_args, x_T, drawn, traced)`` ->
        samples [B, ...]: ``labels`` int32 [B] (a conditional model's classes and classifier
        guidance's targets) or None, ``guidance_weight`` the traced
        classifier-free weight, ``classifier_args`` (classifier params, scale) or None, ``x_T``
        the start, ``drawn`` whether x_T is a standard-normal draw to scale to the prior,
        ``traced`` a dict of the settings that may change per call without recompiling.
      traced: their default values (e.g. ``grid`` [K + 1], ``solver_options``, ``eta``).
      prior: ``prior(key, shape)`` -> x_T, the sampler's start drawn from ``key``.
      grid_of_params: for a learned noise schedule, ``grid_of_params(params)`` -> the grid of
        those params (the ``grid`` in ``traced`` is a placeholder); None otherwise.
    """

    fn: Callable[..., jax.Array]
    traced: Mapping[str, Any]
    prior: Callable[[jax.Array, tuple[int, ...]], jax.Array]
    grid_of_params: Callable[[Any], jax.Array] | None = None


class Family(Protocol):
    """What every family provides.

    Class attributes:
      name: its key in ``FAMILIES`` (``config.diffusion.family``).
      CONFIG: its ``config.diffusion`` keys with their defaults.
      gaussian: x_t = alpha_t x_0 + sigma_t eps (it has a ``noise_process``, a ``predict_x0``, the
        continuous-time solvers, classifier guidance and likelihoods).
      draws_samples: whether it is a generator (a noise-conditional classifier is not).
      bounds: the subset of ``BOUNDS`` it supports.
    """

    name: ClassVar[str]
    CONFIG: ClassVar[Mapping[str, Any]]
    gaussian: ClassVar[bool]
    draws_samples: ClassVar[bool]
    bounds: ClassVar[tuple[str, ...]]

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, discrete_data: bool = True, num_classes: int = 0,
                    schedule_module: Any = None) -> Family:
        """The family of ``config.diffusion``'s values (without ``family``); ``ValueError`` names a bad one."""

    @property
    def num_timesteps(self) -> int | None:
        """T of a discrete chain (for the records), None otherwise."""

    def output_channels(self, data_channels: int) -> int:
        """The network's output channels for data of ``data_channels`` channels."""

    def init_state(self) -> Any:
        """The family's training state (e.g. the loss history of importance-sampled t), a pytree."""

    def train_losses(self, network: Network, params: Any, x0: jax.Array, keys: tuple[jax.Array, jax.Array], cond: Any,
               state: Any) -> tuple[dict[str, jax.Array], Any]:
        """Per-example terms [B] (``loss`` is what the step averages) and the next state.
        ``keys`` = (key_t, key_noise); ``cond`` labels [B] (after label dropout) or None."""

    def check_choice(self, choice: Any) -> None:
        """Raise ``ValueError`` naming what a ``SamplerChoice`` asks that this family cannot do."""

    def num_steps(self, choice: Any) -> int:
        """Steps a choice takes on this model."""

    def nfe(self, choice: Any) -> int:
        """Network evaluations per sample of a choice on this model."""

    def make_draw(self, choice: Any, network: Network, guidance: Any, options: Mapping[str, float]) -> Draw:
        """The sampler of a (checked) choice: ``options`` the solver's traced options."""


class GaussianFamily(Family, Protocol):
    """A family with a Gaussian noise process."""

    learned_process: bool
    """Whether the process depends on the params (a learned VDM schedule)."""

    def noise_process(self, params: Any = None) -> Any:
        """The ``NoiseProcess`` the model was trained on (of ``params``' schedule when learned)."""

    def predict_x0(self, network: Network, params: Any, process: Any, x: jax.Array, t: jax.Array,
                   cond: Any = None) -> jax.Array:
        """x0_hat [B, ...] at x [B, ...] and the time t of ``process``: a scalar (a solver's) or one
        per example [B] (a likelihood's)."""
