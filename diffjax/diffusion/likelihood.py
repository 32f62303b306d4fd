"""The variational bound on the negative log-likelihood, in bits per dimension.

-log p(x_0) <= L_T + sum_{t>0} L_{t-1} + L_0 (DDPM eq. 5): the prior term, every KL term
and the discretised decoder term, each evaluated with fresh noise x_t ~ q(x_t | x_0), as
in DDPM's and improved DDPM's ``calc_bpd_loop``. The loop over t is a ``jax.lax.scan``.

On a respaced schedule this is the bound of the shorter chain (a valid bound for the
K-step model, not the T-step one).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from diffjax.diffusion.gaussian import q_sample
from diffjax.diffusion.losses import mean_flat, prior_bpd, vb_terms_bpd
from diffjax.diffusion.parameterization import DiffusionSpec
from diffjax.diffusion.samplers import Denoiser
from diffjax.diffusion.schedules import Schedule

__all__ = ["bpd"]


def bpd(
    denoise: Denoiser,
    params: Any,
    schedule: Schedule,
    spec: DiffusionSpec,
    x0: jax.Array,
    keys: jax.Array | None,
    cond: Any = None,
    clip_denoised: bool = True,
    *,
    noise: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """All T terms of the bound for a batch, and their sum.

    Args:
      denoise: ``denoise(params, x_t, t, cond)``, called with original steps.
      params: its parameters.
      schedule: the chain; ``vb`` is indexed like it.
      spec: how to read the denoiser's output.
      x0: [B, ...] data on the 8-bit grid in [-1, 1].
      keys: one PRNG key per example, [B] (new-style) or [B, 2] (raw uint32); example
        i's noise at index t is drawn from ``fold_in(keys[i], t)``, so an example's terms
        do not depend on the batch it is evaluated in (e.g. give example n of a data set
        the key ``fold_in(root, n)``). Unused (may be None) when ``noise`` is given.
      cond: passed to ``denoise``.
      clip_denoised: clip x_0-hat to [-1, 1] (the papers' evaluation setting).
      noise: optional [T, B, ...] standard normal draws in place of those from ``keys``:
        ``noise[t]`` is the eps of x_t ~ q(x_t | x_0) at index t (index order: a loop
        that runs t = T-1 down to 0, as the papers' code does, draws ``noise[::-1]``).

    Returns:
      dict of ``total`` [B] (bits/dim), ``prior`` [B] (L_T), ``vb`` [B, T] (index 0: the
      decoder term -log p(x_0 | x_1); index t > 0: KL(q(x_t | x_{t+1}, x_0) || p(x_t |
      x_{t+1})) in the paper's 1-based steps), ``x0_mse`` [B, T] and
      ``eps_mse`` [B, T] (MSE of the x_0 and eps predictions at each t).
    """
    batch_size = x0.shape[0]
    if noise is not None:
        chex.assert_shape(noise, (schedule.num_timesteps,) + x0.shape)
    elif keys is None or keys.shape[0] != batch_size:
        got = "no keys" if keys is None else f"{keys.shape[0]} keys"
        raise ValueError(f"bpd needs one key per example (or the noise): got {got} for a batch of {batch_size}")

    def draw(index: jax.Array) -> jax.Array:
        """Each example's eps [B, ...] at index t, from its own key."""
        return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, index), x0.shape[1:], x0.dtype))(keys)

    def term(_, index_and_noise):
        index, given_noise = index_and_noise
        t = jnp.full((batch_size,), index, jnp.int32)
        eps = draw(index) if given_noise is None else given_noise
        x_t = q_sample(schedule, x0, t, eps)
        output = denoise(params, x_t, schedule.timestep_map[t], cond)
        out = vb_terms_bpd(spec, schedule, output, x0, x_t, t, clip_denoised)
        return None, (
            out["vb"],
            mean_flat(jnp.square(out["pred_x0"] - x0)),
            mean_flat(jnp.square(out["pred_eps"] - eps)),
        )

    indices = jnp.arange(schedule.num_timesteps, dtype=jnp.int32)
    _, (vb, x0_mse, eps_mse) = jax.lax.scan(term, None, (indices, noise))
    prior = prior_bpd(schedule, x0)
    vb, x0_mse, eps_mse = vb.T, x0_mse.T, eps_mse.T
    return dict(
        total=jnp.sum(vb, axis=1) + prior,
        prior=prior,
        vb=vb,
        x0_mse=x0_mse,
        eps_mse=eps_mse,
    )
