"""diffusers' ``UNet2DModel`` folders -> diffjax's ``UNet`` hyperparameters and params.

A folder is what ``save_pretrained`` writes and a hub model holds (google/ddpm-cifar10-32,
google/ddpm-celebahq-256, google/ddpm-church-256, ...): ``config.json`` (``_class_name``
``UNet2DModel``) and ``diffusion_pytorch_model.safetensors`` (read without torch) or
``diffusion_pytorch_model.bin`` (torch's pickle, read with ``weights_only=True``; needs torch).
Keys missing from an old ``config.json`` take ``UNet2DModel``'s defaults (diffusers 0.42).

The two networks are the same computation (DDPM's UNet): what diffusers calls a level's
``DownBlock2D`` / ``AttnDownBlock2D`` is diffjax's level with or without attention
(``attention_resolutions`` are the feature-map heights of the attention levels at
``sample_size``); ``flip_sin_to_cos`` and ``freq_shift`` are ``sinusoid_cos_first`` and
``sinusoid_freq_shift``; ``downsample_padding`` 0 (pad right and bottom, as TensorFlow) is
``"same"`` and 1 is ``"symmetric"``; the separate q, k, v projections of diffusers' attention
are fused into diffjax's per-head ``[q, k, v]`` layout. Options with no diffjax counterpart
(class embeddings, Fourier time embeddings, scale-shift time conditioning in this class, other
block types) are refused by name.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from diffjax.models.configs import make_network
from diffjax.models.denoiser import abstract_params
from diffjax.models.state_dicts import CheckpointError, ConvertedNetwork, StateDict, check_params, read_state_dict

__all__ = ["load_diffusers_unet", "read_config", "unet_hyperparameters"]

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# UNet2DModel's constructor defaults (diffusers 0.42.1) for the keys read here.
_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D", up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1,
    downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu", attention_head_dim=8,
    norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift="default",
    add_attention=True, class_embed_type=None, num_class_embeds=None,
)
# What diffjax's UNet computes; any other value of these keys is refused.
_REQUIRED = dict(
    center_input_sample=False, time_embedding_type="positional", time_embedding_dim=None,
    mid_block_type="UNetMidBlock2D", mid_block_scale_factor=1, downsample_type="conv", upsample_type="conv",
    act_fn="silu", attn_norm_num_groups=None, resnet_time_scale_shift="default", add_attention=True,
    class_embed_type=None, num_class_embeds=None,
)
_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}


def read_config(folder: str) -> dict[str, Any]:
    """The folder's ``config.json`` over ``UNet2DModel``'s defaults; ``CheckpointError`` if it is
    missing or describes another class."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder} is not a diffusers model folder (no config.json): download the model "
                              f"folder, e.g. google/ddpm-cifar10-32, and give its path")
    with open(path) as f:
        raw = json.load(f)
    if raw.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{path}: a {raw['_class_name']}, and diffjax converts diffusers' UNet2DModel")
    return {**_DEFAULTS, **{k: v for k, v in raw.items() if not k.startswith("_")}}


def _attention_levels(config: dict[str, Any]) -> list[bool]:
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    unknown = sorted({b for b in down if b not in _DOWN} | {b for b in up if b not in _UP})
    if unknown:
        raise CheckpointError(f"UNet2DModel blocks {unknown} have no diffjax counterpart (known: "
                              f"{sorted(_DOWN)}, {sorted(_UP)})")
    if len(up) != len(down):
        raise CheckpointError(f"{len(down)} down blocks and {len(up)} up blocks: not a symmetric UNet")
    attention = [_DOWN[b] for b in down]
    if attention != [_UP[b] for b in reversed(up)]:
        raise CheckpointError(f"attention at down levels {attention} but at up levels "
                              f"{[_UP[b] for b in reversed(up)]}: diffjax's UNet mirrors its attention")
    return attention


def unet_hyperparameters(config: dict[str, Any]) -> tuple[dict[str, Any], int, tuple[int, int, int]]:
    """(``config.model`` keys, out_channels, image shape) of a ``read_config`` result."""
    for key, value in _REQUIRED.items():
        if config[key] != value:
            raise CheckpointError(f"UNet2DModel {key}={config[key]!r}: diffjax's UNet has only {key}={value!r}")
    if config["sample_size"] is None:
        raise CheckpointError("UNet2DModel config.json has no sample_size: the image size sets the attention levels")
    size = config["sample_size"]
    size = size if isinstance(size, int) else size[0]
    widths = list(config["block_out_channels"])
    channels = widths[0]
    if any(w % channels for w in widths):
        raise CheckpointError(f"block_out_channels {widths} are not multiples of the first: diffjax's UNet has "
                              f"widths channels x channel_mult")
    attention = _attention_levels(config)
    head_dim = config["attention_head_dim"]
    heads = dict(num_heads=1, num_head_channels=None) if head_dim is None else dict(num_heads=1,
                                                                                   num_head_channels=int(head_dim))
    if config["downsample_padding"] not in (0, 1):
        raise CheckpointError(f"downsample_padding={config['downsample_padding']!r}: diffjax has 0 and 1")
    model = dict(
        arch="unet", channels=channels, channel_mult=tuple(w // channels for w in widths),
        num_res_blocks=int(config["layers_per_block"]),
        attention_resolutions=tuple(size // 2**level for level, has in enumerate(attention) if has),
        **heads, dropout=float(config["dropout"]), use_scale_shift_norm=False, resblock_updown=False,
        conv_resample=True, downsample_padding="same" if config["downsample_padding"] == 0 else "symmetric",
        norm_groups=int(config["norm_num_groups"]), norm_eps=float(config["norm_eps"]),
        sinusoid_cos_first=bool(config["flip_sin_to_cos"]), sinusoid_freq_shift=int(config["freq_shift"]),
        attention_implementation="xla",
    )
    return model, int(config["out_channels"]), (size, size, int(config["in_channels"]))


_RES_BLOCK = dict(norm_0="norm1", conv_0="conv1", emb_proj="time_emb_proj", norm_1="norm2", conv_1="conv2",
                  skip="conv_shortcut")  # diffusers' ResnetBlock2D names of a ResBlock's parts


def _res_block(state: StateDict, prefix: str) -> dict:
    return state.res_block(prefix, _RES_BLOCK)


def _attention(state: StateDict, prefix: str, head_dim: int | None) -> dict:
    """diffusers' separate q, k, v (each [C, C]) -> one [C, 3C] projection laid out per head as
    [q, k, v] (``blocks.AttentionBlock``)."""
    q, k, v = (state.dense(f"{prefix}.to_{name}") for name in "qkv")
    channels = q["kernel"].shape[0]
    heads = 1 if head_dim is None else channels // head_dim

    def fuse(part: str) -> np.ndarray:
        split = [np.split(p[part], heads, axis=-1) for p in (q, k, v)]
        return np.concatenate([piece for head in zip(*split) for piece in head], axis=-1)

    return {"norm": state.norm(f"{prefix}.group_norm"), "qkv": {"kernel": fuse("kernel"), "bias": fuse("bias")},
            "proj_out": state.dense(f"{prefix}.to_out.0")}


def convert_params(state: StateDict, model: dict[str, Any], attention: list[bool]) -> dict:
    """The Flax params of ``UNet(**model)`` from a UNet2DModel state dict (every tensor used);
    ``attention[level]``: whether that level has attention."""
    levels, blocks = len(model["channel_mult"]), model["num_res_blocks"]
    head_dim = model["num_head_channels"]
    params = {"conv_in": state.conv("conv_in"),
              "time_embed": {"dense_0": state.dense("time_embedding.linear_1"),
                             "dense_1": state.dense("time_embedding.linear_2")}}
    for level in range(levels):
        for i in range(blocks):
            params[f"down_{level}_res_{i}"] = _res_block(state, f"down_blocks.{level}.resnets.{i}")
            if attention[level]:
                params[f"down_{level}_attn_{i}"] = _attention(state, f"down_blocks.{level}.attentions.{i}", head_dim)
        if level != levels - 1:
            params[f"down_{level}_resample"] = {"conv": state.conv(f"down_blocks.{level}.downsamplers.0.conv")}
    params["mid_res_0"] = _res_block(state, "mid_block.resnets.0")
    params["mid_attn"] = _attention(state, "mid_block.attentions.0", head_dim)
    params["mid_res_1"] = _res_block(state, "mid_block.resnets.1")
    for level in range(levels):
        up = f"up_blocks.{levels - 1 - level}"
        for i in range(blocks + 1):
            params[f"up_{level}_res_{i}"] = _res_block(state, f"{up}.resnets.{i}")
            if attention[level]:
                params[f"up_{level}_attn_{i}"] = _attention(state, f"{up}.attentions.{i}", head_dim)
        if level != 0:
            params[f"up_{level}_resample"] = {"conv": state.conv(f"{up}.upsamplers.0.conv")}
    params["norm_out"] = state.norm("conv_norm_out")
    params["conv_out"] = state.conv("conv_out")
    state.finish()
    return params


def load_diffusers_unet(folder: str) -> ConvertedNetwork:
    """Read a diffusers ``UNet2DModel`` folder into diffjax's ``UNet``: its hyperparameters and
    params, checked against the network's own parameter shapes.

    Raises:
      CheckpointError: no config.json or weights file, an option diffjax's UNet lacks, or
        weights that do not fit the config.
    """
    config = read_config(folder)
    model, out_channels, image_shape = unet_hyperparameters(config)
    paths = [os.path.join(folder, name) for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not paths:
        raise CheckpointError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES)}): download the model folder's "
                              f"weights file too")
    state = StateDict(read_state_dict(paths[0]), paths[0])
    params = convert_params(state, model, _attention_levels(config))
    network = make_network(**model, out_channels=out_channels)
    check_params(params, abstract_params(network, image_shape), paths[0])
    return ConvertedNetwork(model, out_channels, image_shape, params)
