"""Every model family computes bit for bit what the code computed when ``families.json`` was recorded
(``python -m tests.golden.record``; the runs and what is measured: ``tests/golden/cases.py``).

Per run (an experiment variant, tiny network, 4 steps): the training metrics of every step and every
leaf of the trained state, the sample picture of training's last step, one draw per sampler path of
its family, and the numbers of every bound (or the classifier's accuracy, or the sample quality). And
the ``old_workdir/`` fixtures, written by the code of the recording: their ``config.json`` restores
with today's code, to the same state, drawing the same samples.

By default the test checks every run's training and the fixtures, and the draws and evaluations marked
``core`` in ``cases.RUNS`` (about one per family path; the CI budget); ``DIFFJAX_GOLDEN=all`` checks
every recorded draw and evaluation (the refactor's full check: several minutes on 2 cores). Today's
numbers are measured by the recorder itself (``python -m tests.golden.record --core --keep_going``),
in a child process that starts from the user's XLA flags: the tests' own processes compile at XLA's
lowest optimisation level (``tests.support.subprocesses.FAST_COMPILE_FLAGS``), which rounds
differently from the recordings.

Bitwise: sha256 of the arrays' bytes, floats compared as ``float.hex``, against one recording per kind
of CPU (``cases.GOLDEN_FILES``: XLA:CPU's code, and so its rounding, depends on the CPU): every check of
a session must equal one and the same recording. A mismatch lists what differs from the closest
recording (a leaf's or a draw's dtype, shape and float summary on both sides; a number's two values and
their difference). A new kind of CPU that matches none needs its recording, made from the code of the
first one (``recorded_from``) with ``python -m tests.golden.record --out families_<cpu>.json``.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.golden.cases import GOLDEN_FILES, OLD_WORKDIRS, RUNS, chosen_labels
from tests.support.subprocesses import run_python

pytestmark = pytest.mark.slow

_SHOWN = 30  # differences listed per failure
FULL = os.environ.get("DIFFJAX_GOLDEN", "") == "all"
_MEASURE_TIMEOUT = 3600 if FULL else 1200  # s; the core checks take about 5 minutes of one core


@pytest.fixture(scope="module")
def golden() -> "Recordings":
    return Recordings(GOLDEN_FILES)


class Recordings:
    """The recordings by file name, and which of them every check so far has equalled."""

    def __init__(self, files):
        self.by_name = {}
        for file in files:
            with open(file) as f:
                self.by_name[os.path.basename(file)] = json.load(f)
        self.still_equal = set(self.by_name)

    def assert_same(self, pick, actual, what: str) -> None:
        """``actual`` equals ``pick(recording)`` of a recording that every earlier check equalled too."""
        lines = {name: differences(pick(self.by_name[name]), actual) for name in sorted(self.by_name)}
        equal = {name for name, found in lines.items() if not found}
        if equal & self.still_equal:
            self.still_equal &= equal
            return
        if equal:
            pytest.fail(f"{what}: equals {sorted(equal)}, but the earlier checks equalled {sorted(self.still_equal)} "
                        "only: the numbers of one machine mix two recordings", pytrace=False)
        closest = min(lines, key=lambda name: len(lines[name]))
        found = lines[closest]
        shown = "\n".join(found[:_SHOWN]) + (f"\n... and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")
        pytest.fail(f"{what}: equals none of {sorted(lines)}; {len(found)} differences from the closest, {closest}\n"
                    f"{shown}", pytrace=False)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    """Today's numbers of every check, measured once by ``tests.golden.record`` in a child process at
    the XLA flags of the recordings (the user's: not the tests' fast-compile flags, which change the
    compiled code and so its rounding); a measurement that raised holds its traceback."""
    out = tmp_path_factory.mktemp("golden") / "measured.json"
    args = ["-m", "tests.golden.record", "--out", str(out), "--keep_going", *([] if FULL else ["--core"])]
    result = run_python(args, timeout=_MEASURE_TIMEOUT, fast_compile=False)
    if result.returncode != 0:
        pytest.fail(f"python {' '.join(args)} failed:\n{result.stderr[-4000:]}", pytrace=False)
    with open(out) as f:
        return json.load(f)


def _item(measured: dict, *path: str):
    """``measured[path[0]][path[1]]...``; a measurement that raised fails the test with its traceback."""
    item = measured
    for key in path:
        if isinstance(item, dict) and set(item) == {"error"}:
            break
        item = item[key]
    if isinstance(item, dict) and set(item) == {"error"}:
        pytest.fail(f"measuring {'/'.join(path)} raised:\n{item['error']}", pytrace=False)
    return item


def _is_array_record(value) -> bool:
    return isinstance(value, dict) and "sha256" in value


def _number(value):
    """A ``float.hex`` string as its float, else None."""
    if isinstance(value, str) and ("0x" in value or value in ("inf", "-inf", "nan")):
        try:
            return float.fromhex(value)
        except ValueError:
            return None
    return None


def differences(expected, actual, path: str = "") -> list[str]:
    """What differs between a golden value and today's, one line each, named by its path."""
    if _is_array_record(expected) and _is_array_record(actual):
        keys = ("sha256", "dtype", "shape")
        if all(expected[k] == actual[k] for k in keys):
            return []
        return [f"{path}: golden {expected['dtype']}{expected['shape']} {expected['summary']}, "
                f"now {actual['dtype']}{actual['shape']} {actual['summary']}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        lines = [f"{path}/{k}: missing now" for k in expected if k not in actual]
        lines += [f"{path}/{k}: new (not in the golden)" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                lines += differences(expected[k], actual[k], f"{path}/{k}")
        return lines
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [line for i, (e, a) in enumerate(zip(expected, actual)) for line in differences(e, a, f"{path}[{i}]")]
    if expected == actual:
        return []
    e, a = _number(expected), _number(actual)
    if e is not None and a is not None:
        return [f"{path}: golden {e!r}, now {a!r} (now - golden = {a - e:.3g})"]
    return [f"{path}: golden {expected!r}, now {actual!r}"]


@pytest.mark.parametrize("name", list(RUNS))
def test_training_is_bitwise_the_golden(measured, golden, name):
    """Every metric of every step, every leaf of the trained state, training's last sample picture."""
    for key, what in (("metrics", "metrics.jsonl"), ("state", "the trained TrainState"),
                      ("training_picture", "the picture of training's last step")):
        golden.assert_same(lambda g: g["runs"][name][key], _item(measured, "runs", name, key), f"{name}: {what}")


@pytest.mark.parametrize("name", [name for name, run in RUNS.items() if chosen_labels(run.draws, not FULL)])
def test_draws_are_bitwise_the_golden(measured, golden, name):
    """One draw of the EMA params per sampler path of the family."""
    labels = chosen_labels(RUNS[name].draws, not FULL)
    golden.assert_same(lambda g: {label: g["runs"][name]["draws"][label] for label in labels},
                       _item(measured, "runs", name, "draws"), f"{name}: draws")


@pytest.mark.parametrize("name", [name for name, run in RUNS.items() if chosen_labels(run.evals, not FULL)])
def test_evaluation_is_bitwise_the_golden(measured, golden, name):
    """Every number of the bounds, the classifier's accuracy, the sample quality."""
    labels = chosen_labels(RUNS[name].evals, not FULL)
    golden.assert_same(lambda g: {label: g["runs"][name]["eval"][label] for label in labels},
                       _item(measured, "runs", name, "eval"), f"{name}: evaluate's records")


@pytest.mark.parametrize("kind", list(OLD_WORKDIRS))
def test_old_workdir_restores_to_the_golden(measured, golden, kind):
    """A workdir written by the code of the recording: today's code reads its config.json, restores
    its checkpoint to the same leaves and draws the same samples from it."""
    golden.assert_same(lambda g: g["old_workdir"][kind], _item(measured, "old_workdir", kind),
                       f"old_workdir/{kind}")
