"""improved-diffusion / guided-diffusion checkpoints into diffjax (``diffjax.models.convert_openai``):
``UNetModel`` and ``SuperResModel`` into the UNet, ``EncoderUNetModel`` into the noisy classifier.
The converted network computes what guided_diffusion computes, on random weights (``tests/models/data/converters``, made by
``scripts/make_converter_references.py``; and ``../shared/weights_reference`` where it exists);
script_util's flags give the constructor's arguments; bad inputs fail at once."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import count_params, make_network
from diffjax.models.convert_openai import (
    classifier_flags,
    load_openai_classifier,
    load_openai_superres,
    load_openai_unet,
    superres_flags,
    unet_flags,
)
from diffjax.models.state_dicts import CheckpointError
from diffjax.models.superres import upsampled_input
from tests.models.test_convert_diffusers import ATOL, DATA, SHARED, as_torch_pickle, assert_matches_reference

TINY = ["openai_iddpm_tiny", "openai_adm_classcond_tiny"]
TINY_CLASSIFIERS = ["openai_adm_classifier_tiny", "openai_classifier_adaptive_tiny"]
SHARED_FOLDERS = {"openai_iddpm_cifar10_small": 2_491_462, "openai_adm_classcond_small": 2_008_742,
                  "openai_adm_superres_small": 1_924_486, "openai_adm_classifier_small": 821_514}
LOADERS = {"unet": load_openai_unet, "superres": load_openai_superres, "classifier": load_openai_classifier}


def kind_of(folder):
    name = os.path.basename(folder)
    return "classifier" if "classifier" in name else "superres" if "superres" in name else "unet"


def nhwc(array):
    return jnp.asarray(np.transpose(array, (0, 2, 3, 1)))


def converted_output(converted, io, num_classes, **overrides):
    """The converted network's output on guided_diffusion's inputs (NCHW images, or logits)."""
    hyper = {k: v for k, v in converted.model.items() if k != "arch"} | overrides
    x = nhwc(io["x"])
    if converted.model["arch"] == "classifier":
        network = make_network("classifier", out_channels=converted.out_channels, **hyper)
        with jax.default_matmul_precision("highest"):
            return np.asarray(jax.jit(network.apply)({"params": converted.params}, x, jnp.asarray(io["t"])))
    network = make_network("unet", out_channels=converted.out_channels, num_classes=num_classes, **hyper)
    if converted.low_res_shape is not None:
        x = upsampled_input(x, nhwc(io["low_res"]))
    labels = jnp.asarray(io["y"]) if "y" in io else None
    with jax.default_matmul_precision("highest"):
        out = jax.jit(network.apply)({"params": converted.params}, x, jnp.asarray(io["t"]), labels)
    return np.transpose(np.asarray(out), (0, 3, 1, 2))


def check_parity(folder, weights="model.safetensors"):
    with open(os.path.join(folder, "config.json")) as f:
        args = json.load(f)
    converted = LOADERS[kind_of(folder)](os.path.join(folder, weights), args)
    io = np.load(os.path.join(folder, "io.npz"))
    assert_matches_reference(converted_output(converted, io, args.get("num_classes")), io["out64"])
    return converted, io, args


@pytest.mark.parametrize("name", TINY)
def test_converted_unet_computes_what_guided_diffusion_computes(name):
    converted, io, args = check_parity(os.path.join(DATA, name))
    if args["num_classes"]:
        # label_emb plus diffjax's null-class row (zeros)
        table = converted.params["label_embed"]["embedding"]
        assert table.shape[0] == args["num_classes"] + 1 and not table[-1].any()
    # a wrong head split is far off: the tolerance tells the layouts apart
    heads = converted_output(converted, io, args["num_classes"], num_heads=4, num_head_channels=None)
    assert np.abs(heads - io["out64"]).max() > 100 * ATOL


@pytest.mark.parametrize("name", sorted(SHARED_FOLDERS))
def test_shared_reference_checkpoints_convert_exactly(name):
    folder = os.path.join(SHARED, name)
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} is not here (the tiny checkpoints above are the permanent check)")
    converted, _, args = check_parity(folder)
    extra_null_row = converted.params["label_embed"]["embedding"].shape[1] if args.get("num_classes") else 0
    assert count_params(converted.params) - extra_null_row == SHARED_FOLDERS[name]


@pytest.mark.parametrize("name", TINY_CLASSIFIERS)
def test_converted_classifier_computes_what_guided_diffusion_computes(name):
    converted, io, args = check_parity(os.path.join(DATA, name))
    assert converted.model["pool"] == {"attention": "attention", "adaptive": "mean"}[args["pool"]]
    assert converted.out_channels == args["out_channels"]
    # the other pool does not fit these weights
    other = {"attention": "adaptive", "adaptive": "attention"}[args["pool"]]
    with pytest.raises(CheckpointError):
        load_openai_classifier(os.path.join(DATA, name, "model.safetensors"), args | {"pool": other})


def test_converted_upsampler_computes_what_guided_diffusion_computes():
    converted, io, args = check_parity(os.path.join(DATA, "openai_adm_superres_tiny"))
    assert converted.low_res_shape == (4, 4, 3) and converted.image_shape == (16, 16, 3)
    # the upsampled input matters: nearest instead of bilinear is far off
    x, low = nhwc(io["x"]), nhwc(io["low_res"])
    nearest = jnp.concatenate([x, jnp.repeat(jnp.repeat(low, 4, axis=1), 4, axis=2)], axis=-1)
    network = make_network("unet", out_channels=6, num_classes=10,
                           **{k: v for k, v in converted.model.items() if k != "arch"})
    with jax.default_matmul_precision("highest"):
        out = network.apply({"params": converted.params}, nearest, jnp.asarray(io["t"]), jnp.asarray(io["y"]))
    assert np.abs(np.transpose(np.asarray(out), (0, 3, 1, 2)) - io["out64"]).max() > 100 * ATOL


def test_upsampled_input_is_bilinear_with_half_pixel_centres():
    # float64 NumPy: each output pixel (i + 0.5) / 2 - 0.5 in input coordinates, clamped at the edges
    low = np.arange(6.0).reshape(1, 2, 3, 1)
    out = np.asarray(upsampled_input(jnp.zeros((1, 4, 6, 1)), jnp.asarray(low, jnp.float32)))
    assert out.shape == (1, 4, 6, 2) and not out[..., 0].any()
    coordinates = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)
    rows = low[0, 0, :, 0][None, :] * (1 - coordinates[:, None]) + low[0, 1, :, 0][None, :] * coordinates[:, None]
    columns = np.clip((np.arange(6) + 0.5) / 2 - 0.5, 0, 2)
    expected = np.stack([np.interp(columns, np.arange(3), row) for row in rows])
    np.testing.assert_allclose(out[0, :, :, 1], expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="larger than the image"):
        upsampled_input(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 4, 4, 1)))


def test_classifier_and_upsampler_flags_give_the_constructor_arguments():
    # guided-diffusion's README: the 64x64 classifier and the 64 -> 256 upsampler
    classifier = classifier_flags(image_size=64, classifier_attention_resolutions="32,16,8", classifier_depth=4,
                                  classifier_width=128, classifier_pool="attention",
                                  classifier_resblock_updown=True, classifier_use_scale_shift_norm=True)
    assert classifier["channel_mult"] == (1, 2, 3, 4) and classifier["attention_resolutions"] == (2, 4, 8)
    assert classifier["out_channels"] == 1000 and classifier["num_head_channels"] == 64
    upsampler = superres_flags(large_size=256, small_size=64, num_channels=192, num_res_blocks=2, learn_sigma=True,
                               class_cond=True, attention_resolutions="32,16,8", num_head_channels=64,
                               resblock_updown=True, use_scale_shift_norm=True)
    assert upsampler["channel_mult"] == (1, 1, 2, 2, 4, 4) and upsampler["low_res_size"] == 64
    assert upsampler["num_classes"] == 1000 and upsampler["out_channels"] == 6
    with pytest.raises(CheckpointError, match="0.5"):
        classifier_flags(image_size=512)
    with pytest.raises(CheckpointError, match="low_res_size"):
        folder = os.path.join(DATA, "openai_adm_superres_tiny")
        args = json.loads(open(os.path.join(folder, "config.json")).read())
        load_openai_superres(os.path.join(folder, "model.safetensors"), {k: v for k, v in args.items()
                                                                          if k != "low_res_size"})


def test_the_torch_pickle_is_read_with_weights_only(tmp_path):
    folder = tmp_path / "released"
    shutil.copytree(os.path.join(DATA, TINY[0]), folder)
    as_torch_pickle(folder / "model.safetensors", folder / "model.pt")
    check_parity(str(folder), weights="model.pt")


def test_script_util_flags_give_the_constructor_arguments():
    # improved-diffusion's CIFAR-10 flags (its README) and guided-diffusion's 256x256 conditional model
    cifar = unet_flags(image_size=32, num_channels=128, num_res_blocks=3, learn_sigma=True, dropout=0.3,
                       attention_resolutions="16,8", num_heads=4, use_scale_shift_norm=True, diffusion_steps=4000)
    assert cifar["channel_mult"] == (1, 2, 2, 2) and cifar["attention_resolutions"] == (2, 4)
    assert cifar["out_channels"] == 6 and cifar["num_classes"] is None
    adm = unet_flags(image_size=256, num_channels=256, num_res_blocks=2, class_cond=True, learn_sigma=True,
                     attention_resolutions="32,16,8", num_head_channels=64, resblock_updown=True,
                     use_scale_shift_norm=True, use_new_attention_order=False)
    assert adm["channel_mult"] == (1, 1, 2, 2, 4, 4) and adm["attention_resolutions"] == (8, 16, 32)
    assert adm["num_classes"] == 1000
    with pytest.raises(CheckpointError, match="no default channel_mult"):
        unet_flags(image_size=48, num_channels=64, num_res_blocks=2)


def test_bad_inputs_fail_with_a_message_that_names_the_problem(tmp_path):
    folder = os.path.join(DATA, TINY[0])
    with open(os.path.join(folder, "config.json")) as f:
        args = json.load(f)
    weights = os.path.join(folder, "model.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_openai_unet(str(tmp_path / "missing.pt"), args)
    with pytest.raises(CheckpointError, match="num_heads_upsample"):
        load_openai_unet(weights, args | {"num_heads_upsample": 8})
    with pytest.raises(CheckpointError, match="not UNetModel arguments"):
        load_openai_unet(weights, args | {"num_chanels": 64})
    with pytest.raises(CheckpointError, match="no tensor|fit no parameter"):
        load_openai_unet(weights, args | {"num_res_blocks": 2})
    with pytest.raises(CheckpointError, match="emb_proj.*has shape"):
        load_openai_unet(weights, args | {"use_scale_shift_norm": False})
