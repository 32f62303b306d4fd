"""The train step, the loop, checkpoints and exact resume in process, and bad input (the kill -9 and SIGTERM runs: tests/e2e/test_resume.py)."""

import os

import jax
import numpy as np
import pytest

from diffjax.runtime import mesh as parallel
from diffjax.runtime.checkpoint import Checkpointer, CheckpointMismatchError
from diffjax.train import NonFiniteLossError, train_and_evaluate
from diffjax.train.loop import abstract_train_state, make_init_fn
from diffjax.train.metrics import read_metrics
from diffjax.train.optim import make_optimizer
from diffjax.train.step import make_train_step
from tests.support.train_utils import flat_params, toy_config, toy_recipe


@pytest.fixture(scope="module")
def setup():
    config = toy_config()
    recipe = toy_recipe(config)
    mesh = parallel.make_mesh()
    init = jax.jit(make_init_fn(recipe, make_optimizer(config.train)), out_shardings=parallel.replicated_sharding(mesh))
    return config, recipe, mesh, init


def test_step_compiles_once_and_updates(setup):
    config, recipe, mesh, init = setup
    traces = []
    optimizer = make_optimizer(config.train)
    from diffjax.train import step as step_module

    def counting_step(state, batch, **kwargs):
        traces.append(1)
        return step_module.train_step(state, batch, **kwargs)

    step_fn = jax.jit(
        lambda s, b: counting_step(s, b, recipe=recipe, optimizer=optimizer, ema_decay=config.train.ema_decay),
        donate_argnums=0,
    )
    state = init(jax.random.PRNGKey(0))
    params0 = flat_params(state.params)
    batches = recipe.train_batches(0)
    for i in range(4):
        previous_ema = flat_params(state.ema_params)
        state, metrics = step_fn(state, parallel.global_batch(mesh, next(batches)))
        assert int(state.step) == i + 1 and float(metrics["finite"]) == 1.0
        assert np.isfinite(float(metrics["loss"]))
        # EMA: ema <- d ema + (1 - d) params
        d = config.train.ema_decay
        np.testing.assert_allclose(flat_params(state.ema_params), d * previous_ema + (1 - d) * flat_params(state.params), rtol=1e-5, atol=1e-7)
    assert len(traces) == 1, "the train step was traced more than once"
    assert not np.allclose(flat_params(state.params), params0)


def test_nan_batch_leaves_the_state_unchanged(setup):
    config, recipe, mesh, init = setup
    step_fn = make_train_step(recipe, make_optimizer(config.train), config.train.ema_decay, mesh)
    state = init(jax.random.PRNGKey(0))
    before = jax.device_get(state)
    batch = next(recipe.train_batches(0))
    batch["image"] = np.full_like(batch["image"], np.nan)
    state, metrics = step_fn(state, parallel.global_batch(mesh, batch))
    assert float(metrics["finite"]) == 0.0
    assert int(state.step) == 0
    np.testing.assert_array_equal(flat_params(state.params), flat_params(before.params))
    np.testing.assert_array_equal(flat_params(state.opt_state), flat_params(before.opt_state))


def _final_params(workdir, config, recipe):
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
    state = checkpointer.restore(abstract_train_state(recipe, make_optimizer(config.train)))
    checkpointer.close()
    return int(state.step), flat_params(state.params), flat_params(state.ema_params)


@pytest.mark.slow
def test_loop_outputs_and_in_process_resume_is_exact(tmp_path):
    straight_config = toy_config(num_steps=6, checkpoint_every=2, log_every=2, sample_every=6)
    recipe = toy_recipe(straight_config)
    straight = str(tmp_path / "straight")
    train_and_evaluate(straight_config, straight, recipe)
    for name in ("config.json", "metrics.jsonl", "samples/step_6.png", "tensorboard"):
        assert os.path.exists(os.path.join(straight, name)), name
    assert [r["step"] for r in read_metrics(straight)] == [2, 4, 6]

    resumed = str(tmp_path / "resumed")
    train_and_evaluate(toy_config(num_steps=3, checkpoint_every=2, log_every=2, sample_every=6), resumed, recipe)
    assert _final_params(resumed, straight_config, recipe)[0] == 3
    train_and_evaluate(straight_config, resumed, recipe)
    step_a, params_a, ema_a = _final_params(straight, straight_config, recipe)
    step_b, params_b, ema_b = _final_params(resumed, straight_config, recipe)
    assert step_a == step_b == 6
    np.testing.assert_array_equal(params_a, params_b)
    np.testing.assert_array_equal(ema_a, ema_b)


@pytest.mark.slow
def test_nan_loss_stops_the_run_with_the_last_good_checkpoint(tmp_path):
    config = toy_config(num_steps=8, checkpoint_every=2, log_every=2, sample_every=8)
    recipe = toy_recipe(config)

    def poisoned(start_step):
        for step, batch in enumerate(recipe.train_batches(start_step), start=start_step):
            if step >= 4:  # the batch of update 5
                batch["image"] = np.full_like(batch["image"], np.nan)
            yield batch

    import dataclasses

    workdir = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLossError, match="NaN/inf at step 5.*last checkpoint is step 4"):
        train_and_evaluate(config, workdir, dataclasses.replace(recipe, train_batches=poisoned))
    step, params, _ = _final_params(workdir, config, recipe)
    assert step == 4 and np.isfinite(params).all()


@pytest.mark.slow
def test_checkpoint_of_another_shape_is_refused(tmp_path):
    config = toy_config(num_steps=2, checkpoint_every=2, log_every=2, sample_every=2)
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir, toy_recipe(config))
    other = load_other_width_config()
    with pytest.raises(CheckpointMismatchError, match=r"params/dense_in/kernel: checkpoint has shape \(2, 32\), config wants \(2, 16\)"):
        train_and_evaluate(other, workdir, toy_recipe(other))


def load_other_width_config():
    from tests.support.train_utils import load_experiment

    config = load_experiment("toy2d").get_config("eight_gaussians,smoke")
    config.model.hidden = 16
    config.model.num_blocks = 1
    config.train.num_steps = 4
    config.lock()
    return config


@pytest.mark.slow
def test_unfinished_save_is_ignored_on_restart(tmp_path):
    config = toy_config(num_steps=2, checkpoint_every=2, log_every=2, sample_every=2)
    recipe = toy_recipe(config)
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir, recipe)
    # what a kill -9 in the middle of an asynchronous save of step 4 leaves behind
    partial = os.path.join(workdir, "checkpoints", "4.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(partial, "default"))
    with open(os.path.join(partial, "default", "garbage"), "w") as f:
        f.write("half a checkpoint")
    longer = toy_config(num_steps=4, checkpoint_every=2, log_every=2, sample_every=4)
    train_and_evaluate(longer, workdir, recipe)
    assert _final_params(workdir, longer, recipe)[0] == 4
