"""diffjax's ``UNet`` -> a diffusers ``UNet2DModel`` folder (``config.json`` and
``diffusion_pytorch_model.safetensors``, what ``save_pretrained`` writes), for the networks that
class can hold: no scale-shift norm, no res-block resampling, conv resampling, unconditional,
and one head width for every attention (``UNet2DModel.attention_head_dim``).

The inverse of ``convert_diffusers``: each Flax parameter goes back to its PyTorch name and
layout (kernel [kh, kw, I, O] -> weight [O, I, kh, kw]; dense kernel [I, O] -> [O, I]; the fused
per-head [q, k, v] projection -> diffusers' separate ``to_q``, ``to_k``, ``to_v``). Reading the
folder back with ``convert_diffusers.load_diffusers_unet`` gives the same params bit for bit.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from diffjax.models.state_dicts import CheckpointError

__all__ = ["diffusers_config", "export_diffusers_unet"]

_DIFFUSERS_VERSION = "0.42.1"  # the UNet2DModel whose config keys are written


def diffusers_config(model: dict[str, Any], out_channels: int, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """``UNet2DModel``'s ``config.json`` of the UNet with ``config.model``-style hyperparameters
    ``model``. Raises ``CheckpointError`` naming a feature ``UNet2DModel`` does not have."""
    for key, unsupported in (("use_scale_shift_norm", True), ("resblock_updown", True), ("conv_resample", False)):
        if model.get(key) == unsupported:
            raise CheckpointError(f"a UNet with {key}={unsupported} has no diffusers UNet2DModel equivalent")
    size, _, in_channels = image_shape
    mult, channels = list(model["channel_mult"]), int(model["channels"])
    attention = [size // 2**level in model["attention_resolutions"] for level in range(len(mult))]
    widths = {channels * m for m, has in zip(mult, attention, strict=True) if has} | {channels * mult[-1]}
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": _DIFFUSERS_VERSION, "sample_size": size,
        "in_channels": in_channels, "out_channels": out_channels, "center_input_sample": False,
        "time_embedding_type": "positional", "freq_shift": int(model.get("sinusoid_freq_shift", 0)),
        "flip_sin_to_cos": bool(model.get("sinusoid_cos_first", True)),
        "down_block_types": ["AttnDownBlock2D" if has else "DownBlock2D" for has in attention],
        "up_block_types": ["AttnUpBlock2D" if has else "UpBlock2D" for has in reversed(attention)],
        "block_out_channels": [channels * m for m in mult], "layers_per_block": int(model["num_res_blocks"]),
        "mid_block_scale_factor": 1, "downsample_padding": 0 if model["downsample_padding"] == "same" else 1,
        "act_fn": "silu", "attention_head_dim": _head_dim(model, widths), "norm_num_groups": int(model["norm_groups"]),
        "norm_eps": float(model["norm_eps"]), "dropout": float(model.get("dropout", 0.0)),
        "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
        "num_class_embeds": None,
    }


def _head_dim(model: dict[str, Any], widths: set[int]) -> int | None:
    """``attention_head_dim`` (channels per head; None: one head) for attention of these widths."""
    head_channels = model.get("num_head_channels")
    if head_channels not in (None, -1):
        return int(head_channels)
    heads = int(model.get("num_heads", 1))
    if heads == 1:
        return None
    if len(widths) != 1:
        raise CheckpointError(f"{heads} heads over attention widths {sorted(widths)}: UNet2DModel gives every "
                              f"attention one head width (set num_head_channels)")
    return next(iter(widths)) // heads


def _conv(p: dict) -> dict[str, np.ndarray]:
    return {"weight": np.transpose(p["kernel"], (3, 2, 0, 1)), "bias": p["bias"]}


def _dense(p: dict) -> dict[str, np.ndarray]:
    return {"weight": np.transpose(p["kernel"]), "bias": p["bias"]}


def _norm(p: dict) -> dict[str, np.ndarray]:
    return {"weight": p["scale"], "bias": p["bias"]}


def _res_block(p: dict) -> dict[str, dict]:
    block = {"norm1": _norm(p["norm_0"]), "conv1": _conv(p["conv_0"]), "time_emb_proj": _dense(p["emb_proj"]),
             "norm2": _norm(p["norm_1"]), "conv2": _conv(p["conv_1"])}
    if "skip" in p:
        block["conv_shortcut"] = {"weight": np.transpose(p["skip"]["kernel"])[:, :, None, None],
                                  "bias": p["skip"]["bias"]}
    return block


def _attention(p: dict, head_dim: int | None) -> dict[str, dict]:
    """The per-head fused [q, k, v] projection split into diffusers' ``to_q``, ``to_k``, ``to_v``."""
    channels = p["qkv"]["kernel"].shape[0]
    heads = 1 if head_dim is None else channels // head_dim

    def split(part: str) -> list[np.ndarray]:
        per_head = np.split(p["qkv"][part], heads, axis=-1)  # each [.., 3 d]: q, k, v of one head
        return [np.concatenate([np.split(h, 3, axis=-1)[i] for h in per_head], axis=-1) for i in range(3)]

    kernels, biases = split("kernel"), split("bias")
    out = {f"to_{name}": _dense({"kernel": kernels[i], "bias": biases[i]}) for i, name in enumerate("qkv")}
    return {"group_norm": _norm(p["norm"]), **out, "to_out.0": _dense(p["proj_out"])}


def _state_dict(params: dict, config: dict[str, Any]) -> dict[str, np.ndarray]:
    levels, blocks = len(config["block_out_channels"]), config["layers_per_block"]
    attention = [b == "AttnDownBlock2D" for b in config["down_block_types"]]
    head_dim = config["attention_head_dim"]
    modules = {"conv_in": _conv(params["conv_in"]), "time_embedding.linear_1": _dense(params["time_embed"]["dense_0"]),
               "time_embedding.linear_2": _dense(params["time_embed"]["dense_1"])}
    for level in range(levels):
        down, up = f"down_blocks.{level}", f"up_blocks.{levels - 1 - level}"
        for i in range(blocks):
            modules.update(_prefixed(f"{down}.resnets.{i}", _res_block(params[f"down_{level}_res_{i}"])))
            if attention[level]:
                modules.update(_prefixed(f"{down}.attentions.{i}", _attention(params[f"down_{level}_attn_{i}"],
                                                                              head_dim)))
        for i in range(blocks + 1):
            modules.update(_prefixed(f"{up}.resnets.{i}", _res_block(params[f"up_{level}_res_{i}"])))
            if attention[level]:
                modules.update(_prefixed(f"{up}.attentions.{i}", _attention(params[f"up_{level}_attn_{i}"], head_dim)))
        if level != levels - 1:
            modules[f"{down}.downsamplers.0.conv"] = _conv(params[f"down_{level}_resample"]["conv"])
        if level != 0:
            modules[f"{up}.upsamplers.0.conv"] = _conv(params[f"up_{level}_resample"]["conv"])
    modules.update(_prefixed("mid_block.resnets.0", _res_block(params["mid_res_0"])))
    modules.update(_prefixed("mid_block.attentions.0", _attention(params["mid_attn"], head_dim)))
    modules.update(_prefixed("mid_block.resnets.1", _res_block(params["mid_res_1"])))
    modules["conv_norm_out"] = _norm(params["norm_out"])
    modules["conv_out"] = _conv(params["conv_out"])
    return {f"{name}.{kind}": np.ascontiguousarray(np.asarray(array, np.float32))
            for name, tensors in modules.items() for kind, array in tensors.items()}


def _prefixed(prefix: str, modules: dict[str, dict]) -> dict[str, dict]:
    return {f"{prefix}.{name}": tensors for name, tensors in modules.items()}


def export_diffusers_unet(folder: str, params: dict, model: dict[str, Any], out_channels: int,
                          image_shape: tuple[int, int, int]) -> str:
    """Write ``params`` of ``UNet(**model)`` (made for ``image_shape`` images, ``out_channels``
    output channels) as a diffusers ``UNet2DModel`` folder; returns the weights file's path.

    Raises:
      CheckpointError: the UNet has a feature ``UNet2DModel`` lacks, or is class-conditional.
    """
    if "label_embed" in params:
        raise CheckpointError("a class-conditional UNet: diffjax's null-class embedding has no UNet2DModel equivalent")
    from safetensors.numpy import save_file

    config = diffusers_config(model, out_channels, image_shape)
    state = _state_dict(params, config)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    save_file(state, path, metadata={"format": "pt"})
    return path
