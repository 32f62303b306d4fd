"""The golden cases of every model family, shared by the recorder (``tests.golden.record``) and the
test (``tests.golden.test_family_golden``): one tiny run per experiment, what is measured of it, and
how a measurement becomes exact, comparable JSON.

A run is an experiment file's variant with a tiny network and a 4-step budget, set only through keys
that every version of the config keeps (``model.*`` network hyperparameters, ``train.*``,
``sample.*``, ``eval.*``), trained by ``train_and_evaluate``. Of each run it records:

* ``metrics``: every number of every step of ``metrics.jsonl`` (not the timing), as ``float.hex``;
* ``state``: every leaf of the restored ``TrainState`` by its tree path: sha256 of its bytes, dtype,
  shape and a float summary (only for reading a mismatch);
* ``training_picture``: sha256 of the sample picture training's last step writes;
* ``draws``: ``array_record`` of ``make_sampler(...)(ema_params, key)`` per sampler choice of the family;
* ``eval``: the numbers of ``evaluate``'s records (the bounds, the classifier's accuracy, the sample
  quality where it is cheap), as ``float.hex``, timings left out.

Two of the runs' workdirs, as the pre-refactor code wrote them, are kept in ``old_workdir/``
(``OLD_WORKDIRS``): the test restores them with today's code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

__all__ = ["GOLDEN_FILE", "GOLDEN_FILES", "OLD_WORKDIRS", "RUNS", "Draw", "Eval", "Run", "Runs", "array_record", "chosen_labels", "exact", "state_records"]

TINY_UNET = dict(channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(), norm_groups=4,
                 num_heads=1)
TINY_MLP = dict(hidden=16, num_blocks=1)
# 4 full-lr steps (no warmup) and an EMA decay of 0.5, so that the EMA params the draws use have moved
# from the initial ones everywhere: the zero-initialised output and residual convs pass gradients on to
# the time and label embeddings from the third update on.
TRAIN = dict(batch_size=8, num_steps=4, warmup_steps=0, ema_decay=0.5, log_every=1, checkpoint_every=4,
             sample_every=1000, async_checkpoints=False)
# Evaluation on the first 4 test digits (the classifier: 2 noisy copies per band), 8 samples scored.
EVAL = dict(batch_size=4, num_examples=4, elbo_draws=2, num_samples=8)
DRAW_SEED = 7
NUM_DRAWS = 4
# Metrics that are not functions of the run (wall-clock rates).
_TIMING_KEYS = ("steps_per_sec",)
# Keys of the evaluation records that are timings.
_EVAL_SKIPPED = ("seconds",)


@dataclasses.dataclass(frozen=True)
class Draw:
    """One sampler draw: ``entry`` (an item of ``eval.sample_steps``, None: ``config.sample``'s own
    choice) on ``config.sample`` changed by ``sample`` (``solver_options`` merged). ``core``: checked
    by the test's default selection (the others only with ``DIFFJAX_GOLDEN=all``)."""

    entry: str | None
    sample: dict[str, Any] = dataclasses.field(default_factory=dict)
    core: bool = False

    @property
    def guided_by_classifier(self) -> bool:
        return bool(self.sample.get("classifier_scale", 0.0))


@dataclasses.dataclass(frozen=True)
class Eval:
    """One ``evaluate`` call on ``config.eval`` changed by ``eval``: the bounds (``samples`` False) or
    only the sample quality (``samples`` True). ``core``: as ``Draw``'s."""

    eval: dict[str, Any]
    samples: bool = False
    core: bool = False


@dataclasses.dataclass(frozen=True)
class Run:
    """One experiment variant with the tiny network and budget, its draws and its evaluations (by name).
    ``sample``: ``config.sample`` changes (the sampler of training's last step, and the draws' base)."""

    experiment: str
    variant: str
    draws: dict[str, Draw]
    evals: dict[str, Eval]
    sample: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def network(self) -> dict[str, Any]:
        toy = self.experiment == "toy2d" or "toy2d" in self.variant.split(",")
        return TINY_MLP if toy else TINY_UNET


_ANCESTRAL = {"method": "ddpm"}
_CLS = {"classifier_scale": 2.0}
_CFG = {"guidance_weight": 2.0}
# The chain's bound on a 10-step respacing; the continuous bound; the PF-ODE bound on 2 examples at
# loose tolerances.
_CHAIN = {"nll_chain": "10"}
_ELBO = {"elbo": True}
_ODE = {"ode_nll": True, "ode_num_examples": 2, "ode_rtol": 1e-2, "ode_atol": 1e-2}

RUNS: dict[str, Run] = {
    "classifier": Run("digits_classifier", "smoke", {}, {"accuracy": Eval({}, core=True)}),
    "ddpm": Run("digits_ddpm", "smoke", {
        "ddim5": Draw("ddim5"),
        "ddpm5": Draw("5", _ANCESTRAL),
        "dpmpp_2m:3": Draw("dpmpp_2m:3", core=True),
        "heun:2:karras": Draw("heun:2:karras"),
        "euler_ancestral:3_eta0.7": Draw("euler_ancestral:3", {"solver_options": {"eta": 0.7}}, core=True),
        "ddim5_cls2": Draw("ddim5", _CLS),
        "ddpm5_cls2": Draw("5", {**_ANCESTRAL, **_CLS}, core=True),
    }, {
        "bounds": Eval({**_CHAIN, **_ELBO, **_ODE}, core=True),
        "sample_quality": Eval({"sample_steps": "ddim5"}, samples=True),
    }),
    # learned_range variances, the vlb objective with the loss-aware timestep sampler, rescaled timesteps
    "iddpm_vlb": Run("digits_iddpm", "vlb_cosine", {
        "ddpm5": Draw("5", core=True),
        "dpmpp_2m:3": Draw("dpmpp_2m:3"),
    }, {"bounds": Eval({**_CHAIN, **_ELBO}, core=True)}, sample={"steps": "5"}),
    "cond": Run("digits_cond", "smoke", {
        "ddim5_w2": Draw("ddim5", _CFG, core=True),
        "dpmpp_2m:3_w2": Draw("dpmpp_2m:3", _CFG),
    }, {"bounds": Eval({**_CHAIN, **_ELBO})}),
    # VDM's monotone network schedule with learned ends
    "vdm": Run("digits_vdm", "learned,smoke", {
        "dpmpp_2m:3": Draw(None),
        "dpmpp_2m:3_cls2": Draw(None, _CLS, core=True),
    }, {
        "bounds": Eval({**_ELBO, **_ODE}, core=True),
        "elbo_T10": Eval({**_ELBO, "elbo_steps": 10}),
    }),
    "edm": Run("digits_edm", "smoke", {
        "heun:2:karras": Draw(None, core=True),
        "edm_stochastic:2:karras_churn1": Draw("edm_stochastic:2:karras", {"solver_options": {"s_churn": 1.0}}),
    }, {"bounds": Eval(_ELBO, core=True)}),
    "toy2d": Run("toy2d", "eight_gaussians,smoke", {
        "ddim5": Draw("ddim5"),
        "ddpm5": Draw("5", _ANCESTRAL, core=True),
        "dpmpp_2m:3": Draw("dpmpp_2m:3"),
    }, {"sample_quality": Eval({"sample_steps": "ddim5 dpmpp_2m:3"}, samples=True, core=True)}),
    # the fixed linear gamma schedule, on data that are not 8-bit (no bound: the toys have no test split)
    "vdm_toy2d": Run("digits_vdm", "fixed,toy2d,smoke", {
        "dpmpp_2m:3": Draw(None),
        "dpmpp_2m_sde:3_eta0.7": Draw("dpmpp_2m_sde:3", {"solver_options": {"eta": 0.7}}, core=True),
    }, {}),
    # naive diffusion's own sampler over every level and over one jump of all 5
    "naive": Run("digits_naive", "toy2d,smoke", {"all_levels": Draw(None, core=True), "1_level": Draw("1")}, {
        "sample_quality": Eval({"sample_steps": "1"}, samples=True),
    }),
}
"""The runs by name, the classifier first (``ddpm``'s and ``vdm``'s classifier-guided draws use it)."""

CLASSIFIER_RUN = "classifier"
OLD_WORKDIRS = {"discrete": "ddpm", "continuous": "vdm"}
"""The fixtures of ``old_workdir/`` by name, and the run each is a copy of."""
OLD_WORKDIR_DRAW = "dpmpp_2m:3"
"""The draw (of the run's ``draws``) the test repeats from each fixture."""
GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
GOLDEN_FILE = os.path.join(GOLDEN_DIR, "families.json")
"""The first recording (the machine of the refactor: its CPU was not stamped)."""
GOLDEN_FILES = (GOLDEN_FILE, os.path.join(GOLDEN_DIR, "families_avx2.json"),
                os.path.join(GOLDEN_DIR, "families_avx512.json"))
"""One recording of the same code per kind of CPU: XLA:CPU compiles for the CPU it runs on (its
vector width, FMA contraction), so the same program rounds differently on another kind of CPU
(an AVX2-only AMD EPYC moved the last bits of every trained leaf of families.json; an AMD EPYC
with AVX-512 and bf16 matches neither: families_avx512.json, recorded there from 9dfc988). The test asks
that every number of the machine it runs on equals, bit for bit, one and the same recording."""


def exact(value):
    """``value`` (numbers in nested dicts and lists) as exact JSON: floats as ``float.hex``, the
    keys of ``_EVAL_SKIPPED`` dropped."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items() if k not in _EVAL_SKIPPED}
    if isinstance(value, (list, tuple)):
        return [exact(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value).hex()
    return value


def array_record(array) -> dict[str, Any]:
    """sha256 of the array's bytes, its dtype and shape, and a float summary for reading a mismatch."""
    a = np.ascontiguousarray(np.asarray(array))
    values = a.astype(np.float64) if a.size else np.zeros((1,))
    return {
        "sha256": hashlib.sha256(a.tobytes()).hexdigest(), "dtype": str(a.dtype), "shape": list(a.shape),
        "summary": {"mean": float(values.mean()), "std": float(values.std()), "abs_max": float(np.abs(values).max())},
    }


def state_records(state) -> dict[str, dict[str, Any]]:
    """``array_record`` of every leaf of a ``TrainState``, keyed by its tree path."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(path): array_record(leaf) for path, leaf in leaves}


def chosen_labels(items: dict[str, Draw | Eval], core: bool) -> list[str]:
    """The labels of ``items`` (a run's draws or evaluations): the core ones, or all of them."""
    return [label for label, item in items.items() if item.core or not core]


def run_config(name: str):
    """(config, recipe) of run ``name``: the experiment variant with the tiny network and budget."""
    from diffjax.run.config import validate
    from diffjax.run.experiments import build_recipe, load_experiment

    run = RUNS[name]
    module = load_experiment(run.experiment)
    config = module.get_config(run.variant)
    config.model.update(run.network)
    config.train.update(TRAIN)
    config.sample.num = NUM_DRAWS
    config.sample.update(run.sample)
    config.eval.update(EVAL)
    validate(config)
    return config, build_recipe(module, config)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` without the timings, exact."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [exact({k: v for k, v in r.items() if k not in _TIMING_KEYS}) for r in records]


def sample_settings(config, draw: Draw) -> dict[str, Any]:
    """``config.sample`` as a dict with the draw's changes."""
    settings = config.sample.to_dict()
    changes = dict(draw.sample)
    settings["solver_options"] = {**settings["solver_options"], **changes.pop("solver_options", {})}
    settings.update(changes)
    return settings


def draw_record(config, recipe, params, draw: Draw, mesh, classifier=None) -> dict[str, Any]:
    """``array_record`` of ``NUM_DRAWS`` samples of ``params`` from ``PRNGKey(DRAW_SEED)``, drawn as
    ``draw`` says on ``config.sample`` (``classifier``: the guiding classifier of a guided draw)."""
    from diffjax.runtime.sampling import SamplerChoice, make_sampler

    choice = SamplerChoice.from_settings(sample_settings(config, draw), draw.entry)
    sampler = make_sampler(recipe, mesh, num_samples=NUM_DRAWS, choice=choice, classifier=classifier)
    return array_record(sampler(params, jax.random.PRNGKey(DRAW_SEED)))


def read_workdir_config(workdir: str):
    """A workdir's ``config.json`` as the code reads a run's config: through
    ``run.config.read_config_json`` where the code has it (it maps an old file's keys to today's),
    else as a plain ConfigDict, as the pre-refactor code read it (``run.restore.restore_classifier``)."""
    import ml_collections

    from diffjax.run import config as run_config_module

    path = os.path.join(workdir, "config.json")
    read = getattr(run_config_module, "read_config_json", None)
    if read is not None:
        return read(path)
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_workdir(workdir: str, mesh):
    """(config, recipe, state) of a finished run's workdir: its config.json, its experiment's recipe,
    its latest checkpoint."""
    from diffjax.run.experiments import build_recipe, load_experiment
    from diffjax.run.restore import restore_train_state

    config = read_workdir_config(workdir)
    recipe = build_recipe(load_experiment(config.experiment), config)
    return config, recipe, restore_train_state(config, workdir, recipe, mesh)


def old_workdir_record(workdir: str, name: str, mesh) -> dict[str, Any]:
    """What the test checks of an ``old_workdir`` fixture (a copy of run ``name``): the leaves of its
    restored state and its ``OLD_WORKDIR_DRAW`` draw."""
    config, recipe, state = restore_workdir(workdir, mesh)
    draw = RUNS[name].draws[OLD_WORKDIR_DRAW]
    return {"run": name, "state": state_records(state),
            "draw": draw_record(config, recipe, state.ema_params, draw, mesh)}


class Runs:
    """Trains each run once, on first use, in ``root/<name>``, and measures it."""

    def __init__(self, root: str):
        self.root = root
        self._trained: dict[str, tuple[Any, Any, str]] = {}
        self._classifier = None
        from diffjax.runtime.mesh import make_mesh

        self.mesh = make_mesh()

    def trained(self, name: str):
        """(config, recipe, workdir) of run ``name``, trained on first call."""
        if name not in self._trained:
            from diffjax.train.loop import train_and_evaluate

            config, recipe = run_config(name)
            workdir = os.path.join(self.root, name)
            train_and_evaluate(config, workdir, recipe)
            self._trained[name] = (config, recipe, workdir)
        return self._trained[name]

    def classifier(self):
        """The ``GuidanceClassifier`` of the classifier run, restored from its workdir."""
        if self._classifier is None:
            from diffjax.run.restore import restore_classifier

            self._classifier = restore_classifier(self.trained(CLASSIFIER_RUN)[2], self.mesh)
        return self._classifier

    def metrics(self, name: str) -> list[dict[str, Any]]:
        return read_metrics(self.trained(name)[2])

    def training_picture(self, name: str) -> str | None:
        """sha256 of the sample picture of training's last step (None: a classifier draws none)."""
        path = os.path.join(self.trained(name)[2], "samples", f"step_{TRAIN['num_steps']}.png")
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def state(self, name: str):
        from diffjax.run.restore import restore_train_state

        config, recipe, workdir = self.trained(name)
        return restore_train_state(config, workdir, recipe, self.mesh)

    def draws(self, name: str, labels=None) -> dict[str, dict[str, Any]]:
        """``array_record`` of each draw of run ``name`` (or of those ``labels``) from its EMA params."""
        config, recipe, _ = self.trained(name)
        params = self.state(name).ema_params
        chosen = {label: draw for label, draw in RUNS[name].draws.items() if labels is None or label in labels}
        return {label: draw_record(config, recipe, params, draw, self.mesh,
                                   self.classifier() if draw.guided_by_classifier else None)
                for label, draw in chosen.items()}

    def evaluation(self, name: str, labels=None) -> dict[str, Any]:
        """The exact numbers of ``evaluate``'s records, per evaluation of run ``name`` (or of those
        ``labels``)."""
        from diffjax.run.evaluate import evaluate

        config, recipe, workdir = self.trained(name)
        records = {}
        for label, spec in RUNS[name].evals.items():
            if labels is not None and label not in labels:
                continue
            changed = config.copy_and_resolve_references()
            changed.eval.update(spec.eval)
            result = evaluate(changed, workdir, recipe, compute_nll=not spec.samples, compute_samples=spec.samples,
                              mesh=self.mesh, feature_cache_dir=os.path.join(self.root, "feature_cache"))
            records[label] = exact(result)
        return records

    def record(self, name: str, core: bool = False) -> dict[str, Any]:
        """Everything measured of run ``name`` (what ``families.json`` holds per run); ``core``: only
        the draws and evaluations marked core."""
        run = RUNS[name]
        return {
            "experiment": f"{run.experiment}:{run.variant}",
            "metrics": self.metrics(name), "state": state_records(self.state(name)),
            "training_picture": self.training_picture(name),
            "draws": self.draws(name, chosen_labels(run.draws, core)),
            "eval": self.evaluation(name, chosen_labels(run.evals, core)),
        }
