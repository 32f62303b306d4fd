"""A parameter table of a denoiser: counts per top-level module and the total."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from diffjax.models.denoiser import abstract_params, count_params

__all__ = ["parameter_table"]


def parameter_table(model: nn.Module, input_shape: Sequence[int]) -> str:
    """Rows ``module  shapes  params`` per top-level submodule, then ``total``.

    Computed with ``jax.eval_shape``: no parameter is materialised, so paper-size models
    are cheap to inspect.
    """
    params = abstract_params(model, input_shape)
    rows = []
    for name, subtree in params.items():
        leaves = jax.tree.leaves(subtree)
        rows.append((name, len(leaves), sum(math.prod(leaf.shape) for leaf in leaves)))
    total = count_params(params)
    width = max([len(r[0]) for r in rows] + [len("total")])
    lines = [f"{'module':<{width}}  {'arrays':>6}  {'params':>13}", "-" * (width + 23)]
    lines += [f"{name:<{width}}  {arrays:>6}  {count:>13,}" for name, arrays, count in rows]
    lines += ["-" * (width + 23), f"{'total':<{width}}  {sum(r[1] for r in rows):>6}  {total:>13,}"]
    return "\n".join(lines)
