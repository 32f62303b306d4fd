"""Training through launch.py in a separate process: a real kill -9 and resume is bit exact, and a
SIGTERM (preemption) saves a checkpoint and exits 0 (moved from tests/train/test_train.py)."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from diffjax.runtime.checkpoint import Checkpointer
from tests.support.subprocesses import popen_python, run_python
from tests.support.train_utils import toy_config, toy_recipe
from tests.train.test_train import _final_params


@pytest.mark.slow
def test_kill_9_and_resume_is_bit_exact(tmp_path):
    """A real kill -9 of the training process, then a resume, equals a straight run."""
    steps = 1500
    args = ["launch.py", "--config", "experiments/toy2d.py:eight_gaussians", "--config.train.num_steps", str(steps),
            "--config.train.checkpoint_every=100", "--config.train.log_every=50", f"--config.train.sample_every={steps}",
            "--config.train.batch_size=64", "--config.model.hidden=32", "--config.model.num_blocks=1", "--config.sample.steps=ddim5"]
    straight = str(tmp_path / "straight")
    result = run_python([*args, "--workdir", straight])
    assert result.returncode == 0, result.stderr[-3000:]

    killed = str(tmp_path / "killed")
    proc = popen_python([*args, "--workdir", killed], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    checkpoints = os.path.join(killed, "checkpoints")
    while time.time() < deadline:
        done = [d for d in os.listdir(checkpoints) if d.isdigit()] if os.path.isdir(checkpoints) else []
        if done and proc.poll() is None:
            break
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    result = run_python([*args, "--workdir", killed])
    assert result.returncode == 0, result.stderr[-3000:]

    config = toy_config()
    config.unlock()
    config.train.batch_size = 64
    recipe = toy_recipe(config)
    step_a, params_a, ema_a = _final_params(straight, config, recipe)
    step_b, params_b, ema_b = _final_params(killed, config, recipe)
    assert step_a == step_b == steps
    np.testing.assert_array_equal(params_a, params_b)
    np.testing.assert_array_equal(ema_a, ema_b)


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path):
    """Preemption: SIGTERM makes the run save a checkpoint at its next log step and exit 0."""
    workdir = str(tmp_path / "run")
    args = ["launch.py", "--config", "experiments/toy2d.py:eight_gaussians", "--config.train.num_steps=100000",
            "--config.train.checkpoint_every=50000", "--config.train.log_every=10", "--config.train.batch_size=32",
            "--config.model.hidden=16", "--config.model.num_blocks=1", "--workdir", workdir]
    proc = popen_python(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
    step = checkpointer.latest_step()
    checkpointer.close()
    assert step is not None and step % 10 == 0 and 0 < step < 100000

    # The preempted run's checkpoint serves --mode=sample.
    result = run_python([*args, "--mode=sample", "--config.sample.num=6", "--config.sample.batch_size=4",
                         "--config.sample.steps=ddim3"])
    assert result.returncode == 0, result.stderr[-3000:]
    npz = result.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    assert os.path.dirname(npz) == os.path.join(workdir, "samples") and f"step{step}_ema_" in npz
    with np.load(npz) as f:
        assert f["samples"].shape == (6, 2) and np.all(np.isfinite(f["samples"]))
