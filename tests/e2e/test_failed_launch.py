"""A launch that fails leaves its workdir as it was; a run records each launch's config."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from diffjax.data.errors import DatasetNotPreparedError
from diffjax.run import sample as sample_module
from diffjax.run.evaluate import evaluate
from diffjax.run.sample import OutputNotWritableError, generate
from diffjax.runtime.checkpoint import CheckpointDamagedError, CheckpointMismatchError, NoCheckpointError
from diffjax.train import NonFiniteLossError, train_and_evaluate
from tests.support.subprocesses import run_python
from tests.support.train_utils import toy_config, toy_recipe

pytestmark = pytest.mark.slow  # child processes (or a trained module fixture): not in the fast tier


def snapshot(workdir: str) -> dict[str, bytes | None]:
    """Every file under ``workdir`` with its bytes (checkpoint data by size and name only)."""
    files = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, workdir)
            if relative.startswith("checkpoints"):
                files[relative] = os.path.getsize(path)
            else:
                with open(path, "rb") as f:
                    files[relative] = f.read()
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy run trained for 4 steps (checkpoints at 2 and 4): its workdir and config."""
    workdir = str(tmp_path_factory.mktemp("failed_launch") / "run")
    config = toy_config(num_steps=4, checkpoint_every=2, log_every=2, sample_every=4)
    train_and_evaluate(config, workdir, toy_recipe(config))
    return workdir, config


def copy_of(trained, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(trained[0], workdir)
    return workdir


def other_config(**train):
    config = toy_config(num_steps=8, checkpoint_every=2, log_every=2, sample_every=8, **train)
    return config


def test_a_run_records_the_config_of_each_launch(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    assert sorted(os.listdir(os.path.join(workdir, "configs"))) == ["000_from_step_0.json"]
    longer = other_config(lr=5e-4)
    train_and_evaluate(longer, workdir, toy_recipe(longer))
    history = sorted(os.listdir(os.path.join(workdir, "configs")))
    assert history == ["000_from_step_0.json", "001_from_step_4.json"]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["lr"] == 5e-4
    with open(os.path.join(workdir, "configs", history[0])) as f:
        assert json.load(f)["train"]["lr"] == trained[1].train.lr


def test_a_checkpoint_of_another_shape_leaves_the_workdir_as_it_was(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    config = other_config()
    with config.unlocked():
        config.model.hidden = 16
    with pytest.raises(CheckpointMismatchError):
        train_and_evaluate(config, workdir, toy_recipe(config))
    assert snapshot(workdir) == before


def test_a_nan_on_resume_leaves_the_workdir_as_it_was(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    config = other_config(lr=1e30)  # the first update blows the params up, the next loss is not finite
    with pytest.raises(NonFiniteLossError, match="last checkpoint is step 4"):
        train_and_evaluate(config, workdir, toy_recipe(config))
    assert snapshot(workdir) == before


def test_a_missing_data_set_leaves_the_workdir_as_it_was(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    config = other_config()
    recipe = toy_recipe(config)

    def not_prepared(start_step):
        raise DatasetNotPreparedError("no data (a stand-in for tfds' missing data set)")

    with pytest.raises(DatasetNotPreparedError):
        train_and_evaluate(config, workdir, dataclasses.replace(recipe, train_batches=not_prepared))
    assert snapshot(workdir) == before


def test_a_checkpoint_at_or_past_num_steps_trains_nothing_and_says_so(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    config = toy_config(num_steps=2, checkpoint_every=2, log_every=2, sample_every=2, lr=1e30)
    state = train_and_evaluate(config, workdir, toy_recipe(config))
    assert int(state.step) == 4
    assert "checkpoint at step 4 >= train.num_steps = 2: nothing to train" in capsys.readouterr().out
    assert snapshot(workdir) == before


def test_a_failed_launch_on_a_new_workdir_creates_nothing(tmp_path):
    config = other_config()
    recipe = toy_recipe(config)

    def not_a_number(start_step):
        for batch in recipe.train_batches(start_step):
            yield {**batch, "image": np.full_like(batch["image"], np.nan)}

    workdir = str(tmp_path / "new")
    with pytest.raises(NonFiniteLossError, match="NaN/inf at step 1.*last checkpoint is step None"):
        train_and_evaluate(config, workdir, dataclasses.replace(recipe, train_batches=not_a_number))
    assert not os.path.exists(workdir)


@pytest.mark.slow
def test_launch_failures_keep_config_json_and_print_no_traceback(tmp_path):
    """Through launch.py: a batch that does not divide over 8 devices, and a missing data set."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"a": "config of an earlier launch"}')
    cases = [
        (["--config", "experiments/toy2d.py:eight_gaussians,smoke", "--config.train.batch_size=12"],
         {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, "batch_size=12 must be divisible by the 8 devices"),
        (["--config", "experiments/ddpm_cifar10.py", f"--config.data.data_dir={tmp_path / 'empty'}"], {},
         "download_and_prepare"),
    ]
    for args, env, message in cases:
        result = run_python(["launch.py", *args, "--workdir", str(workdir)], env=env)
        assert result.returncode == 1, result.stderr[-3000:]
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert sorted(os.listdir(workdir)) == ["config.json"]
        assert (workdir / "config.json").read_text() == '{"a": "config of an earlier launch"}'
    assert not np.any([name.startswith("configs") for name in os.listdir(workdir)])


def test_every_checkpoint_damaged_leaves_the_workdir_as_it_was(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    for step in ("2", "4"):
        os.remove(os.path.join(workdir, "checkpoints", step, "default", "_METADATA"))
    before = snapshot(workdir)
    config = other_config()
    with pytest.raises(CheckpointDamagedError, match=r"(?s)step 4 .*_METADATA is missing.*step 2 "):
        train_and_evaluate(config, workdir, toy_recipe(config))
    assert snapshot(workdir) == before


@pytest.mark.parametrize("mode", ["eval", "sample"])
@pytest.mark.parametrize("existing", [False, True])
def test_eval_and_sample_without_a_checkpoint_create_nothing(tmp_path, mode, existing):
    workdir = tmp_path / "run"
    if existing:
        workdir.mkdir()
    config = toy_config()
    run = evaluate if mode == "eval" else generate
    with pytest.raises(NoCheckpointError, match="no checkpoint in .*train first"):
        run(config, str(workdir), toy_recipe(config))
    assert (sorted(os.listdir(workdir)) == []) if existing else not workdir.exists()


def test_sample_into_an_unwritable_folder_fails_before_sampling(trained, tmp_path, monkeypatch):
    workdir = copy_of(trained, tmp_path)
    shutil.rmtree(os.path.join(workdir, "samples"))
    with open(os.path.join(workdir, "samples"), "w") as f:  # a file where the samples folder should be
        f.write("")
    def must_not_sample(*args, **kwargs):
        raise AssertionError("sampled before checking the output folder")

    monkeypatch.setattr(sample_module, "make_sampler", must_not_sample)
    with pytest.raises(OutputNotWritableError, match="cannot write to .*samples"):
        generate(trained[1], workdir, toy_recipe(trained[1]))
