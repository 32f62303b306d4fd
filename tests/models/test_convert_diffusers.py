"""diffusers' UNet2DModel folders into diffjax's UNet (``diffjax.models.convert_diffusers``):
the converted network computes what diffusers computes, on random weights in the released file
format (``tests/models/data/converters``, made by ``scripts/make_converter_references.py``; and
the larger ``../shared/weights_reference`` folders where they exist), and bad folders fail at once."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import count_params, make_network
from diffjax.models.convert_diffusers import load_diffusers_unet
from diffjax.models.state_dicts import CheckpointError

DATA = os.path.join(os.path.dirname(__file__), "data", "converters")
SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "weights_reference"))
TINY = ["diffusers_ddpm_cifar10_tiny", "diffusers_six_levels_heads_tiny"]
SHARED_FOLDERS = ["diffusers_ddpm_cifar10_small", "diffusers_ddpm_celebahq_layout_small"]
# out (float32 PyTorch) and out64 differ by ~1.5e-6 here and up to 4e-6 in the shared folders;
# a float32 port lands within about 1e-5 of out64 (measured: 5e-6 and 7e-6 on the shared ones).
ATOL = 2e-5
RELATIVE_RMS = 1e-5


def assert_matches_reference(out, out64):
    """Float32 ``out`` within ATOL of the float64 reference everywhere and within RELATIVE_RMS
    of it in relative root-mean-square error."""
    np.testing.assert_allclose(out, out64, rtol=0, atol=ATOL)
    relative_rms = np.sqrt(np.mean((out - out64) ** 2) / np.mean(out64**2))
    assert relative_rms <= RELATIVE_RMS, relative_rms


def converted_output(converted, x_nchw, t, **overrides):
    """The converted UNet's output on diffusers' NCHW inputs, as NCHW (float32, highest precision)."""
    hyper = {k: v for k, v in converted.model.items() if k != "arch"} | overrides
    network = make_network("unet", out_channels=converted.out_channels, **hyper)
    x = jnp.asarray(np.transpose(x_nchw, (0, 2, 3, 1)))
    with jax.default_matmul_precision("highest"):
        out = jax.jit(network.apply)({"params": converted.params}, x, jnp.asarray(t))
    return np.transpose(np.asarray(out), (0, 3, 1, 2))


def check_parity(folder):
    converted = load_diffusers_unet(folder)
    io = np.load(os.path.join(folder, "io.npz"))
    assert_matches_reference(converted_output(converted, io["x"], io["t"]), io["out64"])
    return converted, io


@pytest.mark.parametrize("name", TINY)
def test_converted_unet_computes_what_diffusers_computes(name):
    converted, io = check_parity(os.path.join(DATA, name))
    state_count = sum(np.prod(np.shape(a)) for a in jax.tree.leaves(converted.params))
    assert count_params(converted.params) == state_count
    # The sinusoid's convention is read from config.json: the other one is far off (so the
    # tolerance above can tell a wrong mapping).
    flipped = converted_output(converted, io["x"], io["t"],
                               sinusoid_cos_first=not converted.model["sinusoid_cos_first"])
    assert np.abs(flipped - io["out64"]).max() > 100 * ATOL


def test_the_two_layouts_are_read_with_their_conventions():
    ddpm = load_diffusers_unet(os.path.join(DATA, TINY[0]))
    assert ddpm.model["channel_mult"] == (1, 2, 2, 2) and ddpm.model["attention_resolutions"] == (8,)
    assert (ddpm.model["sinusoid_cos_first"], ddpm.model["sinusoid_freq_shift"]) == (False, 1)
    assert ddpm.model["downsample_padding"] == "same" and ddpm.model["norm_eps"] == 1e-6
    assert ddpm.image_shape == (16, 16, 3) and ddpm.out_channels == 3
    six = load_diffusers_unet(os.path.join(DATA, TINY[1]))
    assert six.model["channel_mult"] == (1, 1, 2, 2, 4, 4) and six.model["attention_resolutions"] == (2,)
    assert six.model["num_head_channels"] == 8 and six.model["downsample_padding"] == "symmetric"
    assert (six.model["sinusoid_cos_first"], six.model["sinusoid_freq_shift"]) == (True, 0)


@pytest.mark.parametrize("name", SHARED_FOLDERS)
def test_shared_reference_folders_convert_exactly(name):
    folder = os.path.join(SHARED, name)
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} is not here (the tiny folders above are the permanent check)")
    converted, _ = check_parity(folder)
    expected = {"diffusers_ddpm_cifar10_small": 2_245_763, "diffusers_ddpm_celebahq_layout_small": 1_788_803}[name]
    assert count_params(converted.params) == expected


def as_torch_pickle(safetensors_path, pickle_path):
    """Write the tensors of a safetensors file as torch.save does a released state dict."""
    torch = pytest.importorskip("torch")  # an optional reader: torch is not a dependency
    from safetensors.torch import load_file

    torch.save(load_file(safetensors_path), pickle_path)


def test_the_torch_pickle_is_read_with_weights_only(tmp_path):
    folder = tmp_path / "bin_only"
    shutil.copytree(os.path.join(DATA, TINY[0]), folder)
    as_torch_pickle(folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.bin")
    os.remove(folder / "diffusion_pytorch_model.safetensors")
    check_parity(str(folder))


def copy_with_config(tmp_path, **changes):
    folder = tmp_path / "model"
    shutil.copytree(os.path.join(DATA, TINY[0]), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_bad_folders_fail_with_a_message_that_names_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_diffusers_unet(str(tmp_path))
    with pytest.raises(CheckpointError, match="class embeddings|num_class_embeds"):
        load_diffusers_unet(copy_with_config(tmp_path / "a", num_class_embeds=10))
    with pytest.raises(CheckpointError, match="UNet2DModel"):
        load_diffusers_unet(copy_with_config(tmp_path / "b", _class_name="UNet2DConditionModel"))
    with pytest.raises(CheckpointError, match="mirrors its attention"):
        load_diffusers_unet(copy_with_config(tmp_path / "c", up_block_types=["UpBlock2D"] * 4))
    # weights of another width: the first mismatching tensor is named
    with pytest.raises(CheckpointError, match="do not fit the network|has shape"):
        load_diffusers_unet(copy_with_config(tmp_path / "d", block_out_channels=[8, 16, 16, 32]))
    # a layer the config does not describe (layers_per_block 1 leaves tensors unused)
    with pytest.raises(CheckpointError, match="fit no parameter"):
        load_diffusers_unet(copy_with_config(tmp_path / "e", layers_per_block=1))
    folder = copy_with_config(tmp_path / "f")
    os.remove(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="no weights"):
        load_diffusers_unet(folder)
