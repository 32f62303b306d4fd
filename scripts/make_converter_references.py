"""Tiny random-weight diffusers UNet2DModel folders and guided_diffusion UNetModel checkpoints with
the outputs the original code computes, for ``tests/models/test_convert_*.py`` (small enough to keep in the repository; the larger
references of ``../shared/weights_reference`` are checked too where that folder exists).

usage: python scripts/make_converter_references.py [OUT_DIR]   (default tests/models/data/converters)
Needs torch, diffusers, safetensors and guided-diffusion-sdk, in a virtual environment of their own (diffjax does not
depend on them). Every parameter is redrawn, so no layer is zero and a wrong mapping shows.
Each folder: config.json + diffusion_pytorch_model.safetensors as save_pretrained writes them
io.npz: x [4, C, H, W] float32,
t int64, out (float32 forward) and out64 (the same model in float64). The openai folders hold
model.safetensors (guided_diffusion's key names), config.json (the constructor's arguments;
an upsampler's also low_res_size) and io.npz (with y, the labels, for the class-conditional ones,
and low_res for the upsampler).
"""

import json
import os
import sys

import numpy as np
import torch
from diffusers import UNet2DModel

# Two layouts: DDPM's CIFAR-10 network (sin-first sinusoid, TF padding, one head) and a 6-level
# one with improved DDPM's conventions and several heads (cos-first, symmetric padding).
MODELS = {
    "diffusers_ddpm_cifar10_tiny": dict(
        sample_size=16, block_out_channels=(8, 16, 16, 16), norm_num_groups=4, layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6,
    ),
    "diffusers_six_levels_heads_tiny": dict(
        sample_size=32, block_out_channels=(8, 8, 16, 16, 32, 32), norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        attention_head_dim=8, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, norm_eps=1e-5,
    ),
}


# guided_diffusion's GroupNorm32 needs widths that are multiples of 32. (a) improved DDPM's
# CIFAR-10 options (learned sigma, scale-shift norm, heads by count, legacy attention order);
# (b) ADM's (class-conditional, BigGAN up/down res blocks, heads by width, the new order);
# (c) ADM's noisy classifier (EncoderUNetModel, attention pooling) and one with the adaptive
# (mean) pool; (d) ADM's class-conditional upsampler (SuperResModel, x4).
OPENAI = {
    "openai_iddpm_tiny": dict(
        image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(2,),
        dropout=0.3, channel_mult=(1, 1), num_classes=None, num_heads=2, num_head_channels=-1, num_heads_upsample=-1,
        use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False,
    ),
    "openai_adm_classcond_tiny": dict(
        image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(1, 2),
        dropout=0.0, channel_mult=(1, 1), num_classes=10, num_heads=1, num_head_channels=16, num_heads_upsample=-1,
        use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True,
    ),
}
OPENAI_CLASSIFIERS = {
    "openai_adm_classifier_tiny": dict(
        image_size=8, in_channels=3, model_channels=32, out_channels=10, num_res_blocks=1, attention_resolutions=(2,),
        channel_mult=(1, 1), num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True, pool="attention",
    ),
    "openai_classifier_adaptive_tiny": dict(
        image_size=8, in_channels=3, model_channels=32, out_channels=5, num_res_blocks=1, attention_resolutions=(2,),
        channel_mult=(1, 2), num_heads=2, use_scale_shift_norm=False, resblock_updown=False, pool="adaptive",
    ),
}
OPENAI_SUPERRES = {
    "openai_adm_superres_tiny": dict(
        image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(2,),
        dropout=0.0, channel_mult=(1, 1), num_classes=10, num_heads=1, num_head_channels=16, num_heads_upsample=-1,
        use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False, low_res_size=4,
    ),
}


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Redraw every parameter: norm scales near 1, matrices with variance 1 / fan_in, biases small."""
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.GroupNorm) and name == "weight":
                    param.copy_(1 + 0.2 * torch.randn_like(param))
                elif param.dim() > 1:
                    param.copy_(torch.randn_like(param) / np.sqrt(np.prod(param.shape[1:])))
                else:
                    param.copy_(0.2 * torch.randn_like(param))
    return model.eval()


def main(out: str) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for name, kwargs in MODELS.items():
        folder = os.path.join(out, name)
        model = randomise(UNet2DModel(**kwargs))
        model.save_pretrained(folder, safe_serialization=True)
        size = kwargs["sample_size"]
        x = rng.standard_normal((4, 3, size, size)).astype(np.float32)
        t = np.array([0, 17, 503, 999], np.int64)
        with torch.no_grad():
            out32 = model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
            out64 = model.double()(torch.from_numpy(x).double(), torch.from_numpy(t)).sample.numpy()
        np.savez(os.path.join(folder, "io.npz"), x=x, t=t, out=out32, out64=out64)
        params = sum(p.numel() for p in model.parameters())
        print(name, f"{params:,} params", "max |out - out64|", float(np.abs(out32 - out64).max()))
    for name, kwargs in OPENAI.items():
        write_openai(os.path.join(out, name), kwargs, rng)
    for name, kwargs in OPENAI_CLASSIFIERS.items():
        write_openai(os.path.join(out, name), kwargs, rng, kind="classifier")
    for name, kwargs in OPENAI_SUPERRES.items():
        write_openai(os.path.join(out, name), kwargs, rng, kind="superres")
    with open(os.path.join(out, "versions.json"), "w") as f:
        import diffusers
        json.dump({"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__}, f)


def sinusoid64(timesteps, dim, max_period=10000):
    """guided_diffusion's timestep embedding [cos, sin] of t * exp(-ln(max_period) i / half), in float64."""
    half = dim // 2
    freqs = torch.exp(-np.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    args = timesteps[:, None].double() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def write_openai(folder, kwargs, rng, kind="unet"):
    """One guided_diffusion network (``kind``: "unet" UNetModel, "classifier" EncoderUNetModel,
    "superres" SuperResModel, whose ``low_res_size`` is not a constructor argument)."""
    from guided_diffusion import nn as gnn
    from guided_diffusion import unet as gunet
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    classes = {"unet": gunet.UNetModel, "classifier": gunet.EncoderUNetModel, "superres": gunet.SuperResModel}
    model = randomise(classes[kind](**{k: v for k, v in kwargs.items() if k != "low_res_size"}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(kwargs, f, indent=1)
    size = kwargs["image_size"]
    x = rng.standard_normal((4, 3, size, size)).astype(np.float32)
    t = np.array([0, 17, 503, 999], np.int64)
    extra = {}
    if kwargs.get("num_classes"):
        extra["y"] = rng.integers(0, kwargs["num_classes"], 4).astype(np.int64)
    if kind == "superres":
        low = kwargs["low_res_size"]
        extra["low_res"] = rng.standard_normal((4, 3, low, low)).astype(np.float32)
    labels = {"y": torch.from_numpy(extra["y"])} if "y" in extra else {}
    low_res = torch.from_numpy(extra["low_res"]) if kind == "superres" else None
    inputs = {"low_res": low_res} if kind == "superres" else {}
    with torch.no_grad():
        out32 = model(torch.from_numpy(x), torch.from_numpy(t), **labels, **inputs).numpy()
    # In float64: guided_diffusion casts its input to model.dtype, builds the timestep sinusoid in
    # the default dtype and runs GroupNorm32 in float32; all three are made float64 for this run.
    float32_norm, float32_sinusoid = gnn.GroupNorm32.forward, gunet.timestep_embedding
    gnn.GroupNorm32.forward = torch.nn.GroupNorm.forward
    gunet.timestep_embedding = sinusoid64
    torch.set_default_dtype(torch.float64)
    model.double().dtype = torch.float64
    try:
        with torch.no_grad():
            inputs64 = {"low_res": low_res.double()} if kind == "superres" else {}
            out64 = model(torch.from_numpy(x).double(), torch.from_numpy(t), **labels, **inputs64).numpy()
    finally:
        torch.set_default_dtype(torch.float32)
        gnn.GroupNorm32.forward, gunet.timestep_embedding = float32_norm, float32_sinusoid
    np.savez(os.path.join(folder, "io.npz"), x=x, t=t, out=out32, out64=out64, **extra)
    params = sum(p.numel() for p in model.parameters())
    print(os.path.basename(folder), f"{params:,} params", "max |out - out64|", float(np.abs(out32 - out64).max()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "models", "data", "converters"))
