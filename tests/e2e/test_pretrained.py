"""``launch.py --mode=import`` of released checkpoints (random-weight folders in the released
formats, ``tests/models/data/converters``), then ``--mode=sample`` on them, and ADM's class-conditional
model guided by ADM's classifier, both imported: the workdir's
checkpoint holds exactly the converted weights, and mistakes are one-line errors before anything
compiles. The cells run in one child process (``tests.support.launch_session``), as the experiment
matrix's do."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.noisy_classifier import chain_log_snr
from diffjax.diffusion.schedules import named_schedule
from diffjax.models import get_preset, init_params, make_network
from diffjax.models.convert_diffusers import load_diffusers_unet
from diffjax.models.convert_openai import classifier_hyperparameters, unet_hyperparameters
from diffjax.models.export_diffusers import export_diffusers_unet
from diffjax.run.experiments import build_recipe, load_experiment
from diffjax.run.restore import restore_classifier, restore_train_state
from diffjax.runtime.mesh import make_mesh
from tests.support.launch_session import LaunchSession

pytestmark = pytest.mark.slow  # child processes

DATA = os.path.join("tests", "models", "data", "converters")
FOLDER = os.path.join(DATA, "diffusers_ddpm_cifar10_tiny")
# pretrained.py:ddpm_cifar10 (DDPM's released layout) at the tiny reference's width and size
TINY = ["--config.model.channels=8", "--config.model.norm_groups=4", "--config.model.attention_resolutions=(8,)",
        "--config.data.image_size=16"]


@pytest.fixture(scope="module")
def session():
    with LaunchSession() as cells:
        yield cells


def launch(session, workdir, mode, *extra, path=FOLDER, tiny=True):
    return session.run("--config", "experiments/pretrained.py:ddpm_cifar10", "--workdir", str(workdir),
                       f"--mode={mode}", f"--config.pretrained.path={path}", *(TINY if tiny else ()), *extra)


def test_import_then_sample_a_released_checkpoint(session, tmp_path):
    workdir = tmp_path / "released"
    result = launch(session, workdir, "import")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "config.json") as f:
        assert json.load(f)["pretrained"]["path"] == FOLDER
    # the checkpoint's params and EMA params are the converted weights, bit for bit
    config = load_experiment("pretrained").get_config("ddpm_cifar10")
    config.model.update(channels=8, norm_groups=4, attention_resolutions=(8,))
    config.data.image_size = 16
    config.pretrained.path = FOLDER
    state = restore_train_state(config, str(workdir), build_recipe(load_experiment("pretrained"), config), make_mesh())
    converted = load_diffusers_unet(FOLDER)
    assert int(state.step) == 0
    for tree in (state.params, state.ema_params):
        jax.tree.map(np.testing.assert_array_equal, tree, converted.params)

    result = launch(session, workdir, "sample", "--config.sample.num=4", "--config.sample.method=ddim",
                    "--config.sample.steps=ddim5")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = np.load(workdir / "samples" / "step0_ema_ddim_eta0_ddim5_n4_seed0.npz")["samples"]
    assert samples.shape == (4, 16, 16, 3) and np.isfinite(samples).all()

    again = launch(session, workdir, "import")  # never over a workdir's checkpoints
    assert again.returncode == 1 and "already holds checkpoints" in again.stderr


def test_import_mistakes_are_one_line_errors(session, tmp_path):
    missing = launch(session, tmp_path / "a", "import", path=str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no config.json" in missing.stderr and "Traceback" not in missing.stderr
    wrong = launch(session, tmp_path / "b", "import", tiny=False)  # the full-size config, tiny weights
    assert wrong.returncode == 1 and "model.channels=8 and the config has 128" in wrong.stderr
    assert not os.path.exists(tmp_path / "b")


def _value(value):
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return "-1" if value is None else str(value)


def tiny_openai(name):
    """The overrides that make an experiments/pretrained.py ADM variant the tiny reference ``name``:
    its constructor arguments, the network they describe, its image size and classes."""
    with open(os.path.join(DATA, name, "config.json")) as f:
        args = json.load(f)
    if "classifier" in name:
        model, _ = classifier_hyperparameters(args)
        classes = args["out_channels"]
    else:
        model, classes, _ = unet_hyperparameters(args)
    return [f"--config.pretrained.path={os.path.join(DATA, name, 'model.safetensors')}",
            *(f"--config.pretrained.args.{k}={_value(v)}" for k, v in args.items()),
            *(f"--config.model.{k}={_value(v)}" for k, v in model.items() if k != "arch"),
            f"--config.data.image_size={args['image_size']}", f"--config.data.num_classes={classes}"]


def test_adms_classifier_guides_adms_model_both_imported(session, tmp_path):
    classifier, model = tmp_path / "classifier", tmp_path / "model"
    for workdir, variant, name in ((classifier, "adm_imagenet64_classifier", "openai_adm_classifier_tiny"),
                                   (model, "adm_imagenet64", "openai_adm_classcond_tiny")):
        result = session.run("--config", f"experiments/pretrained.py:{variant}", "--workdir", str(workdir),
                             "--mode=import", *tiny_openai(name))
        assert result.returncode == 0, result.stderr[-3000:]
    # the imported classifier, restored as guidance restores it, told the log-SNR of ADM's chain at
    # the reference's steps, computes what guided_diffusion's EncoderUNetModel computes at those steps
    guide = restore_classifier(str(classifier), make_mesh())
    io = np.load(os.path.join(DATA, "openai_adm_classifier_tiny", "io.npz"))
    log_snr = chain_log_snr(named_schedule("cosine", 1000), jnp.asarray(io["t"]))
    with jax.default_matmul_precision("highest"):
        logits = guide.model.apply({"params": guide.params}, jnp.asarray(np.transpose(io["x"], (0, 2, 3, 1))),
                                   guide.network_time(log_snr))
    np.testing.assert_allclose(np.asarray(logits), io["out64"], rtol=0, atol=2e-5)
    guided = ["--config.sample.num=4", "--config.sample.method=ddpm", "--config.sample.steps=5",
              f"--config.sample.classifier_workdir={classifier}", "--config.sample.classifier_scale=1"]
    result = session.run("--config", "experiments/pretrained.py:adm_imagenet64", "--workdir", str(model),
                         "--mode=sample", *tiny_openai("openai_adm_classcond_tiny"), *guided)
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = (model / "samples").glob("*.npz")
    samples = np.load(written)["samples"]
    assert samples.shape == (4, 8, 8, 3) and np.isfinite(samples).all()


def test_eval_and_fine_tuning_run_on_an_imported_network(session, tmp_path):
    # a digits-sized UNet in the released diffusers format (exported from random init), imported as
    # DDPM's CIFAR-10 release would be, then --mode=eval (bound and sample quality on the offline
    # digits) and --mode=train (fine-tuning from the imported step-0 checkpoint)
    model = {k: v for k, v in get_preset("digits").items() if k != "attention_implementation"}
    network = make_network("unet", out_channels=1, **{k: v for k, v in model.items() if k != "arch"})
    params = jax.tree.map(np.asarray, init_params(network, jax.random.key(0), (8, 8, 1)))
    export_diffusers_unet(str(tmp_path / "folder"), params, model, 1, (8, 8, 1))
    digits = ["--config.data.name=digits", "--config.data.image_size=8", "--config.data.channels=1",
              "--config.data.random_flip=False",
              *(f"--config.model.{k}={_value(v)}" for k, v in model.items() if k != "arch"),
              "--config.eval.batch_size=16", "--config.eval.num_examples=16", "--config.eval.nll_chain=10",
              "--config.eval.num_samples=16", "--config.sample.steps=ddim5", "--config.train.batch_size=16",
              "--config.train.num_steps=2", "--config.train.warmup_steps=1", "--config.train.sample_every=2",
              "--config.sample.num=4"]
    workdir = tmp_path / "imported"
    for mode in ("import", "eval", "train"):
        result = launch(session, workdir, mode, *digits, path=str(tmp_path / "folder"), tiny=False)
        assert result.returncode == 0, (mode, result.stderr[-3000:])
    with open(workdir / "eval" / "nll.json") as f:
        nll = json.load(f)
    assert np.isfinite(nll["bpd"]) and nll["bpd"] > 0
    assert (workdir / "eval" / "sample_quality.json").is_file()
    with open(workdir / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps and steps[-1] == 2  # resumed from the imported step 0
