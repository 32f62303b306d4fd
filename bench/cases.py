"""The benchmarked configurations: a diffjax experiment with overrides, and the diffusers
``UNet2DModel`` built to the same architecture.

A case is a plain dict (it is passed to the worker processes as JSON):

* ``experiment``: a file in ``experiments/`` (its config and recipe, as ``launch.py``
  builds them with ``diffjax.run.experiments``);
* ``model_preset`` (optional): a network preset (``diffjax.models.PRESETS``) written into
  that config's ``model`` section with ``set_model`` before the overrides;
* ``overrides``: ``{"group.key": value}`` applied to that config (batch size, model keys...);
* ``torch_unet``: keyword arguments of ``diffusers.UNet2DModel`` with the same layers and
  (for DDPM CIFAR-10 and digits, checked at run time) the same parameter count.

The full run uses the paper's DDPM CIFAR-10 UNet at batch 8 and the default ``digits``
experiment at batch 128; ``--quick`` swaps in the 45k-parameter ``tiny`` UNet (8x8x3) and
the digits UNet at batch 16, so that the whole script runs in about a minute.
"""

from __future__ import annotations

from typing import Any

# DDPM's TF UNet (128 ch, mult 1,2,2,2, 2 res blocks, attention at 16x16, one head,
# GroupNorm(32, eps 1e-6)); exactly 35,746,307 parameters in both frameworks.
DDPM_CIFAR10_TORCH = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32,
    norm_eps=1e-6,
    dropout=0.1,
    act_fn="silu",
    attention_head_dim=None,
    time_embedding_type="positional",
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
)

# diffjax's "digits" UNet (32 ch, mult 1,2, 1 res block, attention at 4x4, one head,
# GroupNorm(32, eps 1e-5), no dropout): 701,345 parameters in both frameworks.
DIGITS_TORCH = dict(
    DDPM_CIFAR10_TORCH,
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_eps=1e-5,
    dropout=0.0,
)

# diffjax's "tiny" UNet (8 ch, mult 1,2, 1 res block, attention at 4x4 with 2 heads,
# GroupNorm(4)); dropout 0.1 as the cifar10 experiment sets it.
TINY_TORCH = dict(
    DIGITS_TORCH,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    attention_head_dim=8,  # 16 channels / 2 heads
    dropout=0.1,
)


def cases(quick: bool) -> dict[str, dict[str, Any]]:
    """The two train-step cases, ``large`` (also used for sampling, compile time and
    FLOPs) and ``small``."""
    if quick:
        large = dict(
            label="tiny UNet (quick), batch 8, 8x8x3",
            experiment="ddpm_cifar10",
            model_preset="tiny",
            overrides={"train.batch_size": 8, "data.image_size": 8},
            torch_unet=TINY_TORCH,
        )
        small = dict(
            label="digits UNet (quick), batch 16, 8x8x1",
            experiment="digits_ddpm",
            overrides={"train.batch_size": 16},
            torch_unet=DIGITS_TORCH,
        )
    else:
        large = dict(
            label="DDPM CIFAR-10 UNet, batch 8, 32x32x3",
            experiment="ddpm_cifar10",
            overrides={"train.batch_size": 8},
            torch_unet=DDPM_CIFAR10_TORCH,
        )
        small = dict(
            label="digits UNet, batch 128, 8x8x1",
            experiment="digits_ddpm",
            overrides={},
            torch_unet=DIGITS_TORCH,
        )
    return {"large": large, "small": small}


def build_config(case: dict[str, Any]):
    """The experiment (module) and its locked config with the case's preset and overrides."""
    # Here, not at the top: diffjax imports JAX, and the workers import this module before
    # pin_threads has set the thread counts that JAX reads when it starts.
    from diffjax.run.config import set_model
    from diffjax.run.experiments import load_experiment

    experiment = load_experiment(case["experiment"])
    config = experiment.get_config(None)
    if case.get("model_preset"):
        set_model(config, case["model_preset"])
    for key, value in case["overrides"].items():
        group, name = key.split(".")
        config[group][name] = value
    config.lock()
    return experiment, config
