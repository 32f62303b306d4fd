"""Every model family computes bit for bit what the code computed when ``families.json`` was recorded
(``python -m tests.golden.record``; the runs and what is measured: ``tests/golden/cases.py``).

Per run (an experiment variant, tiny network, 4 steps): the training metrics of every step and every
leaf of the trained state, the sample picture of training's last step, one draw per sampler path of
its family, and the numbers of every bound (or the classifier's accuracy, or the sample quality). And
the ``old_workdir/`` fixtures, written by the code of the recording: their ``config.json`` restores
with today's code, to the same state, drawing the same samples.

By default the test checks every run's training and the fixtures, and the draws and evaluations marked
``core`` in ``cases.RUNS`` (about one per family path; the CI budget); ``DIFFJAX_GOLDEN=all`` checks
every recorded draw and evaluation (the refactor's full check: several minutes on 2 cores).

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
import shutil

import pytest

from tests.golden.cases import GOLDEN_DIR, GOLDEN_FILES, OLD_WORKDIRS, RUNS, Runs, old_workdir_record, state_records

pytestmark = pytest.mark.slow

_SHOWN = 30  # differences listed per failure
FULL = os.environ.get("DIFFJAX_GOLDEN", "") == "all"


def _chosen(items) -> list[str]:
    """The labels of the draws or evaluations checked: all of them (``DIFFJAX_GOLDEN=all``) or the core ones."""
    return [label for label, item in items.items() if FULL or item.core]


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
def runs(tmp_path_factory) -> Runs:
    """The runs, each trained once on first use, shared by the module's tests."""
    return Runs(str(tmp_path_factory.mktemp("golden_runs")))


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
def test_training_is_bitwise_the_golden(runs, golden, name):
    """Every metric of every step, every leaf of the trained state, training's last sample picture."""
    golden.assert_same(lambda g: g["runs"][name]["metrics"], runs.metrics(name), f"{name}: metrics.jsonl")
    golden.assert_same(lambda g: g["runs"][name]["state"], state_records(runs.state(name)),
                       f"{name}: the trained TrainState")
    golden.assert_same(lambda g: g["runs"][name]["training_picture"], runs.training_picture(name),
                       f"{name}: the picture of training's last step")


@pytest.mark.parametrize("name", [name for name, run in RUNS.items() if _chosen(run.draws)])
def test_draws_are_bitwise_the_golden(runs, golden, name):
    """One draw of the EMA params per sampler path of the family."""
    labels = _chosen(RUNS[name].draws)
    golden.assert_same(lambda g: {label: g["runs"][name]["draws"][label] for label in labels},
                       runs.draws(name, labels), f"{name}: draws")


@pytest.mark.parametrize("name", [name for name, run in RUNS.items() if _chosen(run.evals)])
def test_evaluation_is_bitwise_the_golden(runs, golden, name):
    """Every number of the bounds, the classifier's accuracy, the sample quality."""
    labels = _chosen(RUNS[name].evals)
    golden.assert_same(lambda g: {label: g["runs"][name]["eval"][label] for label in labels},
                       runs.evaluation(name, labels), f"{name}: evaluate's records")


@pytest.mark.parametrize("kind", list(OLD_WORKDIRS))
def test_old_workdir_restores_to_the_golden(runs, golden, kind, tmp_path):
    """A workdir written by the code of the recording: today's code reads its config.json, restores
    its checkpoint to the same leaves and draws the same samples from it."""
    workdir = shutil.copytree(f"{GOLDEN_DIR}/old_workdir/{kind}", tmp_path / kind)
    run = OLD_WORKDIRS[kind]
    golden.assert_same(lambda g: g["old_workdir"][kind], old_workdir_record(str(workdir), run, runs.mesh),
                       f"old_workdir/{kind}")

