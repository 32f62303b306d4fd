"""diffjax's UNet -> a diffusers UNet2DModel folder (``diffjax.models.export_diffusers``): exporting a
converted released folder writes back its tensors bit for bit, a diffjax-initialised UNet reads back
to the same params, and networks UNet2DModel cannot hold are refused by name."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from diffjax.models import init_params, make_network
from diffjax.models.convert_diffusers import load_diffusers_unet
from diffjax.models.export_diffusers import export_diffusers_unet
from diffjax.models.state_dicts import CheckpointError
from tests.models.test_convert_diffusers import DATA, TINY

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("name", TINY)
def test_exporting_a_converted_folder_writes_its_tensors_back(name, tmp_path):
    converted = load_diffusers_unet(os.path.join(DATA, name))
    path = export_diffusers_unet(str(tmp_path), converted.params, converted.model, converted.out_channels,
                                 converted.image_shape)
    original, exported = load_file(os.path.join(DATA, name, WEIGHTS)), load_file(path)
    assert sorted(exported) == sorted(original)
    for key, tensor in original.items():
        np.testing.assert_array_equal(exported[key], tensor, err_msg=key)
    with open(os.path.join(DATA, name, "config.json")) as f:
        released = json.load(f)
    with open(tmp_path / "config.json") as f:
        written = json.load(f)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "attention_head_dim",
                "flip_sin_to_cos", "freq_shift", "downsample_padding", "norm_eps", "norm_num_groups", "sample_size"):
        assert written[key] == released[key], key


def test_a_diffjax_unet_round_trips(tmp_path):
    model = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=2,
                 num_head_channels=None, norm_groups=4, downsample_padding="symmetric")
    network = make_network("unet", out_channels=2, **model)
    params = jax.tree.map(np.asarray, init_params(network, jax.random.key(3), (8, 8, 1)))
    full = {"arch": "unet", **{k: getattr(network, k) for k in (*model, "use_scale_shift_norm", "resblock_updown",
                                                                 "conv_resample", "norm_eps", "sinusoid_cos_first",
                                                                 "sinusoid_freq_shift", "dropout")}}
    export_diffusers_unet(str(tmp_path), params, full, 2, (8, 8, 1))
    back = load_diffusers_unet(str(tmp_path))
    assert back.out_channels == 2 and back.image_shape == (8, 8, 1)  # attention widths 16: 2 heads of 8
    assert back.model["num_head_channels"] == 8 and back.model["attention_resolutions"] == (4,)
    jax.tree.map(np.testing.assert_array_equal, back.params, params)


def test_networks_unet2dmodel_cannot_hold_are_refused(tmp_path):
    converted = load_diffusers_unet(os.path.join(DATA, TINY[0]))
    for key, value in (("use_scale_shift_norm", True), ("resblock_updown", True), ("conv_resample", False)):
        with pytest.raises(CheckpointError, match=key):
            export_diffusers_unet(str(tmp_path), converted.params, converted.model | {key: value}, 3, (16, 16, 3))
    with pytest.raises(CheckpointError, match="class-conditional"):
        export_diffusers_unet(str(tmp_path), converted.params | {"label_embed": {}}, converted.model, 3, (16, 16, 3))
    assert not os.listdir(tmp_path)
