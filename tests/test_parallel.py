"""Data parallelism: 8 simulated devices and two local processes agree with one device."""

import socket

import numpy as np
import pytest

from tests.train_utils import run_python

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out, *args, env=None):
    result = run_python(["tests/parallel_worker.py", str(out), *args], env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return np.load(out)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("one") / "one.npz", "--devices", "1")


def test_eight_devices_match_one(tmp_path, single):
    eight = _run(tmp_path / "eight.npz", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert int(eight["devices"]) == 8 and int(single["devices"]) == 1
    np.testing.assert_allclose(eight["losses"], single["losses"], rtol=2e-5)
    np.testing.assert_allclose(eight["params"], single["params"], rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(eight["ema"], single["ema"], rtol=1e-4, atol=2e-6)


def test_two_processes_match_one(tmp_path, single):
    port = _free_port()
    out = tmp_path / "two.npz"
    import subprocess
    import sys

    from tests.train_utils import REPO

    env = dict(__import__("os").environ, PYTHONPATH=REPO, XLA_FLAGS="")
    procs = [
        subprocess.Popen(
            [sys.executable, "tests/parallel_worker.py", str(out), "--process_id", str(i), "--num_processes", "2", "--port", str(port)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("two-process run timed out")
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    two = np.load(out)
    assert int(two["devices"]) == 2
    np.testing.assert_allclose(two["losses"], single["losses"], rtol=2e-5)
    np.testing.assert_allclose(two["params"], single["params"], rtol=1e-4, atol=2e-6)
