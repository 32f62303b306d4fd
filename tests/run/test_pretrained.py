"""The released networks' full-size layouts (``experiments/pretrained.py``, the converters'
hyperparameters of the releases' configs and flags) have PyTorch's parameter counts, checked with
abstract shapes; each variant's config is the network its weights describe."""

import json

import pytest

from diffjax.models import abstract_params, count_params, make_network
from diffjax.models.convert_diffusers import read_config, unet_hyperparameters
from diffjax.models.convert_openai import classifier_hyperparameters, superres_flags
from diffjax.models.convert_openai import unet_hyperparameters as openai_hyperparameters
from diffjax.models.state_dicts import ConvertedNetwork
from diffjax.run.experiments import load_experiment
from diffjax.run.pretrained import PretrainedError, check_fits

# The hub folders' config.json (google/ddpm-cifar10-32, google/ddpm-celebahq-256).
DDPM_CIFAR10_32 = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
DDPM_CELEBAHQ_256 = DDPM_CIFAR10_32 | {
    "block_out_channels": [128, 128, 256, 256, 512, 512], "sample_size": 256,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
}
# sum(p.numel() for p in model.parameters()) of guided_diffusion's constructors (torch 2.13.0,
# guided-diffusion-sdk 1.0.0; improved-diffusion's CIFAR-10 UNetModel built directly, as
# create_model has no 32x32 default), and the DDPM paper's 35.7M / 114M as diffusers' counts.
TORCH_COUNTS = {"ddpm_cifar10": 35_746_307, "ddpm_celebahq256": 113_673_219, "iddpm_cifar10": 52_546_438,
                "iddpm_imagenet64": 121_063_942, "adm_imagenet64": 295_904_454,
                "adm_imagenet64_classifier": 65_438_568}
ADM_UPSAMPLER_64_256 = 311_795_910


def converted_abstract(config, model, out_channels, num_classes):
    """A ``ConvertedNetwork`` of abstract params (shapes only) for ``model``'s hyperparameters."""
    size, channels = config.data.image_size, config.data.channels
    network = make_network("unet", out_channels=out_channels, num_classes=num_classes,
                           **{k: v for k, v in model.items() if k != "arch"})
    return ConvertedNetwork(model, out_channels, (size, size, channels),
                            abstract_params(network, (size, size, channels)))


def released_network(variant, tmp_path):
    config = load_experiment("pretrained").get_config(variant)
    if config.pretrained.format == "openai_classifier":
        model, shape = classifier_hyperparameters(config.pretrained.args.to_dict())
        network = make_network("classifier", out_channels=config.data.num_classes,
                               **{k: v for k, v in model.items() if k != "arch"})
        return config, ConvertedNetwork(model, config.data.num_classes, shape, abstract_params(network, shape)), None
    if config.pretrained.format == "diffusers":
        hub = {"ddpm_cifar10": DDPM_CIFAR10_32, "ddpm_celebahq256": DDPM_CELEBAHQ_256}[variant]
        (tmp_path / "config.json").write_text(json.dumps(hub))
        model, out_channels, _ = unet_hyperparameters(read_config(str(tmp_path)))
        num_classes = None
    else:
        args = config.pretrained.args.to_dict()
        model, num_classes, _ = openai_hyperparameters(args)
        out_channels = args["out_channels"]
    return config, converted_abstract(config, model, out_channels, num_classes), num_classes


@pytest.mark.parametrize("variant", sorted(TORCH_COUNTS))
def test_released_layouts_have_pytorchs_parameter_counts(variant, tmp_path):
    config, converted, num_classes = released_network(variant, tmp_path)
    null_row = 4 * config.model.channels if num_classes else 0  # diffjax's null-class embedding row
    assert count_params(converted.params) - null_row == TORCH_COUNTS[variant]
    check_fits(config, converted, config.data.num_classes if variant.endswith("classifier") else num_classes or 0)


def test_a_network_that_is_not_the_configs_is_refused_by_name(tmp_path):
    config, converted, _ = released_network("ddpm_cifar10", tmp_path)
    config.model.sinusoid_cos_first = True  # diffjax's own convention, not DDPM's TensorFlow one
    with pytest.raises(PretrainedError, match="sinusoid_cos_first=False"):
        check_fits(config, converted, 0)
    config, converted, _ = released_network("adm_imagenet64", tmp_path)
    with pytest.raises(PretrainedError, match="1000 classes and the config's of 10"):
        check_fits(config, converted, 10)


def test_adms_upsampler_has_pytorchs_parameter_count():
    args = superres_flags(large_size=256, small_size=64, num_channels=192, num_res_blocks=2, learn_sigma=True,
                          class_cond=True, attention_resolutions="32,16,8", num_head_channels=64,
                          resblock_updown=True, use_scale_shift_norm=True)
    args.pop("low_res_size")
    model, num_classes, _ = openai_hyperparameters(args)
    upsampler = make_network("unet", out_channels=6, num_classes=num_classes,
                             **{k: v for k, v in model.items() if k != "arch"})
    null_row = 4 * model["channels"]
    assert count_params(abstract_params(upsampler, (256, 256, 6))) - null_row == ADM_UPSAMPLER_64_256
