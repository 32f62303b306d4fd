"""``launch.py --mode=import`` of a released checkpoint (a random-weight diffusers folder in the
released format, ``tests/models/data/converters``), then ``--mode=sample`` on it: the workdir's
checkpoint holds exactly the converted weights, and mistakes are one-line errors before anything
compiles. The cells run in one child process (``tests.support.launch_session``), as the experiment
matrix's do."""

import json
import os

import jax
import numpy as np
import pytest

from diffjax.models.convert_diffusers import load_diffusers_unet
from diffjax.run.experiments import build_recipe, load_experiment
from diffjax.run.restore import restore_train_state
from diffjax.runtime.mesh import make_mesh
from tests.support.launch_session import LaunchSession

pytestmark = pytest.mark.slow  # child processes

FOLDER = os.path.join("tests", "models", "data", "converters", "diffusers_ddpm_cifar10_tiny")
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
