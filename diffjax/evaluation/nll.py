"""Negative log-likelihood in bits/dim over a data split: the full variational bound.

Every term of the bound (the prior L_T, the T - 1 KL terms and the decoder term) is
evaluated by ``diffjax.diffusion.likelihood.bpd`` for each example, with DDPM's protocol: EMA
params, one fresh x_t per t, x_0-hat clipped to [-1, 1] (reference.md §1.4). One jitted
program per (recipe, mesh, chain) returns the masked sums of a global batch; the host
adds them up in float64.

Example n of the split (its position among the real, unpadded examples, counted over
all hosts) gets the key ``fold_in(PRNGKey(seed), n)``, so the result does not depend on
the batch size, on the number of devices or hosts, nor on padding.

The T-step bound is the number to report. ``chain="K"`` (any respacing string) gives the
bound of the respaced K-step chain instead: cheaper (K network calls per example) but a
bound for a different, shorter model, and labelled as such in ``nll.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from diffjax.diffusion.likelihood import bpd
from diffjax.diffusion.schedules import Schedule, respace
from diffjax.models.denoiser import network_fn
from diffjax.runtime.mesh import global_batch, make_mesh, replicated_sharding

__all__ = [
    "BoundEvaluator",
    "NLLResult",
    "make_bpd_sums_fn",
    "nll_chain",
    "nll_of_state",
    "nll_over_batches",
    "write_nll_json",
]


@dataclasses.dataclass(frozen=True)
class NLLResult:
    """The bound averaged over the real examples of a split.

    Attributes:
      bpd: mean total bound, bits/dim.
      prior_bpd: mean prior term L_T, bits/dim.
      vb_bpd: float64 [K], mean term at each chain index (0: the decoder -log p(x_0|x_1),
        k > 0: the KL term of index k), bits/dim; ``bpd = prior_bpd + vb_bpd.sum()``.
      x0_mse: float64 [K], mean squared error of the x_0 prediction at each index.
      eps_mse: float64 [K], mean squared error of the eps prediction at each index.
      count: number of examples averaged.
      timestep_map: int [K], the original step of each index (``arange(T)`` for the full bound).
      num_timesteps: T of the model's process.
      chain: the respacing string ("" for the full T-step bound).
      seed: root seed of the per-example keys.
      clip_denoised: whether x_0-hat was clipped to [-1, 1].
    """

    bpd: float
    prior_bpd: float
    vb_bpd: np.ndarray
    x0_mse: np.ndarray
    eps_mse: np.ndarray
    count: int
    timestep_map: np.ndarray
    num_timesteps: int
    chain: str
    seed: int
    clip_denoised: bool

    @property
    def is_full_bound(self) -> bool:
        """Whether this is the bound of the model's own T-step chain."""
        return len(self.timestep_map) == self.num_timesteps

    def to_json(self) -> dict[str, Any]:
        """The record written to ``eval/nll.json`` (plain JSON types)."""
        chain_steps = len(self.timestep_map)
        return {
            "bound": "T-step" if self.is_full_bound else "K-step chain",
            "bpd": self.bpd,
            "prior_bpd": self.prior_bpd,
            "decoder_bpd": float(self.vb_bpd[0]),
            "num_examples": self.count,
            "timesteps": self.num_timesteps,
            "chain_steps": chain_steps,
            "chain": self.chain,
            "seed": self.seed,
            "clip_denoised": self.clip_denoised,
            "timestep_map": [int(t) for t in self.timestep_map],
            "vb_bpd": [float(v) for v in self.vb_bpd],
            "x0_mse": [float(v) for v in self.x0_mse],
            "eps_mse": [float(v) for v in self.eps_mse],
        }


def nll_chain(schedule: Schedule, chain: str) -> Schedule:
    """The chain whose bound is computed: ``schedule`` itself for ``chain == ""``, else
    ``respace(schedule, chain)``."""
    if not chain:
        return schedule
    return respace(schedule, chain)[0]


def make_bpd_sums_fn(
    recipe, mesh: Mesh, *, chain: str = "", clip_denoised: bool = True
) -> Callable[..., dict[str, jax.Array]]:
    """A jitted ``sums(params, batch, root_key)`` of the bound over a global batch.

    Args:
      recipe: the experiment's ``Recipe`` (model, diffusion, classes).
      mesh: the data mesh; ``batch`` is sharded over it, the sums are replicated.
      chain: respacing of the chain ("" for the model's T-step chain).
      clip_denoised: clip x_0-hat to [-1, 1].

    Returns:
      ``sums(params, batch, root_key)`` with ``batch`` = {"image": [B, ...], "label":
      int32 [B], "mask": bool [B], "index": int32 [B]} (global arrays) and ``root_key`` a
      raw PRNG key; returns float32 ``total``, ``prior``, ``count`` (scalars) and ``vb``,
      ``x0_mse``, ``eps_mse`` [K], each summed over the rows where ``mask`` is True.
      Example rows use the keys ``fold_in(root_key, index)``.
    """
    schedule = nll_chain(recipe.family.schedule, chain)
    spec = recipe.family.spec
    denoise = recipe.family.chain_denoiser(network_fn(recipe.model))
    conditional = recipe.num_classes > 0

    def sums(params, batch, root_key):
        keys = jax.vmap(lambda index: jax.random.fold_in(root_key, index))(batch["index"])
        cond = batch["label"] if conditional else None
        out = bpd(denoise, params, schedule, spec, batch["image"], keys, cond, clip_denoised)
        weight = batch["mask"].astype(jnp.float32)

        def per_t(values):  # [B, K] -> [K]
            return jnp.sum(weight[:, None] * values, axis=0)

        return {
            "total": jnp.sum(weight * out["total"]),
            "prior": jnp.sum(weight * out["prior"]),
            "count": jnp.sum(weight),
            "vb": per_t(out["vb"]),
            "x0_mse": per_t(out["x0_mse"]),
            "eps_mse": per_t(out["eps_mse"]),
        }

    return jax.jit(sums, out_shardings=replicated_sharding(mesh))


def _host_offset(num_local_examples: int) -> int:
    """Global index of this host's first example: the examples of the hosts before it."""
    if jax.process_count() == 1:
        return 0
    counts = np.asarray(multihost_utils.process_allgather(np.asarray(num_local_examples, np.int64)))
    return int(np.sum(counts.reshape(-1)[: jax.process_index()]))


def _pad_rows(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Pad a host batch with masked rows to a multiple of ``multiple`` rows."""
    rows = batch["mask"].shape[0]
    missing = -rows % multiple
    if missing == 0:
        return batch
    return {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


class BoundEvaluator:
    """The bound of any params over host batches, compiled once for a recipe and a chain.

    ``BoundEvaluator(recipe, mesh, chain=...)(params, batches)`` is ``nll_over_batches``;
    keep the evaluator to evaluate several checkpoints (or splits with the same batch
    size) without compiling again.

    Args:
      recipe: the experiment's ``Recipe``.
      mesh: the data mesh (default: every device).
      chain: "" for the T-step bound; a respacing string for the cheaper K-step one.
      clip_denoised: clip x_0-hat to [-1, 1].
    """

    def __init__(self, recipe, mesh: Mesh | None = None, *, chain: str = "", clip_denoised: bool = True):
        self.mesh = mesh or make_mesh()
        self.chain = chain
        self.clip_denoised = clip_denoised
        self.schedule = nll_chain(recipe.family.schedule, chain)
        self._sums = make_bpd_sums_fn(recipe, self.mesh, chain=chain, clip_denoised=clip_denoised)

    def __call__(
        self, params: Any, batches: Iterable[dict[str, np.ndarray]], *, seed: int = 0, progress: bool = False
    ) -> NLLResult:
        """Mean bound (bits/dim) of ``params`` over this host's ``batches`` of a split.

        All hosts must call it together (the sums are global). A batch's rows are numbered
        by their rank among the real rows, continuing over batches and starting at this
        host's offset, so the per-example keys follow the data, not the batching.

        Args:
          params: the denoiser's params (pass the EMA params for the papers' protocol).
          batches: host batches {"image": float32 [b, ...] in [-1, 1] on the 8-bit grid,
            "label": int [b], "mask": bool [b] (False: padding, excluded)}; an
            ``EvalBatches`` (``recipe.eval_batches()``) or any iterable of such dicts.
            With several hosts it must have ``num_examples`` (this host's real examples).
          seed: root seed of the per-example keys.
          progress: show a progress bar.

        Returns:
          The ``NLLResult``.

        Raises:
          ValueError: no real example in the batches.
        """
        mesh = self.mesh
        if jax.process_count() > 1 and not hasattr(batches, "num_examples"):
            raise ValueError("with several hosts, batches must say how many real examples this host has (num_examples)")
        next_index = _host_offset(getattr(batches, "num_examples", 0))
        root_key = jax.device_put(jax.random.PRNGKey(seed), replicated_sharding(mesh))
        local_devices = len(mesh.local_devices)
        totals: dict[str, np.ndarray] | None = None
        iterator = batches
        if progress:
            total = len(batches) if hasattr(batches, "__len__") else None
            iterator = tqdm(batches, total=total, unit="batch", desc="nll")
        for batch in iterator:
            mask = np.asarray(batch["mask"], bool)
            index = next_index + np.cumsum(mask) - 1
            next_index += int(mask.sum())
            host_batch = {
                "image": np.asarray(batch["image"], np.float32),
                "label": np.asarray(batch["label"], np.int32),
                "mask": mask,
                "index": np.where(mask, index, 0).astype(np.int32),
            }
            sums = self._sums(params, global_batch(mesh, _pad_rows(host_batch, local_devices)), root_key)
            sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
            totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
        if totals is None or totals["count"] == 0:
            raise ValueError("no examples to evaluate: the batches are empty or fully masked")
        count = totals["count"]
        return NLLResult(
            bpd=float(totals["total"] / count),
            prior_bpd=float(totals["prior"] / count),
            vb_bpd=totals["vb"] / count,
            x0_mse=totals["x0_mse"] / count,
            eps_mse=totals["eps_mse"] / count,
            count=round(float(count)),
            timestep_map=np.asarray(self.schedule.timestep_map),
            num_timesteps=self.schedule.original_num_timesteps,
            chain=self.chain,
            seed=seed,
            clip_denoised=self.clip_denoised,
        )


def nll_over_batches(
    recipe,
    params: Any,
    batches: Iterable[dict[str, np.ndarray]],
    mesh: Mesh | None = None,
    *,
    seed: int = 0,
    chain: str = "",
    clip_denoised: bool = True,
    progress: bool = False,
) -> NLLResult:
    """Mean bound (bits/dim) of ``params`` over this host's ``batches``: a one-off
    ``BoundEvaluator(recipe, mesh, chain=, clip_denoised=)(params, batches, seed=, progress=)``
    (see there for the arguments)."""
    evaluator = BoundEvaluator(recipe, mesh, chain=chain, clip_denoised=clip_denoised)
    return evaluator(params, batches, seed=seed, progress=progress)


def nll_of_state(
    recipe,
    state: Any,
    mesh: Mesh | None = None,
    *,
    use_ema: bool = True,
    batches: Iterable[dict[str, np.ndarray]] | None = None,
    **kwargs,
) -> NLLResult:
    """``nll_over_batches`` of a ``TrainState``'s EMA params (or its raw params).

    Args:
      recipe: the experiment's ``Recipe``.
      state: a ``TrainState`` (needs ``ema_params`` and ``params``).
      mesh: the data mesh (default: every device).
      use_ema: evaluate ``state.ema_params`` (the papers' protocol) rather than ``state.params``.
      batches: default ``recipe.eval_batches()`` (the config's evaluation split).
      **kwargs: ``seed``, ``chain``, ``clip_denoised``, ``progress`` of ``nll_over_batches``.

    Raises:
      ValueError: no batches given and the recipe has no evaluation split.
    """
    if batches is None:
        if recipe.eval_batches is None:
            raise ValueError("this recipe has no evaluation split (recipe.eval_batches is None); pass batches=")
        batches = recipe.eval_batches()
    params = state.ema_params if use_ema else state.params
    return nll_over_batches(recipe, params, batches, mesh, **kwargs)


def write_nll_json(result: NLLResult, path: str, **extra: Any) -> dict[str, Any]:
    """Write ``result.to_json()`` updated with ``extra`` (e.g. ``checkpoint_step``, ``split``,
    ``params="ema"``) to ``path``; return the record."""
    record = {**result.to_json(), **extra}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return record
