"""openai's improved-diffusion / guided-diffusion checkpoints -> diffjax's networks: ``UNetModel``
and ``SuperResModel`` (ADM's upsamplers) into the ``UNet``, ``EncoderUNetModel`` (ADM's noisy
classifiers) into the ``NoisyClassifier``.

Released as ``.pt`` files (``torch.save`` of the state dict; read with ``weights_only=True``
only, which needs torch) or converted to ``.safetensors`` (read without torch). The weights do
not say which network they are: give the model flags of guided_diffusion's ``script_util``, as
the repositories' READMEs list them (``unet_flags``: ``image_size``, ``num_channels``,
``num_res_blocks``, ``channel_mult`` "1,2,2,2", ``attention_resolutions`` "16,8" (pixel
sizes), ``learn_sigma``, ``class_cond``, ``num_heads``, ``num_head_channels``,
``use_scale_shift_norm``, ``resblock_updown``, ``use_new_attention_order``, ``dropout``), or the
``UNetModel`` constructor's own arguments (``attention_resolutions`` there are downsampling
rates); ``superres_flags`` and ``classifier_flags`` do the same for ``sr_create_model``'s and
``create_classifier``'s flags.

The networks are the same computation: guided_diffusion's ``input_blocks`` are diffjax's
``conv_in``, down res blocks (+ attention) and downsamplers in order, ``middle_block`` its
``mid_*``, ``output_blocks`` its up res blocks (+ attention, + upsampler); GroupNorm32 is
``norm_groups=32`` in float32; ``[cos, sin]`` timestep sinusoids; convs with padding 1 are
``downsample_padding="symmetric"``. The legacy attention (``use_new_attention_order=False``)
lays its qkv out per head as [q, k, v], which is diffjax's layout; the new order (q, k, v, each
split into heads) is permuted into it. A class-conditional model's ``label_emb`` gains the
null-class row diffjax's embedding has (zeros: no class embedding), unused by its labels.
``SuperResModel`` is a ``UNetModel`` of 2C input channels fed [x, bilinear(low_res)]
(``superres.upsampled_input``). ``EncoderUNetModel`` is the same encoder with ``out``: GroupNorm,
SiLU and its pool (``pool="attention"``: ``AttentionPool2d``, the classifier's ``AttentionPool``;
``"adaptive"``: the mean and a 1x1 conv, diffjax's ``pool="mean"``); it is told the integer
timestep, which the classifier family's ``time_input="chain_step"`` gives it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffjax.models.configs import make_network
from diffjax.models.denoiser import abstract_params
from diffjax.models.state_dicts import CheckpointError, ConvertedNetwork, StateDict, check_params, read_state_dict

__all__ = ["classifier_flags", "load_openai_classifier", "load_openai_superres", "load_openai_unet", "superres_flags",
           "unet_flags"]

IMAGENET_CLASSES = 1000  # guided_diffusion's NUM_CLASSES for class_cond=True
_DEFAULT_MULT = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
_SUPERRES_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}  # sr_create_model's
_CLASSIFIER_MULT = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}  # create_classifier's
_POOLS = {"attention": "attention", "adaptive": "mean"}  # EncoderUNetModel's pool -> NoisyClassifier's
_ENCODER_CONSTRUCTOR = ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
                        "attention_resolutions", "dropout", "channel_mult", "conv_resample", "dims", "use_checkpoint",
                        "use_fp16", "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm",
                        "resblock_updown", "use_new_attention_order", "pool")
_CONSTRUCTOR = ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
                "attention_resolutions", "dropout", "channel_mult", "num_classes", "use_checkpoint", "use_fp16",
                "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "resblock_updown",
                "use_new_attention_order")


def unet_flags(image_size: int, num_channels: int, num_res_blocks: int, channel_mult: str = "",
               learn_sigma: bool = False, class_cond: bool = False, attention_resolutions: str = "16",
               num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
               use_scale_shift_norm: bool = False, dropout: float = 0.0, resblock_updown: bool = False,
               use_new_attention_order: bool = False, **ignored: Any) -> dict[str, Any]:
    """``UNetModel``'s constructor arguments from ``script_util``'s model flags, as
    ``script_util.create_model`` derives them (flags of the diffusion, e.g. ``noise_schedule``,
    are ignored)."""
    if channel_mult == "":
        if image_size not in _DEFAULT_MULT:
            raise CheckpointError(f"image_size {image_size} has no default channel_mult here: give channel_mult")
        mult = _DEFAULT_MULT[image_size]
    else:
        mult = tuple(int(m) for m in str(channel_mult).split(","))
    rates = _downsampling_rates(image_size, attention_resolutions)
    return dict(image_size=image_size, in_channels=3, model_channels=num_channels, out_channels=6 if learn_sigma else 3,
                num_res_blocks=num_res_blocks, attention_resolutions=rates, dropout=dropout, channel_mult=mult,
                num_classes=IMAGENET_CLASSES if class_cond else None, num_heads=num_heads,
                num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
                use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
                use_new_attention_order=use_new_attention_order)


def _downsampling_rates(image_size: int, resolutions: str) -> tuple[int, ...]:
    """script_util's ``attention_resolutions`` flag ("16,8": pixel sizes) as the constructors'
    downsampling rates (``image_size // resolution``)."""
    return tuple(image_size // int(res) for res in str(resolutions).split(","))


def superres_flags(large_size: int, small_size: int, num_channels: int, num_res_blocks: int,
                   learn_sigma: bool = False, class_cond: bool = False, attention_resolutions: str = "16",
                   num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                   use_scale_shift_norm: bool = False, dropout: float = 0.0, resblock_updown: bool = False,
                   **ignored: Any) -> dict[str, Any]:
    """``SuperResModel``'s constructor arguments (plus ``low_res_size``) from ``script_util``'s
    upsampler flags, as ``sr_create_model`` derives them (its channel_mult follows large_size)."""
    if large_size not in _SUPERRES_MULT:
        raise CheckpointError(f"large_size {large_size} is not one of sr_create_model's {sorted(_SUPERRES_MULT)}")
    args = unet_flags(large_size, num_channels, num_res_blocks, ",".join(map(str, _SUPERRES_MULT[large_size])),
                      learn_sigma, class_cond, attention_resolutions, num_heads, num_head_channels,
                      num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown)
    return args | {"low_res_size": small_size}


def classifier_flags(image_size: int, classifier_width: int = 128, classifier_depth: int = 2,
                     classifier_attention_resolutions: str = "32,16,8", classifier_use_scale_shift_norm: bool = True,
                     classifier_resblock_updown: bool = True, classifier_pool: str = "attention",
                     **ignored: Any) -> dict[str, Any]:
    """``EncoderUNetModel``'s constructor arguments from ``script_util``'s classifier flags, as
    ``create_classifier`` derives them (1000 classes, 64 channels per head)."""
    if image_size not in _CLASSIFIER_MULT:
        raise CheckpointError(f"image_size {image_size} has no classifier channel_mult here "
                              f"(create_classifier's 512 has a 0.5 multiplier; diffjax's are integers)")
    rates = _downsampling_rates(image_size, classifier_attention_resolutions)
    return dict(image_size=image_size, in_channels=3, model_channels=classifier_width, out_channels=IMAGENET_CLASSES,
                num_res_blocks=classifier_depth, attention_resolutions=rates, channel_mult=_CLASSIFIER_MULT[image_size],
                num_head_channels=64, use_scale_shift_norm=classifier_use_scale_shift_norm,
                resblock_updown=classifier_resblock_updown, pool=classifier_pool)


def unet_hyperparameters(args: dict[str, Any]) -> tuple[dict[str, Any], int | None, tuple[int, int, int]]:
    """(diffjax ``UNet`` hyperparameters with ``arch``, num_classes, image shape) of ``UNetModel``'s
    constructor arguments."""
    model, shape = _hyperparameters(args, "UNetModel", _CONSTRUCTOR)
    unet = dict(arch="unet", **model, sinusoid_cos_first=True, sinusoid_freq_shift=0, attention_implementation="xla")
    return unet, args.get("num_classes"), shape


def classifier_hyperparameters(args: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """(diffjax ``NoisyClassifier`` hyperparameters with ``arch``, image shape) of
    ``EncoderUNetModel``'s constructor arguments."""
    model, shape = _hyperparameters(args, "EncoderUNetModel", _ENCODER_CONSTRUCTOR)
    pool = args.get("pool", "adaptive")
    if pool not in _POOLS:
        raise CheckpointError(f"pool {pool!r}: diffjax's classifier has {sorted(_POOLS)} (as 'attention' and 'mean')")
    return dict(arch="classifier", **model, pool=_POOLS[pool], attention_implementation="xla"), shape


def _hyperparameters(args: dict[str, Any], name: str, known: tuple[str, ...]) -> tuple[dict, tuple[int, int, int]]:
    """The hyperparameters ``UNetModel`` and ``EncoderUNetModel`` share (diffjax's names, in its
    order), and the image shape."""
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise CheckpointError(f"{unknown} are not {name} arguments (known: {list(known)})")
    heads_up = args.get("num_heads_upsample", -1)
    if heads_up not in (-1, args.get("num_heads", 1)):
        raise CheckpointError(f"num_heads_upsample={heads_up} differs from num_heads: diffjax's UNet has one head count")
    if args.get("dims", 2) != 2:
        raise CheckpointError(f"dims={args['dims']}: diffjax's networks are 2-D")
    mult = tuple(args["channel_mult"])
    if any(float(m) != int(m) for m in mult):
        raise CheckpointError(f"channel_mult {mult}: diffjax's networks have integer multipliers")
    size = int(args["image_size"])
    head_channels = args.get("num_head_channels", -1)
    model = dict(
        channels=int(args["model_channels"]), channel_mult=tuple(int(m) for m in mult),
        num_res_blocks=int(args["num_res_blocks"]),
        attention_resolutions=tuple(sorted({size // int(rate) for rate in args["attention_resolutions"]},
                                           reverse=True)),
        num_heads=int(args.get("num_heads", 1)), num_head_channels=None if head_channels == -1 else int(head_channels),
        dropout=float(args.get("dropout", 0.0)), use_scale_shift_norm=bool(args.get("use_scale_shift_norm", False)),
        resblock_updown=bool(args.get("resblock_updown", False)), conv_resample=bool(args.get("conv_resample", True)),
        downsample_padding="symmetric", norm_groups=32, norm_eps=1e-5,
    )
    return model, (size, size, int(args.get("in_channels", 3)))


_RES_BLOCK = dict(norm_0="in_layers.0", conv_0="in_layers.2", emb_proj="emb_layers.1", norm_1="out_layers.0",
                  conv_1="out_layers.3", skip="skip_connection")  # guided_diffusion's ResBlock names


def _res_block(state: StateDict, prefix: str) -> dict:
    return state.res_block(prefix, _RES_BLOCK)


def _resample(state: StateDict, model: dict[str, Any], prefix: str, conv: str) -> dict | None:
    """A down- or upsampler's params: a res block (``resblock_updown``), the conv ``prefix.conv``
    (``conv_resample``) or none."""
    if model["resblock_updown"]:
        return _res_block(state, prefix)
    return {"conv": state.conv(f"{prefix}.{conv}")} if model["conv_resample"] else None


def _attention(state: StateDict, prefix: str, heads: int, new_order: bool) -> dict:
    """An ``AttentionBlock``: norm, qkv (a 1-D conv [3C, C, 1]) and proj_out, the qkv's output
    channels permuted from the new order (three, heads, d) to the legacy (heads, three, d)."""
    qkv = state.dense(f"{prefix}.qkv")
    if new_order:
        width = qkv["bias"].shape[0] // 3

        def legacy(a: np.ndarray) -> np.ndarray:
            split = a.reshape(*a.shape[:-1], 3, heads, width // heads)
            return np.swapaxes(split, -3, -2).reshape(a.shape)

        qkv = {"kernel": legacy(qkv["kernel"]), "bias": legacy(qkv["bias"])}
    return {"norm": state.norm(f"{prefix}.norm"), "qkv": qkv, "proj_out": state.dense(f"{prefix}.proj_out")}


def _heads(model: dict[str, Any], width: int) -> int:
    return model["num_heads"] if model["num_head_channels"] is None else width // model["num_head_channels"]


def _encoder_params(state: StateDict, model: dict[str, Any], image_size: int, new_order: bool) -> dict:
    """The params of ``unet.encoder`` (conv_in, the down path, the middle block) and the time
    embedding, from ``input_blocks``, ``middle_block`` and ``time_embed``."""
    ch, mult, blocks = model["channels"], model["channel_mult"], model["num_res_blocks"]
    attention_at = set(model["attention_resolutions"])
    params = {"conv_in": state.conv("input_blocks.0.0"),
              "time_embed": {"dense_0": state.dense("time_embed.0"), "dense_1": state.dense("time_embed.2")}}
    index = 1
    for level, m in enumerate(mult):
        size = image_size // 2**level
        for i in range(blocks):
            params[f"down_{level}_res_{i}"] = _res_block(state, f"input_blocks.{index}.0")
            if size in attention_at:
                params[f"down_{level}_attn_{i}"] = _attention(state, f"input_blocks.{index}.1", _heads(model, ch * m),
                                                              new_order)
            index += 1
        if level != len(mult) - 1:
            resample = _resample(state, model, f"input_blocks.{index}.0", "op")
            if resample is not None:
                params[f"down_{level}_resample"] = resample
            index += 1
    heads = _heads(model, ch * mult[-1])
    params["mid_res_0"] = _res_block(state, "middle_block.0")
    params["mid_attn"] = _attention(state, "middle_block.1", heads, new_order)
    params["mid_res_1"] = _res_block(state, "middle_block.2")
    return params


def convert_params(state: StateDict, model: dict[str, Any], image_size: int, new_order: bool,
                   num_classes: int | None) -> dict:
    """The Flax params of ``UNet(**model)`` from a ``UNetModel`` state dict (every tensor used)."""
    ch, mult, blocks = model["channels"], model["channel_mult"], model["num_res_blocks"]
    attention_at = set(model["attention_resolutions"])
    params = _encoder_params(state, model, image_size, new_order)
    if num_classes is not None:
        table = state.take("label_emb.weight")
        params["label_embed"] = {"embedding": np.concatenate([table, np.zeros_like(table[:1])])}
    index = 0
    for level, m in reversed(list(enumerate(mult))):
        size = image_size // 2**level
        for i in range(blocks + 1):
            prefix, layer = f"output_blocks.{index}", 1
            params[f"up_{level}_res_{i}"] = _res_block(state, f"{prefix}.0")
            if size in attention_at:
                params[f"up_{level}_attn_{i}"] = _attention(state, f"{prefix}.1", _heads(model, ch * m), new_order)
                layer = 2
            if level != 0 and i == blocks:
                resample = _resample(state, model, f"{prefix}.{layer}", "conv")
                if resample is not None:
                    params[f"up_{level}_resample"] = resample
            index += 1
    params["norm_out"] = state.norm("out.0")
    params["conv_out"] = state.conv("out.2")
    state.finish()
    return params


def convert_classifier_params(state: StateDict, model: dict[str, Any], image_size: int, new_order: bool) -> dict:
    """The Flax params of ``NoisyClassifier(**model)`` from an ``EncoderUNetModel`` state dict: its
    encoder, then ``out.0`` (the norm) and the head: ``out.2`` (``AttentionPool2d``: positional
    embedding [C, HW + 1], qkv and c_proj 1-D convs) or ``out.3`` (the adaptive pool's 1x1 conv)."""
    params = _encoder_params(state, model, image_size, new_order)
    params["norm_out"] = state.norm("out.0")
    if model["pool"] == "attention":
        params["head"] = {"positional_embedding": state.take("out.2.positional_embedding").T,
                          "qkv": state.dense("out.2.qkv_proj"), "proj": state.dense("out.2.c_proj")}
    else:
        params["head"] = state.dense("out.3")
    state.finish()
    return params


def load_openai_unet(path: str, args: dict[str, Any]) -> ConvertedNetwork:
    """Read an improved-diffusion / guided-diffusion ``UNetModel`` checkpoint into diffjax's ``UNet``.

    Args:
      path: the ``.pt`` (torch needed) or ``.safetensors`` state dict.
      args: ``UNetModel``'s constructor arguments (``unet_flags`` makes them from script_util's flags).

    Raises:
      CheckpointError: a missing or unreadable file, an option diffjax's UNet lacks, or weights
        that do not fit ``args``.
    """
    return _load_unet(path, args, input_channels=int(args.get("in_channels", 3)), low_res_shape=None)


def load_openai_superres(path: str, args: dict[str, Any]) -> ConvertedNetwork:
    """Read a guided-diffusion ``SuperResModel`` checkpoint (ADM's upsamplers) into diffjax's ``UNet``,
    whose input is ``superres.upsampled_input(x, low_res)``: x and the bilinearly upsampled
    low-resolution image, concatenated (2C channels).

    Args:
      path: the ``.pt`` or ``.safetensors`` state dict.
      args: ``SuperResModel``'s constructor arguments (``in_channels`` the image's C) and
        ``low_res_size``, the low-resolution side (``superres_flags`` makes them).
    """
    args = dict(args)
    if "low_res_size" not in args:
        raise CheckpointError("a SuperResModel's args need low_res_size (the upsampler's input side, e.g. 64)")
    low = int(args.pop("low_res_size"))
    channels = int(args.get("in_channels", 3))
    return _load_unet(path, args, input_channels=2 * channels, low_res_shape=(low, low, channels))


def _load_unet(path: str, args: dict[str, Any], input_channels: int,
               low_res_shape: tuple[int, int, int] | None) -> ConvertedNetwork:
    model, num_classes, image_shape = unet_hyperparameters(args)
    state = StateDict(read_state_dict(path), path)
    params = convert_params(state, model, image_shape[0], bool(args.get("use_new_attention_order", False)),
                            num_classes)
    out_channels = int(args["out_channels"])
    network = make_network(**model, out_channels=out_channels, num_classes=num_classes)
    check_params(params, abstract_params(network, (*image_shape[:2], input_channels)), path)
    return ConvertedNetwork(model, out_channels, image_shape, params, low_res_shape)


def load_openai_classifier(path: str, args: dict[str, Any]) -> ConvertedNetwork:
    """Read a guided-diffusion ``EncoderUNetModel`` checkpoint (ADM's noisy classifiers) into
    diffjax's ``NoisyClassifier``; it takes the integer timestep as ``t``, as ADM's does.

    Args:
      path: the ``.pt`` or ``.safetensors`` state dict.
      args: ``EncoderUNetModel``'s constructor arguments (``classifier_flags`` makes them).
    """
    model, image_shape = classifier_hyperparameters(args)
    state = StateDict(read_state_dict(path), path)
    params = convert_classifier_params(state, model, image_shape[0],
                                       bool(args.get("use_new_attention_order", False)))
    out_channels = int(args["out_channels"])
    network = make_network(**model, out_channels=out_channels)
    check_params(params, abstract_params(network, image_shape), path)
    return ConvertedNetwork(model, out_channels, image_shape, params)
