"""The experiment x mode matrix: every experiment file's smoke variant through launch.py, in
every mode it supports, checked by its exit status and its outputs.

One class per experiment file (``EXPERIMENTS``; a file missing from it fails
``test_every_experiment_file_is_in_the_matrix``): its class fixture trains the smoke variant
once (``--mode=train``: checkpoints 2 and 4, metrics, the sample grid), and the other cells
reuse that workdir: ``--mode=eval`` (the ``eval/*.json`` records of the family, every number
finite, the sample-quality rows' NFE), ``--mode=sample`` (the ``.npz`` samples' shape and range,
the record's NFE), and ``--mode=sample`` with a solver (``--config.sample.solver=...``) for the
Gaussian families. Naive diffusion has its own sampler (no solver cell); the noise-conditional
classier is trained and evaluated (accuracy), never sampled. Under ``--dist loadscope`` each
class is one unit, so the two xdist workers share the experiments. A class's cells run one
after another in one child process (``tests.support.launch_session``: launch.py's flag parsing
and ``main``, its flags reset between cells), which starts Python and JAX once instead of
once a cell; the launches share the session's compilation cache
(``tests.support.subprocesses``), so an eval or sample cell compiles only what training did not.

The paper-scale experiments (ddpm_cifar10, iddpm_*, ddpm_celebahq256, ddpm_lsun_church256)
need data sets that are not prepared here: their smoke variants are their own recipe at tiny
width on the offline digits (``experiments/ddpm_cifar10.py:set_smoke``), so they run every
cell too; their paper data's "not prepared" error is checked in tests/e2e/test_launch.py
(``test_missing_dataset_fails_at_once_with_what_to_do``), and their paper-size networks by
``--dry_run`` there."""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os

import numpy as np
import pytest

from diffjax.diffusion.solvers import SOLVERS
from tests.support.launch_session import LaunchSession
from tests.support.subprocesses import REPO

pytestmark = pytest.mark.slow

SOLVER_STEPS = 3
DIGITS = (8, 8, 1)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment file's row of the matrix.

    Attributes:
      file: the file's name in experiments/, without ``.py``.
      variant: its smoke variant (what follows ":" in --config).
      family: "discrete", "continuous", "naive" or "classifier": which cells and records apply.
      nfe: network evaluations per sample of the smoke variant's own sampler (``sample.*``).
      eval_nfe: those of its sample-quality rows in ``eval/sample_quality.json``.
      shape: one sample's shape.
      solver: the solver of the sample-with-a-solver cell (Gaussian families), at SOLVER_STEPS.
      solver_args: more overrides of that cell (e.g. classifier-free guidance).
      records: the ``eval/*.json`` records, when not its family's (``EVAL_RECORDS``).
    """

    file: str
    variant: str
    family: str
    nfe: int = 5
    eval_nfe: tuple[int, ...] = (5,)
    shape: tuple[int, ...] = DIGITS
    solver: str = "dpmpp_2m"
    solver_args: tuple[str, ...] = ()
    records: frozenset[str] | None = None

    @property
    def config(self) -> str:
        return f"experiments/{self.file}.py:{self.variant}"


EXPERIMENTS = (
    Experiment("toy2d", "eight_gaussians,smoke", "discrete", shape=(2,),
               records=frozenset({"sample_quality.json"})),  # the toys have no evaluation split: no NLL
    Experiment("digits_ddpm", "smoke", "discrete"),
    Experiment("digits_iddpm", "hybrid_cosine,smoke", "discrete"),  # learned variance, strided ancestral sampler
    Experiment("digits_cond", "smoke", "discrete", solver_args=("--config.sample.guidance_weight=2",)),
    Experiment("digits_classifier", "smoke", "classifier"),
    Experiment("digits_naive", "smoke", "naive"),
    Experiment("digits_vdm", "smoke", "continuous", nfe=4, solver="dpmpp_2m_sde"),  # dpmpp_2m:3; eval heun:2
    Experiment("digits_edm", "smoke", "continuous", solver="euler"),  # heun:2 on the Karras grid
    Experiment("ddpm_cifar10", "smoke", "discrete"),
    Experiment("iddpm_cifar10", "hybrid_cosine,smoke", "discrete"),
    Experiment("iddpm_imagenet64", "vlb_linear,smoke", "discrete"),  # the other objective, schedule, t-sampler
    Experiment("ddpm_celebahq256", "smoke", "discrete"),
    Experiment("ddpm_lsun_church256", "smoke", "discrete"),
)

EVAL_RECORDS = {
    "discrete": {"nll.json", "sample_quality.json"},
    "continuous": {"elbo.json", "sample_quality.json"},
    "naive": {"sample_quality.json"},
    "classifier": {"classifier.json"},
}


# Experiment files whose workdirs start from released weights, not from training, and the test
# that runs them through launch.py instead.
IMPORTED = {"pretrained": "tests/e2e/test_pretrained.py (--mode=import, then --mode=sample on it)"}


def test_every_experiment_file_is_in_the_matrix():
    files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "experiments", "*.py"))}
    assert files == {e.file for e in EXPERIMENTS} | set(IMPORTED)


def _launch(session: LaunchSession, experiment: Experiment, workdir, *args):
    """Run launch.py on ``experiment``'s smoke variant in ``session``; assert it exits 0; return
    its stdout."""
    result = session.run("--config", experiment.config, "--workdir", str(workdir), *args)
    assert result.returncode == 0, f"{experiment.config} {args}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def _numbers(record):
    """Every number in a JSON record (bools excluded)."""
    if isinstance(record, dict):
        return [n for value in record.values() for n in _numbers(value)]
    if isinstance(record, list):
        return [n for value in record for n in _numbers(value)]
    return [record] if isinstance(record, (int, float)) and not isinstance(record, bool) else []


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _wrote_npz(stdout: str) -> str:
    """The ``.npz`` path of ``--mode=sample``'s last line ("wrote PATH")."""
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("wrote ") and last.endswith(".npz"), last
    return last.removeprefix("wrote ")


def _check_samples(experiment: Experiment, workdir, stdout: str, nfe: int) -> dict:
    """The samples of a sample cell: shape, finite, in [-1, 1] for images; the record's NFE."""
    npz = _wrote_npz(stdout)
    assert os.path.dirname(npz) == os.path.join(str(workdir), "samples")
    record = _read_json(npz[: -len(".npz")] + ".json")
    with np.load(npz) as f:
        samples = f["samples"]
    assert samples.shape == (record["num"], *experiment.shape) and record["num"] > 0
    assert np.all(np.isfinite(samples))
    if experiment.shape != (2,):
        assert samples.min() >= -1 and samples.max() <= 1
    assert record["checkpoint_step"] == 4 and record["nfe"] == nfe, record
    return record


class MatrixCells:
    """The cells of one experiment; a subclass per row of EXPERIMENTS sets ``experiment``."""

    experiment: Experiment

    @pytest.fixture(scope="class")
    def session(self):
        """The process that runs this experiment's cells (``tests.support.launch_session``: one
        Python and JAX start for all of them). XLA compiles at its lowest optimisation level, as in
        every child of the tests (``tests.support.subprocesses.FAST_COMPILE_FLAGS``): the cells check
        what is written, not speed (a cold smoke training run of ddpm_cifar10: 56 s of CPU instead of
        95 s)."""
        with LaunchSession() as session:
            yield session

    @pytest.fixture(scope="class")
    def trained(self, session, tmp_path_factory):
        """The workdir of the smoke variant trained once (4 steps), and launch.py's stdout."""
        workdir = tmp_path_factory.mktemp(self.experiment.file)
        return workdir, _launch(session, self.experiment, workdir)

    def test_train(self, trained):
        workdir, _ = trained
        assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
        assert _read_json(workdir / "config.json")["experiment"] == self.experiment.file
        with open(workdir / "metrics.jsonl") as f:
            metrics = [json.loads(line) for line in f]
        assert [m["step"] for m in metrics] == [2, 4]
        assert all(math.isfinite(m["loss"]) for m in metrics)
        if self.experiment.family != "classifier":
            assert os.path.exists(workdir / "samples" / "step_4.png")

    def test_eval(self, session, trained):
        workdir, _ = trained
        family = self.experiment.family
        _launch(session, self.experiment, workdir, "--mode=eval")
        records = {name: _read_json(workdir / "eval" / name) for name in os.listdir(workdir / "eval")
                   if name.endswith(".json")}
        assert set(records) == (self.experiment.records or EVAL_RECORDS[family])
        for name, record in records.items():
            assert all(math.isfinite(n) for n in _numbers(record)), name
            assert record["checkpoint_step"] == 4, name
        if family == "classifier":
            assert 0 <= records["classifier.json"]["accuracy"] <= 1
            return
        rows = records["sample_quality.json"]["results"]
        assert tuple(row["nfe"] for row in rows) == self.experiment.eval_nfe
        if "nll.json" in records:
            nll = records["nll.json"]
            assert nll["bpd"] > 0
            assert (nll["chain_steps"], nll["num_examples"]) == (10, 16)  # the smoke variants' short bound
        if family == "continuous":
            assert records["elbo.json"]["bpd"] > 0

    def test_sample(self, session, trained):
        workdir, _ = trained
        stdout = _launch(session, self.experiment, workdir, "--mode=sample")
        _check_samples(self.experiment, workdir, stdout, self.experiment.nfe)

    def test_sample_with_a_solver(self, session, trained):
        workdir, _ = trained
        solver = self.experiment.solver
        stdout = _launch(session, self.experiment, workdir, "--mode=sample", f"--config.sample.solver={solver}",
                         f"--config.sample.steps={SOLVER_STEPS}", *self.experiment.solver_args)
        record = _check_samples(self.experiment, workdir, stdout, SOLVERS[solver].nfe_per_step * SOLVER_STEPS + 1)
        assert (record["sampler"], record["solver"], record["steps"]) == ("solver", solver, SOLVER_STEPS)


def _cells(experiment: Experiment) -> dict:
    """The class body of ``experiment``'s row: the cells its family has not are removed."""
    body = {"experiment": experiment, "__doc__": experiment.config}
    if experiment.family == "classifier":  # draws no samples: it guides a diffusion model's sampler
        body["test_sample"] = None
    if experiment.family not in ("discrete", "continuous"):  # no solvers (naive: its own sampler)
        body["test_sample_with_a_solver"] = None
    return body


for _experiment in EXPERIMENTS:
    globals()["Test_" + _experiment.file] = type("Test_" + _experiment.file, (MatrixCells,), _cells(_experiment))
del _experiment
