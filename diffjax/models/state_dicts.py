"""PyTorch state dicts of released checkpoints, read without unpickling, and the layout changes
from PyTorch's tensors to Flax's parameters.

Readers: ``.safetensors`` (the ``safetensors`` package, no torch needed) and torch's pickled
``.pt`` / ``.bin`` files through ``torch.load(path, map_location="cpu", weights_only=True)``
only (torch's restricted unpickler: tensors and plain containers, never arbitrary objects);
those need torch installed, and say so when it is not.

A converter takes tensors from a ``StateDict`` by name; ``StateDict.finish`` then refuses a
checkpoint with tensors that no parameter took (a layout the converter does not know would
otherwise be dropped silently). ``check_params`` compares the converted tree with the network's
own parameter shapes, so a config that does not fit its weights fails naming the parameter.

Layouts (PyTorch -> Flax): a conv weight [O, I, kh, kw] -> kernel [kh, kw, I, O]; a linear
weight [O, I] (or a 1x1 conv [O, I, 1, 1]) -> kernel [I, O]; norms' ``weight`` -> ``scale``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from diffjax.errors import UserError

__all__ = ["CheckpointError", "ConvertedNetwork", "StateDict", "check_params", "read_state_dict"]


class CheckpointError(UserError, ValueError):
    """A checkpoint file that is missing, unreadable, or does not fit the network it is read into."""


@dataclasses.dataclass(frozen=True)
class ConvertedNetwork:
    """A released network in diffjax's terms.

    Attributes:
      model: ``arch`` and every hyperparameter of that network (``config.model``'s keys).
      out_channels: the network's output width (channels; a classifier's classes).
      image_shape: (H, W, C) the network was made for.
      params: the Flax params (float32 NumPy arrays): ``network.apply({"params": params}, ...)``.
      low_res_shape: (h, w, C) of a super-resolution network's low-resolution input (its
        network input is ``superres.upsampled_input(x, low_res)``), else None.
    """

    model: dict[str, Any]
    out_channels: int
    image_shape: tuple[int, int, int]
    params: dict
    low_res_shape: tuple[int, int, int] | None = None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors``, ``.pt``, ``.pth``, ``.bin`` or ``.ckpt`` file, as float32
    (or integer) NumPy arrays keyed by their PyTorch names.

    Raises:
      CheckpointError: no such file, an unknown suffix, or a torch file without torch installed.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file {path}: download the released weights and give their path")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        tensors = load_file(path)
    elif path.endswith((".pt", ".pth", ".bin", ".ckpt")):
        tensors = _torch_tensors(path)
    else:
        raise CheckpointError(f"{path}: not a checkpoint diffjax reads (.safetensors, or torch's .pt / .pth / .bin)")
    return {name: _as_float32(array) for name, array in tensors.items()}


def _torch_tensors(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a torch pickle and reading it needs torch (pip install torch), or "
                              f"convert it to .safetensors once where torch is installed") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return {name: tensor.detach().to(torch.float32 if tensor.is_floating_point() else tensor.dtype).numpy()
            for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}


def _as_float32(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


class StateDict:
    """A state dict that converters take tensors from, each at most once.

    Args:
      tensors: name -> array, as ``read_state_dict`` returns them.
      source: what they were read from, for the error messages.
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str):
        self._tensors = dict(tensors)
        self._taken: set[str] = set()
        self.source = source

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def take(self, name: str) -> np.ndarray:
        """The tensor ``name``, marked as used. Raises ``CheckpointError`` if it is missing."""
        if name not in self._tensors:
            raise CheckpointError(f"{self.source} has no tensor {name!r}: it is not the network its config describes")
        if name in self._taken:
            raise CheckpointError(f"{self.source}: tensor {name!r} would be used twice")
        self._taken.add(name)
        return self._tensors[name]

    def conv(self, prefix: str) -> dict[str, np.ndarray]:
        """A 2-D conv ``prefix.weight`` [O, I, kh, kw], ``prefix.bias`` -> Flax ``nn.Conv`` params."""
        weight = self.take(f"{prefix}.weight")
        if weight.ndim != 4:
            raise CheckpointError(f"{self.source}: {prefix}.weight has shape {weight.shape}, not a 2-D conv's")
        return {"kernel": np.transpose(weight, (2, 3, 1, 0)), "bias": self.take(f"{prefix}.bias")}

    def dense(self, prefix: str) -> dict[str, np.ndarray]:
        """A linear layer [O, I] or a 1x1 conv [O, I, 1, 1] (or a 1-D conv [O, I, 1]) -> Flax
        ``nn.Dense`` params (kernel [I, O])."""
        weight = self.take(f"{prefix}.weight")
        if weight.ndim > 2:
            if any(size != 1 for size in weight.shape[2:]):
                raise CheckpointError(f"{self.source}: {prefix}.weight has shape {weight.shape}, not a 1x1 conv's")
            weight = weight.reshape(weight.shape[:2])
        return {"kernel": weight.T, "bias": self.take(f"{prefix}.bias")}

    def norm(self, prefix: str) -> dict[str, np.ndarray]:
        """A GroupNorm / LayerNorm ``prefix.weight``, ``prefix.bias`` -> Flax ``scale``, ``bias``."""
        return {"scale": self.take(f"{prefix}.weight"), "bias": self.take(f"{prefix}.bias")}

    def res_block(self, prefix: str, names: Mapping[str, str]) -> dict[str, dict[str, np.ndarray]]:
        """A ``blocks.ResBlock``'s params from the tensors ``prefix.<names[part]>``, for its parts
        ``norm_0``, ``conv_0``, ``emb_proj``, ``norm_1``, ``conv_1`` and, when the checkpoint has
        it, ``skip`` (a 1x1 conv)."""
        readers = {"norm_0": self.norm, "conv_0": self.conv, "emb_proj": self.dense, "norm_1": self.norm,
                   "conv_1": self.conv}
        block = {part: read(f"{prefix}.{names[part]}") for part, read in readers.items()}
        if f"{prefix}.{names['skip']}.weight" in self:
            block["skip"] = self.dense(f"{prefix}.{names['skip']}")
        return block

    def finish(self) -> None:
        """Raise ``CheckpointError`` if some tensor was not taken (a layout the converter ignored)."""
        left = sorted(set(self._tensors) - self._taken)
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise CheckpointError(f"{self.source}: {len(left)} tensors fit no parameter of the converted network "
                                  f"({shown}): its config does not describe these weights")


def check_params(params, expected, source: str) -> None:
    """Raise ``CheckpointError`` unless ``params`` has exactly the tree and shapes of ``expected``
    (e.g. ``models.abstract_params`` of the network built from the converted config)."""
    got = {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    want = {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise CheckpointError(f"{source}: the converted parameters do not fit the network (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
    wrong = [(name, got[name], want[name]) for name in sorted(want) if got[name] != want[name]]
    if wrong:
        name, shape, needed = wrong[0]
        raise CheckpointError(f"{source}: parameter {name} has shape {shape} and the network needs {needed}"
                              f" ({len(wrong)} parameters differ)")
