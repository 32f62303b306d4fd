"""Learned noise schedules of variational diffusion models (Kingma et al. 2021), as Flax modules.

A schedule maps t in [0, 1] (any shape, elementwise) to gamma(t) = -log SNR(t); the conventions
and losses are in ``diffjax.diffusion.vdm``. The fixed linear schedule needs no module
(``vdm.linear_gamma``).

* ``LinearSchedule``: gamma(t) = (1 - t) gamma_0 + t gamma_1 with gamma_0 and gamma_1 learned
  scalars.
* ``MonotoneSchedule``: VDM's monotone network (appendix): g(t) = l1(t) + l3(phi(l2(l1(t)))),
  l1 and l3 one output, l2 ``hidden`` outputs (1024 in VDM), phi the sigmoid, every weight
  positive, so g is strictly increasing. It is rescaled as the paper specifies,

      gamma(t) = gamma_0 + (gamma_1 - gamma_0) (g(t) - g(0)) / (g(1) - g(0)),

  (``vdm.rescale_to_endpoints``), so gamma(0) = gamma_0 and gamma(1) = gamma_1 exactly for any
  weights, before and after training; gamma_0, gamma_1 are fixed or learned scalars
  (``learn_endpoints``). VDM's released code instead initialises the network near the linear
  schedule and lets its ends drift with the weights; here they move only if they are learned
  parameters. Positive weights are softplus of unconstrained parameters (``PositiveDense``),
  which keeps them strictly positive, so dgamma/dt > 0 everywhere (dg/dt >= w_1 > 0).

For VDM's variance minimisation the normalised shape s(t) = (g(t) - g(0)) / (g(1) - g(0)) and the
ends are available separately (``MonotoneSchedule.shape``, ``MonotoneSchedule.endpoints``), to be
fed to ``vdm.with_variance_gradient``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.diffusion import vdm

__all__ = ["LinearSchedule", "MonotoneSchedule", "PositiveDense"]


class PositiveDense(nn.Module):
    """A dense layer with strictly positive weights softplus(kernel) and a free bias.

    Attributes:
      features: output width.
      kernel_mean, kernel_scale: mean and standard deviation of the unconstrained kernel's normal
        initialiser (the weights start near softplus(kernel_mean)).
    """

    features: int
    kernel_mean: float = 0.0
    kernel_scale: float = 1.0

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        def init(key, shape, dtype=jnp.float32):
            return self.kernel_mean + self.kernel_scale * jax.random.normal(key, shape, dtype)

        kernel = self.param("kernel", init, (h.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.normal(1.0), (self.features,))
        weights = jax.nn.softplus(kernel).astype(h.dtype)
        return h @ weights + bias.astype(h.dtype)


class _MonotoneNetwork(nn.Module):
    """g(t) = l1(t) + l3(sigmoid(l2(l1(t)))), t [N] -> [N], strictly increasing."""

    hidden: int

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        h = PositiveDense(1, name="l1")(t[:, None])
        # l3's weights start near 1 / hidden, so the sigmoid part's slope starts comparable to
        # l1's (whose weight starts near softplus(0) ~ 0.7) and training can bend the schedule.
        l3 = PositiveDense(1, kernel_mean=math.log(1.0 / self.hidden), name="l3")
        out = h + l3(jax.nn.sigmoid(PositiveDense(self.hidden, name="l2")(h)))
        return out[:, 0]


class MonotoneSchedule(nn.Module):
    """VDM's monotone-network schedule with exact ends (see the module docstring).

    Attributes:
      hidden: width of l2 (VDM: 1024).
      gamma_0, gamma_1: the ends gamma(0) < gamma(1) (VDM CIFAR-10: -13.3 and 5); the initial
        values when ``learn_endpoints``.
      learn_endpoints: make the ends parameters ``gamma_0`` and ``gamma_1`` (trained by the bound).
    """

    hidden: int = 1024
    gamma_0: float = vdm.GAMMA_0
    gamma_1: float = vdm.GAMMA_1
    learn_endpoints: bool = False

    def setup(self):
        self.network = _MonotoneNetwork(self.hidden)
        if self.learn_endpoints:
            self.gamma_0_param = self.param("gamma_0", nn.initializers.constant(self.gamma_0), ())
            self.gamma_1_param = self.param("gamma_1", nn.initializers.constant(self.gamma_1), ())

    def endpoints(self) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(gamma_0, gamma_1): the learned parameters or the fixed floats as arrays."""
        if self.learn_endpoints:
            return self.gamma_0_param, self.gamma_1_param
        return jnp.asarray(self.gamma_0), jnp.asarray(self.gamma_1)

    def shape(self, t: jnp.ndarray) -> jnp.ndarray:
        """s(t) = (g(t) - g(0)) / (g(1) - g(0)), increasing from exactly 0 to exactly 1; t's shape.

        g(0), g(1) and g(t) are computed in one batch, so the rows for t = 0 and t = 1 are the same
        computation as g(0) and g(1) and s is exact there, as long as XLA rounds equal rows
        alike: it does at its default optimisation level; at ``--xla_backend_optimization_level=0``
        XLA:CPU's dot rounds rows by position and the ends can be off by an ulp or a few."""
        t = jnp.asarray(t)
        flat = jnp.concatenate([jnp.array([0.0, 1.0], t.dtype), jnp.reshape(t, (-1,))])
        g = self.network(flat)
        return jnp.reshape((g[2:] - g[0]) / (g[1] - g[0]), t.shape)

    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        """gamma(t) = (1 - s(t)) gamma_0 + s(t) gamma_1 (``vdm.rescale_to_endpoints``), t's shape."""
        return vdm.linear_gamma(self.shape(t), *self.endpoints())


class LinearSchedule(nn.Module):
    """gamma(t) = (1 - t) gamma_0 + t gamma_1 with learned scalar ends (parameters ``gamma_0``,
    ``gamma_1``, initialised to the attributes)."""

    gamma_0: float = vdm.GAMMA_0
    gamma_1: float = vdm.GAMMA_1

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        gamma_0 = self.param("gamma_0", nn.initializers.constant(self.gamma_0), ())
        gamma_1 = self.param("gamma_1", nn.initializers.constant(self.gamma_1), ())
        return vdm.linear_gamma(jnp.asarray(t), gamma_0, gamma_1)
