"""The training loop: build or resume the state, feed global batches, log, checkpoint, sample."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from diffjax.errors import ConfigError, UserError
from diffjax.models.denoiser import init_params
from diffjax.runtime.checkpoint import Checkpointer, PreemptionFlag
from diffjax.runtime.mesh import global_batch, make_mesh, replicated_sharding
from diffjax.runtime.recipe import Recipe
from diffjax.runtime.sampling import SamplerChoice, make_sampler
from diffjax.train.metrics import MetricsWriter
from diffjax.train.optim import make_optimizer
from diffjax.train.state import TrainState, init_train_state
from diffjax.train.step import make_train_step

__all__ = ["NonFiniteLossError", "abstract_train_state", "make_init_fn", "record_config", "train_and_evaluate"]


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss or gradient became NaN/inf; the state and checkpoints before it are intact."""


def make_init_fn(recipe: Recipe, optimizer: optax.GradientTransformation):
    """``init(rng) -> TrainState`` for the recipe and optimiser (pure; jit it with output shardings)."""

    def init(rng):
        params = init_params(recipe.model, jax.random.fold_in(rng, 0), recipe.input_shape)
        return init_train_state(params, optimizer, recipe.family.init_state(), rng)

    return init


def abstract_train_state(recipe: Recipe, optimizer: optax.GradientTransformation, mesh=None) -> TrainState:
    """Shapes, dtypes (and shardings when ``mesh`` is given) of the state, without compute."""
    abstract = jax.eval_shape(make_init_fn(recipe, optimizer), jax.random.PRNGKey(0))
    if mesh is None:
        return abstract
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)


def record_config(config: ml_collections.ConfigDict, workdir: str, start_step: int) -> None:
    """Write ``config.json`` (the config now in effect) and a copy into ``configs/``, one
    file per launch (``NNN_from_step_S.json``), so a workdir keeps what each stretch of
    training used. Called once the run has started (state restored or initialised, data
    found, first steps finite), and by ``run.pretrained`` for the import that made step 0."""
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    history = epath.Path(workdir) / "configs"
    history.mkdir(parents=True, exist_ok=True)
    launch = sum(1 for path in history.glob("*_from_step_*.json"))
    (history / f"{launch:03d}_from_step_{start_step}.json").write_text(text)
    (epath.Path(workdir) / "config.json").write_text(text)


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, recipe: Recipe) -> TrainState:
    """Train ``recipe`` as ``config`` says, in ``workdir``, resuming from its last checkpoint.

    Writes ``config.json`` (and ``configs/NNN_from_step_S.json``, one per launch),
    ``checkpoints/``, ``metrics.jsonl``, TensorBoard events and ``samples/step_N.png``.
    Nothing is written before the run has started (config valid, checkpoint restored or
    state initialised, data found, the first logged steps finite): a launch that fails
    earlier leaves the workdir as it was. Stops after ``config.train.num_steps`` updates,
    or after saving when SIGTERM arrives (preemption). A checkpoint already at or past
    ``num_steps`` trains nothing and says so.

    Raises:
      ConfigError: the batch does not divide over the devices.
      CheckpointMismatchError: the workdir's checkpoint does not fit the config.
      CheckpointDamagedError: no checkpoint of the workdir can be read (a damaged newest
        one alone is skipped with a warning, and the run resumes from the one before).
      NonFiniteLossError: a step's loss or gradient was NaN/inf. No update of that step
        (or later) was applied, and no checkpoint after the last good step was written.

    Returns:
      The final state.
    """
    train = config.train
    is_main = jax.process_index() == 0
    mesh = make_mesh()
    if train.batch_size % mesh.devices.size:
        raise ConfigError(f"config.train.batch_size={train.batch_size} must be divisible by the {mesh.devices.size} devices")
    optimizer = make_optimizer(train)
    checkpointer = _checkpointer(workdir, train)
    state = _restored_state(checkpointer, recipe, optimizer, mesh)
    start_step = 0 if state is None else int(state.step)
    if start_step >= train.num_steps:
        checkpointer.close()
        if is_main:
            print(f"checkpoint at step {start_step} >= train.num_steps = {train.num_steps}: nothing to train "
                  f"(raise --config.train.num_steps to train on)")
        return state
    batches = recipe.train_batches(start_step)  # a missing data set fails here, before anything compiles
    if state is None:
        init = jax.jit(make_init_fn(recipe, optimizer), out_shardings=replicated_sharding(mesh))
        state = init(jax.random.PRNGKey(train.seed))

    step_fn = make_train_step(recipe, optimizer, train.ema_decay, mesh)
    draw = _training_sampler(config, recipe, mesh)
    outputs = _RunOutputs(workdir, config, start_step, is_main)
    preemption = PreemptionFlag()
    progress = _progress_bar(train.num_steps, start_step, is_main)
    pending: list[dict[str, Any]] = []
    last_log_time, last_log_step = time.perf_counter(), start_step

    def check_finite_and_open(up_to_step: int) -> None:
        """Raise if a pending step was not finite; else open the outputs (first call)."""
        finite = np.asarray(jax.device_get([m["finite"] for m in pending]), bool)
        if not finite.all():
            bad = up_to_step - len(pending) + int(np.argmin(finite)) + 1
            checkpointer.wait_until_finished()
            raise NonFiniteLossError(
                f"the loss or gradient became NaN/inf at step {bad}; updates stopped there. "
                f"The last checkpoint is step {checkpointer.latest_step()} in {checkpointer.directory}. "
                "Lower config.train.lr, check the data, or train in float32."
            )
        outputs.open()

    try:
        for step in range(start_step, train.num_steps):
            batch = global_batch(mesh, next(batches))
            state, metrics = step_fn(state, batch)
            pending.append(metrics)
            done = step + 1
            if done % train.log_every == 0 or done == train.num_steps:
                check_finite_and_open(done)
                now = time.perf_counter()
                means = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0] if k != "finite"}
                means["steps_per_sec"] = (done - last_log_step) / (now - last_log_time)
                last_log_time, last_log_step = now, done
                if is_main:
                    outputs.writer.write_scalars(done, means)
                progress.update(done - progress.n)
                progress.set_postfix(loss=f"{means['loss']:.4f}", steps_per_sec=f"{means['steps_per_sec']:.2f}")
                pending.clear()
            saved = done % train.checkpoint_every == 0 or done == train.num_steps
            if saved:
                check_finite_and_open(done)
                checkpointer.save(done, state, force=True)
            if draw is not None and (done % train.sample_every == 0 or done == train.num_steps):
                check_finite_and_open(done)
                samples = draw(state.ema_params, jax.random.fold_in(jax.random.PRNGKey(train.seed + 1), done))
                if is_main:
                    _write_picture(recipe, outputs, workdir, done, samples)
            if done % train.log_every == 0 and _any_process(preemption.is_set()):
                check_finite_and_open(done)
                if not saved:
                    checkpointer.save(done, state, force=True)
                break
    finally:
        checkpointer.close()
        outputs.close()
        progress.close()
        preemption.restore()
    return state


def _training_sampler(config: ml_collections.ConfigDict, recipe: Recipe, mesh):
    """The sampler of the training run's pictures (``config.sample``), or None: a classifier draws none."""
    if not recipe.family.draws_samples:
        return None
    return make_sampler(recipe, mesh, num_samples=config.sample.num, choice=SamplerChoice.from_settings(config.sample))


def _progress_bar(num_steps: int, start_step: int, is_main: bool) -> tqdm:
    return tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=1.0,
                disable=not is_main)


def _checkpointer(workdir: str, train: ml_collections.ConfigDict) -> Checkpointer:
    """The run's checkpointer. It writes nothing until its first save (nothing is written to the
    workdir until the run has started, see _RunOutputs)."""
    return Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=train.keep_checkpoints,
        save_interval_steps=train.checkpoint_every,
        async_save=train.async_checkpoints,
    )


def _restored_state(checkpointer: Checkpointer, recipe: Recipe, optimizer, mesh) -> TrainState | None:
    """The state of the newest readable checkpoint (damaged ones are skipped, named), or None."""
    if checkpointer.latest_step() is None:
        return None
    return checkpointer.restore_latest(abstract_train_state(recipe, optimizer, mesh)).state


def _write_picture(recipe: Recipe, outputs: "_RunOutputs", workdir: str, step: int, samples) -> None:
    """``samples/step_N.png`` of a training step's samples, and its TensorBoard image."""
    picture = os.path.join(workdir, "samples", f"step_{step}.png")
    recipe.save_samples(samples, picture)
    outputs.writer.write_picture(step, "samples", picture)


class _RunOutputs:
    """What a training run writes besides checkpoints: ``config.json`` and its history,
    and the metrics (``writer``, on the main process only; None elsewhere). Opened only
    once the run has started, so that a launch that fails before leaves the workdir as it
    was."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, start_step: int, is_main: bool):
        self._workdir, self._config, self._start_step, self._is_main = workdir, config, start_step, is_main
        self._opened = False
        self.writer: MetricsWriter | None = None

    def open(self) -> None:
        if self._opened:
            return
        if self._is_main:
            record_config(self._config, self._workdir, self._start_step)
            self.writer = MetricsWriter(self._workdir, resumed_from=self._start_step)
        self._opened = True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
