"""The noise-conditional classifier of classifier guidance: its training objective, and its
log p_phi(y | x_t) and gradient at a sampler's state, for any model family.

Training (Dhariwal & Nichol 2021, section 4.1): x_0 with label y is noised by a discrete
chain's q(x_t | x_0) at t uniform over its steps, and the classifier is trained by
cross-entropy to predict y from x_t (``NoisyClassification``).

The classifier is told the noise level as the log signal-to-noise ratio lambda = log(alpha^2 /
sigma^2) (through ``continuous.noise_conditioning``, the continuous-time models' network time)
and reads the variance-preserving state x / sqrt(alpha^2 + sigma^2). Every Gaussian process
of the library, x_t = alpha x_0 + sigma eps, has at its time t a VP state with the same log-SNR
(for a VP process, x_t itself; for EDM's variance-exploding one, x / sqrt(1 + sigma^2)), so
one classifier guides a discrete chain (at its integer steps or, on its continuous view, at
fractional ones) and a continuous-time model alike, on whatever grid its sampler runs. Over the
trained chain's log-SNR range the classifier sees what it was trained on; outside it (e.g. EDM's
sigma up to 80) it extrapolates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.diffusion.continuous import noise_conditioning
from diffjax.diffusion.gaussian import q_sample
from diffjax.diffusion.guidance import GradFn, classifier_gradient
from diffjax.diffusion.processes import NoiseProcess
from diffjax.diffusion.schedules import Schedule, named_schedule

__all__ = [
    "TIME_INPUTS",
    "NoisyClassification",
    "chain_grad_fn",
    "chain_step_of_log_snr",
    "chain_log_snr",
    "classifier_log_prob",
    "label_log_prob",
    "process_grad_fn",
]

TIME_INPUTS = ("log_snr", "chain_step")
"""How a classifier network is told the noise level lambda: "log_snr", diffjax's
``continuous.noise_conditioning(lambda)`` (any process, any grid); "chain_step", the step t of its
training chain with that log-SNR, fractional between steps (``chain_step_of_log_snr``): what ADM's
released classifiers were trained on (the integer timestep, ``rescale_timesteps=False``)."""

ClassifierLogProb = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
"""``log_prob(params, x_vp, log_snr, labels) -> [B]``: log p_phi(y_i | x_i) of the VP state x_vp [B, ...]
at log-SNR [B]."""


def label_log_prob(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log softmax(logits)[i, labels[i]], [B]: the log-probability of each example's label from
    logits [B, K]."""
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None], axis=-1)[:, 0]


def chain_log_snr(schedule: Schedule, t: jax.Array) -> jax.Array:
    """lambda_t = log(alpha_bar_t / (1 - alpha_bar_t)) at indices t [B] of ``schedule`` (full or
    respaced: a respaced chain's tables are the original's at its kept steps), from the
    float32 tables sqrt(alpha_bar) and sqrt(1 - alpha_bar) (each computed in float64), so
    neither end loses digits to 1 - alpha_bar."""
    return 2.0 * (jnp.log(schedule.sqrt_alphas_cumprod[t]) - jnp.log(schedule.sqrt_one_minus_alphas_cumprod[t]))


def chain_step_of_log_snr(schedule: Schedule, log_snr: jax.Array) -> jax.Array:
    """The step t of ``schedule``'s chain (full length) at log-SNR ``log_snr`` [B], float32 [B]:
    linear interpolation in t between the two steps whose ``chain_log_snr`` brackets it (the
    table falls with t), clamped to [0, T - 1]; exactly t at a step's own log-SNR (a respaced
    chain's steps give the original chain's indices, as ADM's respaced sampler tells its
    classifier)."""
    steps = jnp.arange(schedule.num_timesteps)
    table = chain_log_snr(schedule, steps)  # decreasing in t
    return jnp.interp(log_snr, table[::-1], steps[::-1].astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class NoisyClassification:
    """What a noise-conditional classifier is trained on (a recipe's ``diffusion`` for
    ``config.diffusion.family = "classifier"``).

    Attributes:
      schedule: the chain whose q(x_t | x_0) noises the data (t uniform over its steps).
      num_classes: K, the width of the classifier's logits.
      time_input: how the network is told the noise level, one of ``TIME_INPUTS``.
    """

    schedule: Schedule
    num_classes: int
    time_input: str = "log_snr"

    name: ClassVar[str] = "classifier"
    gaussian: ClassVar[bool] = False
    draws_samples: ClassVar[bool] = False
    bounds: ClassVar[tuple[str, ...]] = ()
    CONFIG: ClassVar[Mapping[str, Any]] = {
        "schedule": "linear",  # the chain whose q(x_t | x_0) noises the training data
        "timesteps": 1000,
        "time_input": "log_snr",  # or "chain_step" (ADM's classifiers): TIME_INPUTS
    }

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, num_classes: int = 0, **context) -> NoisyClassification:
        """The classifier of ``config.diffusion``'s values for data of ``num_classes`` classes."""
        v = {**cls.CONFIG, **values}
        if num_classes < 1:
            raise ValueError("data.num_classes: a classifier needs labelled data (num_classes > 0)")
        if v["time_input"] not in TIME_INPUTS:
            raise ValueError(f"diffusion.time_input: {v['time_input']!r} is not one of {list(TIME_INPUTS)}")
        return cls(schedule=named_schedule(v["schedule"], v["timesteps"]), num_classes=num_classes,
                   time_input=v["time_input"])

    def network_time(self, log_snr: jax.Array) -> jax.Array:
        """The network's noise input at log-SNR ``log_snr`` [B] (``time_input``), [B]."""
        if self.time_input == "chain_step":
            return chain_step_of_log_snr(self.schedule, log_snr)
        return noise_conditioning(log_snr)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def output_channels(self, data_channels: int) -> int:
        """The classifier's logits: one per class."""
        return self.num_classes

    def init_state(self) -> Any:
        return ()

    def train_losses(self, network, params: Any, x0: jax.Array, keys, cond: Any, state: Any):
        """``losses`` with ``keys[0]``; ``cond`` are the labels (never dropped); no state."""
        return self.losses(network, params, x0, keys[0], cond), state

    def check_choice(self, choice: Any) -> None:
        raise ValueError("a noise-conditional classifier draws no samples: it guides a diffusion model's sampler "
                         "(sample.classifier_workdir and sample.classifier_scale of that model's command)")

    def num_steps(self, choice: Any) -> int:
        self.check_choice(choice)

    def nfe(self, choice: Any) -> int:
        self.check_choice(choice)

    def make_draw(self, choice: Any, network, guidance, options):
        self.check_choice(choice)

    def losses(self, network, params: Any, x0: jax.Array, key: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        """Per-example cross-entropy of the labels at a random noise level, and whether the
        arg-max class was right.

        Args:
          network: ``network(params, x, c_noise, None) -> logits [B, K]`` (the train step's
            closure over the Flax module, with dropout).
          params: its params.
          x0: [B, ...] clean data.
          key: PRNG key for t and the noise.
          labels: int32 [B] in [0, K).

        Returns:
          ``loss`` [B] (nats), ``accuracy`` [B] (0 or 1), ``t`` int32 [B].
        """
        key_t, key_noise = jax.random.split(key)
        t = jax.random.randint(key_t, (x0.shape[0],), 0, self.schedule.num_timesteps)
        x_t = q_sample(self.schedule, x0, t, jax.random.normal(key_noise, x0.shape, x0.dtype))
        logits = network(params, x_t, self.network_time(chain_log_snr(self.schedule, t)), None)
        cross_entropy = -label_log_prob(logits, labels)
        accuracy = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return {"loss": cross_entropy, "accuracy": accuracy, "t": t}


def classifier_log_prob(model: nn.Module,
                        network_time: Callable[[jax.Array], jax.Array] = noise_conditioning) -> ClassifierLogProb:
    """``log_prob(params, x_vp, log_snr, labels) -> [B]`` of a classifier network
    (``model.apply({"params": p}, x, network_time(log_snr)) -> logits [B, K]``; its family's
    ``NoisyClassification.network_time``), in inference mode."""

    def log_prob(params, x_vp, log_snr, labels):
        return label_log_prob(model.apply({"params": params}, x_vp, network_time(log_snr)), labels)

    return log_prob


def process_grad_fn(log_prob: ClassifierLogProb, params: Any, labels: jax.Array, process: NoiseProcess) -> GradFn:
    """``grad_fn(x, t)`` = grad_x log p_phi(y | x) for a solver's state x [B, ...] of ``process`` at
    the scalar time t (``guidance.classifier_guided_x0``'s argument): the classifier reads
    x / sqrt(alpha_t^2 + sigma_t^2) at lambda_t, and the gradient is taken through that scaling."""

    def grad_fn(x, t):
        log_alpha, log_sigma = process.log_alpha(t), process.log_sigma(t)
        vp_scale = jnp.exp(-jnp.logaddexp(2.0 * log_alpha, 2.0 * log_sigma) / 2.0)
        log_snr = jnp.full((x.shape[0],), 2.0 * (log_alpha - log_sigma), x.dtype)

        def of_state(p, state, _, y):
            return log_prob(p, state * vp_scale.astype(state.dtype), log_snr, y)

        return classifier_gradient(of_state, params, x, None, labels)

    return grad_fn


def chain_grad_fn(log_prob: ClassifierLogProb, params: Any, labels: jax.Array, schedule: Schedule):
    """``grad_fn(x, t) -> [B, ...]``: grad_x log p_phi(y | x) at indices t [B] of a (respaced)
    discrete chain, whose state x_t is variance preserving."""

    def grad_fn(x, t):
        log_snr = chain_log_snr(schedule, t)
        return classifier_gradient(lambda p, state, _, y: log_prob(p, state, log_snr, y), params, x, None, labels)

    return grad_fn

