"""The probability-flow ODE bound in bits/dim over a data split (uniform dequantisation).

For 8-bit images in [-1, 1] (the evaluation batches of ``nll``: pixels k / 127.5 - 1), each
batch's integer pixels k are recovered exactly (data off the 8-bit grid is refused),
dequantised with a fresh uniform draw (``ode_likelihood.dequantize``, "centred" cells) and
scored by ``ode_likelihood.bits_per_dim``: the recipe's denoiser read as a data prediction on
its noise process (``runtime.model_view.denoiser_view``: a discrete chain on its continuous view
``discrete_process``, fractional model steps; a continuous-time model on its own process, a
learned schedule read from the params), an adaptive Tsit5 solve from t_min up to t_max,
Hutchinson's divergence with Rademacher probes. The mean over examples is an upper bound on the discrete NLL in
expectation over the dequantisation noise (Jensen); a single draw can fall below it.

Batch j (counted over the batches of the call) uses the key ``fold_in(PRNGKey(seed), j)``
for its dequantisation noise and its probes, so the same seed, batches and batch size give
the same number. The solve is shared by the whole (global) batch (``log_likelihood``), so the
batch size changes the adaptive steps slightly; padding rows (mask False) are replaced by
mid-grey pixels, so their content changes nothing, and they are left out of every average.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from diffjax.diffusion.families.base import require_bound
from diffjax.diffusion.families.gaussian import model_view
from diffjax.diffusion.ode_likelihood import bits_per_dim
from diffjax.evaluation.nll import _pad_rows
from diffjax.models.denoiser import network_fn
from diffjax.runtime.mesh import global_batch, make_mesh, replicated_sharding

__all__ = [
    "ODEBoundEvaluator",
    "ODENLLResult",
    "first_examples",
    "mean_and_stderr",
    "ode_nll_of_params",
    "pixel_batches",
    "pixels_of",
    "write_ode_nll_json",
    "write_result_json",
]

SOLVER = "tsit5"
PROBE = "rademacher"
DEQUANTIZATION = "centred"

# How far a value may lie from k / 127.5 - 1 and still be pixel k (float32 rounding is ~1e-7).
_GRID_TOLERANCE = 1e-4


def pixels_of(images: np.ndarray) -> np.ndarray:
    """The integer pixels k in {0, ..., 255} of images k / 127.5 - 1 (int32, same shape).

    Raises:
      ValueError: a value is not within 1e-4 of the 8-bit grid (or lies outside [-1, 1]).
    """
    images = np.asarray(images, np.float64)
    pixels = np.rint((images + 1.0) * 127.5)
    off_grid = np.abs(pixels / 127.5 - 1.0 - images) > _GRID_TOLERANCE
    outside = (pixels < 0) | (pixels > 255) | ~np.isfinite(images)
    bad = off_grid | outside
    if np.any(bad):
        value = images[bad].reshape(-1)[0]
        raise ValueError(
            f"the PF-ODE bound dequantises 8-bit images: the data must be k / 127.5 - 1 for integer pixels k in "
            f"[0, 255], but {int(bad.sum())} values are not (e.g. {value!r}); this data is not on the 8-bit grid"
        )
    return pixels.astype(np.int32)


def first_examples(batches: Iterable[dict[str, np.ndarray]], num_examples: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches holding the first ``num_examples`` real rows (mask True), the rows after them
    masked out, and no batch after them (0: all the batches unchanged)."""
    if num_examples <= 0:
        yield from batches
        return
    left = num_examples
    for batch in batches:
        if left <= 0:
            return
        mask = np.asarray(batch["mask"], bool)
        keep = mask & (np.cumsum(mask) <= left)
        left -= int(keep.sum())
        yield {**batch, "mask": keep}


def pixel_batches(mesh: Mesh, batches: Iterable[dict[str, np.ndarray]], *, seed: int = 0, progress: bool = False,
                  desc: str = "ode nll") -> Iterator[tuple[int, dict[str, jax.Array], jax.Array]]:
    """The 8-bit evaluation batches of a likelihood evaluator, sharded over ``mesh``.

    Yields ``(j, inputs, key)`` for the j-th host batch: ``inputs`` the global arrays
    {"pixels": int32 [B, ...] (``pixels_of`` the images; padding rows mid-grey, whatever they
    held), "label": int32 [B], "mask": bool [B]} (the host batch padded with masked rows to a
    multiple of the local devices) and ``key`` = ``fold_in(PRNGKey(seed), j)``, replicated.

    Raises:
      ValueError: a real row is off the 8-bit grid.
    """
    root_key = jax.random.PRNGKey(seed)
    local_devices = len(mesh.local_devices)
    iterator = batches
    if progress:
        iterator = tqdm(batches, total=len(batches) if hasattr(batches, "__len__") else None, unit="batch", desc=desc)
    for number, batch in enumerate(iterator):
        mask = np.asarray(batch["mask"], bool)
        images = np.asarray(batch["image"])
        pixels = np.full(images.shape, 128, np.int32)  # padding rows: mid-grey, whatever they held
        pixels[mask] = pixels_of(images[mask])
        host_batch = _pad_rows(
            {"pixels": pixels, "label": np.asarray(batch["label"], np.int32), "mask": mask}, local_devices
        )
        key = jax.device_put(jax.random.fold_in(root_key, number), replicated_sharding(mesh))
        yield number, global_batch(mesh, host_batch), key


def mean_and_stderr(values: Iterable[np.ndarray]) -> tuple[np.ndarray, float, float | None]:
    """(float64 [N] the concatenated per-example values, their mean, the standard error of the mean
    over examples: sample std / sqrt(N), None for N < 2).

    Raises:
      ValueError: no values (the batches were empty or fully masked).
    """
    values = [np.asarray(v, np.float64).reshape(-1) for v in values]
    per_example = np.concatenate(values) if values else np.zeros(0)
    if per_example.size == 0:
        raise ValueError("no examples to evaluate: the batches are empty or fully masked")
    stderr = float(np.std(per_example, ddof=1) / math.sqrt(per_example.size)) if per_example.size > 1 else None
    return per_example, float(np.mean(per_example)), stderr


@dataclasses.dataclass(frozen=True)
class ODENLLResult:
    """The PF-ODE bound over the real examples of a split.

    Attributes:
      bpd_per_example: float64 [N], bits/dim of each real example, in the order of the batches.
      bpd: their mean.
      bpd_stderr: the standard error of the mean over examples (sample std / sqrt(N)); None for N < 2.
      nfe_mean: the mean number of evaluations of the ODE's vector field per batch (one solve each).
      num_batches: batches solved.
      probes, rtol, atol, seed: the settings.
    """

    bpd_per_example: np.ndarray
    bpd: float
    bpd_stderr: float | None
    nfe_mean: float
    num_batches: int
    probes: int
    rtol: float
    atol: float
    seed: int

    @property
    def count(self) -> int:
        return len(self.bpd_per_example)

    def settings(self) -> dict[str, Any]:
        return {
            "probes": self.probes, "probe": PROBE, "rtol": self.rtol, "atol": self.atol, "seed": self.seed,
            "solver": SOLVER, "dequantization": DEQUANTIZATION, "num_batches": self.num_batches,
        }

    def to_json(self) -> dict[str, Any]:
        """The record written to ``eval/ode_nll.json`` (plain JSON types)."""
        return {
            "bound": (
                "probability-flow ODE, uniform dequantisation (an upper bound on the discrete NLL in expectation "
                f"over the dequantisation noise); Hutchinson divergence with {self.probes} Rademacher probes"
            ),
            "bpd": self.bpd,
            "bpd_stderr": self.bpd_stderr,
            "nfe_mean": self.nfe_mean,
            "num_examples": self.count,
            **self.settings(),
        }


class ODEBoundEvaluator:
    """The PF-ODE bound of any params over host batches, compiled once per batch shape.

    Args:
      recipe: the experiment's ``Recipe`` (a discrete or continuous model: ``runtime.model_view``).
      mesh: the data mesh (default: every device); batches are sharded over it.
      probes: Hutchinson probes per example (Rademacher).
      rtol, atol: the adaptive solver's tolerances.
      max_steps: the solver's limit on steps per batch.
    """

    def __init__(self, recipe, mesh: Mesh | None = None, *, probes: int = 1, rtol: float = 1e-5,
                 atol: float = 1e-5, max_steps: int = 4096):
        if probes < 1:
            raise ValueError(f"probes must be at least 1, got {probes}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
        self.mesh = mesh or make_mesh()
        self.probes, self.rtol, self.atol = int(probes), float(rtol), float(atol)
        family, network = recipe.family, network_fn(recipe.model)
        require_bound(family, "ode_nll", "the PF-ODE bound")
        conditional = recipe.num_classes > 0

        def per_batch(params, pixels, labels, mask, key):
            # The process is built from the params here: a learned schedule is part of them.
            process, denoise_x0 = model_view(family, network, params, labels if conditional else None)
            out = bits_per_dim(
                process, denoise_x0, pixels, key, dequantization=DEQUANTIZATION, divergence="hutchinson",
                probe=PROBE, num_probes=self.probes, solver=SOLVER, rtol=self.rtol, atol=self.atol,
                max_steps=max_steps, throw=False,
            )
            return {"bpd": out.bpd, "mask": mask, "nfe": out.ode.nfe, "successful": out.ode.successful}

        self._per_batch = jax.jit(per_batch, out_shardings=replicated_sharding(self.mesh))

    def __call__(self, params: Any, batches: Iterable[dict[str, np.ndarray]], *, seed: int = 0,
                 progress: bool = False) -> ODENLLResult:
        """The bound of ``params`` over this host's ``batches`` (all hosts call it together).

        Args:
          params: the denoiser's params (the EMA params for the papers' protocol).
          batches: host batches {"image": float32 [b, ...] in [-1, 1] on the 8-bit grid, "label":
            int [b], "mask": bool [b] (False: padding, left out)}, as ``nll.BoundEvaluator`` takes.
          seed: batch j's dequantisation noise and probes come from ``fold_in(PRNGKey(seed), j)``.
          progress: show a progress bar.

        Raises:
          ValueError: a real row is off the 8-bit grid, or no real example in the batches.
          RuntimeError: the adaptive solve of a batch failed (e.g. more than ``max_steps`` steps).
        """
        values: list[np.ndarray] = []
        nfes: list[int] = []
        for number, inputs, key in pixel_batches(self.mesh, batches, seed=seed, progress=progress, desc="ode nll"):
            out = jax.device_get(self._per_batch(params, inputs["pixels"], inputs["label"], inputs["mask"], key))
            if not bool(out["successful"]):
                raise RuntimeError(
                    f"the PF-ODE solve of batch {number} failed (nfe {int(out['nfe'])}): raise the tolerances "
                    "(config.eval.ode_rtol, ode_atol) or check the model"
                )
            values.append(np.asarray(out["bpd"], np.float64)[np.asarray(out["mask"], bool)])
            nfes.append(int(out["nfe"]))
        bpd, mean, stderr = mean_and_stderr(values)
        return ODENLLResult(
            bpd_per_example=bpd, bpd=mean, bpd_stderr=stderr, nfe_mean=float(np.mean(nfes)),
            num_batches=len(nfes), probes=self.probes, rtol=self.rtol, atol=self.atol, seed=int(seed),
        )


def ode_nll_of_params(
    recipe, params: Any, mesh: Mesh | None, batches: Iterable[dict[str, np.ndarray]], *, probes: int = 1,
    rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0, progress: bool = False,
) -> ODENLLResult:
    """``ODEBoundEvaluator(recipe, mesh, probes=, rtol=, atol=)(params, batches, seed=, progress=)``."""
    evaluator = ODEBoundEvaluator(recipe, mesh, probes=probes, rtol=rtol, atol=atol)
    return evaluator(params, batches, seed=seed, progress=progress)


def write_result_json(result: Any, path: str, **extra: Any) -> dict[str, Any]:
    """Write ``result.to_json()`` (any evaluator's result) updated with ``extra`` (``checkpoint_step``,
    ``params``, ...) to ``path``; return the record."""
    record = {**result.to_json(), **extra}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return record


def write_ode_nll_json(result: ODENLLResult, path: str, **extra: Any) -> dict[str, Any]:
    """Write ``result.to_json()`` updated with ``extra`` (``checkpoint_step``, ``params``, ...) to
    ``path``; return the record."""
    return write_result_json(result, path, **extra)
