"""The probability-flow ODE bound over an evaluation split (``diffjax.evaluation.ode_nll``), its
config keys, ``evaluate``'s ``eval/ode_nll.json`` and the comparison table's column: a tiny,
perturbed (not zero-output) 8x8x1 UNet, 3 examples in batches of 2, loose tolerances."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from diffjax.errors import ConfigError
from diffjax.evaluation.ode_nll import ODEBoundEvaluator, first_examples, pixels_of
from diffjax.run.compare import write_report
from diffjax.run.config import validate
from diffjax.run.evaluate import evaluate
from diffjax.train.loop import make_init_fn
from diffjax.train.optim import make_optimizer
from tests.evaluation.test_evaluation import batches_of
from tests.support.train_utils import tiny_image_setup, toy_config, workdir_with_checkpoint

pytestmark = pytest.mark.slow  # child processes (or a trained module fixture): not in the fast tier

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def image_setup():
    config, recipe = tiny_image_setup()
    config.eval.update(ode_nll=True, ode_rtol=TOLERANCE, ode_atol=TOLERANCE, ode_seed=3)
    state = jax.jit(make_init_fn(recipe, make_optimizer(config.train)))(jax.random.PRNGKey(0))
    # The UNet's last layer starts at zero (D(x) = x / alpha): perturb every parameter so that the
    # density depends on the image.
    leaves, treedef = jax.tree.flatten(state.ema_params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    state = state.replace(ema_params=jax.tree.unflatten(treedef, noisy))
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 1))
    data = (pixels / 127.5 - 1).astype(np.float32)
    evaluator = ODEBoundEvaluator(recipe, probes=1, rtol=TOLERANCE, atol=TOLERANCE)
    return config, recipe, state, data, evaluator




def test_ode_bound_ignores_padding_and_is_reproducible(image_setup):
    _, recipe, state, data, evaluator = image_setup
    params = state.ema_params
    result = evaluator(params, batches_of(data, 2), seed=3)
    assert result.count == 3 and result.num_batches == 2
    assert np.all(np.isfinite(result.bpd_per_example)) and result.bpd > 0 and result.nfe_mean > 0
    np.testing.assert_allclose(result.bpd, np.mean(result.bpd_per_example), rtol=1e-12)
    assert result.bpd_stderr == pytest.approx(np.std(result.bpd_per_example, ddof=1) / np.sqrt(3))
    # The examples' densities differ (the perturbed model is not a constant flow).
    assert np.ptp(result.bpd_per_example) > 1e-3
    # The padding row's content (off the 8-bit grid, even) changes nothing; the same seed, the same numbers.
    garbage = evaluator(params, batches_of(data, 2, garbage=0.7), seed=3)
    np.testing.assert_array_equal(garbage.bpd_per_example, result.bpd_per_example)
    assert garbage.nfe_mean == result.nfe_mean
    # Another seed: other dequantisation noise and probes.
    other = evaluator(params, batches_of(data, 2), seed=4)
    assert np.abs(other.bpd_per_example - result.bpd_per_example).max() > 1e-6
    # The first example alone (its batch partner masked): the same noise, a solve with other adaptive
    # steps (shared by the batch), so the same number up to the solver's error. That error is not
    # rtol: the log-density is one entry of the solver's 65-entry state, and at rtol = atol = 1e-3
    # this bound is off by 0.6-1.5% (XLA -O3 / -O0; converged 19.313 bpd, 2,600 NFE at 1e-5), at 1e-4
    # by 0.03-0.1%: so the comparison is made at 1e-4.
    finer = ODEBoundEvaluator(recipe, probes=1, rtol=0.1 * TOLERANCE, atol=0.1 * TOLERANCE)
    first = finer(params, list(first_examples(batches_of(data, 2), 1)), seed=3)
    assert first.count == 1 and first.num_batches == 1 and first.bpd_stderr is None
    both = finer(params, batches_of(data, 2), seed=3)
    np.testing.assert_allclose(first.bpd_per_example[0], both.bpd_per_example[0], rtol=5e-3)
    record = result.to_json()
    assert record["num_examples"] == 3 and record["probes"] == 1 and record["rtol"] == TOLERANCE
    assert "1 Rademacher probes" in record["bound"] and record["bound"].startswith("probability-flow ODE")


def test_ode_bound_refuses_data_off_the_8_bit_grid(image_setup):
    _, _, state, data, evaluator = image_setup
    np.testing.assert_array_equal(pixels_of(np.array([-1.0, 1.0, 1 / 127.5 - 1], np.float32)), [0, 255, 1])
    off = data.copy()
    off[1, 0, 0, 0] += 0.5 / 127.5
    with pytest.raises(ValueError, match="not on the 8-bit grid"):
        evaluator(state.ema_params, batches_of(off, 2))
    with pytest.raises(ValueError, match="not on the 8-bit grid"):
        pixels_of(np.array([1.0 + 2 / 127.5]))
    with pytest.raises(ValueError, match="no examples"):
        evaluator(state.ema_params, [dict(b, mask=np.zeros(2, bool)) for b in batches_of(data, 2)])


def test_first_examples_masks_the_rest_and_stops():
    batches = batches_of(np.zeros((5, 2), np.float32), 2)
    kept = list(first_examples(batches, 3))
    assert [list(b["mask"]) for b in kept] == [[True, True], [True, False]]
    assert len(list(first_examples(batches, 0))) == 3


def test_validate_checks_the_ode_keys():
    config = toy_config().copy_and_resolve_references()
    validate(config)
    assert config.eval.ode_nll is False and config.eval.ode_probes == 1
    for key, value, message in [
        ("ode_probes", 0, "at least 1 probe"), ("ode_rtol", -1e-5, "tolerance"), ("ode_atol", 0.0, "tolerance"),
        ("ode_num_examples", -1, "non-negative"), ("ode_seed", -2, "non-negative"),
    ]:
        bad = config.copy_and_resolve_references()
        bad.eval[key] = value
        with pytest.raises(ConfigError, match=f"config.eval.{key}: .*{message}"):
            validate(bad)
    bad = config.copy_and_resolve_references()
    bad.eval.update(num_examples=10, ode_num_examples=20)
    with pytest.raises(ConfigError, match="config.eval.ode_num_examples"):
        validate(bad)


def test_evaluate_writes_ode_nll_json_that_compare_reads(image_setup, tmp_path):
    config, recipe, state, data, _ = image_setup
    workdir = workdir_with_checkpoint(str(tmp_path / "run"), config, state)
    recipe = dataclasses.replace(recipe, eval_batches=lambda: batches_of(data, 2, garbage=0.3))
    config = config.copy_and_resolve_references()
    config.eval.ode_num_examples = 2

    result = evaluate(config, workdir, recipe, compute_samples=False)
    with open(os.path.join(workdir, "eval", "ode_nll.json")) as f:
        record = json.load(f)
    assert record == result["ode_nll"]
    assert record["num_examples"] == 2 and record["checkpoint_step"] == 0 and record["params"] == "ema"
    assert np.isfinite(record["bpd"]) and record["bpd"] > 0 and record["nfe_mean"] > 0
    assert record["bpd_stderr"] > 0 and record["seed"] == 3 and record["atol"] == TOLERANCE
    assert record["bound"].startswith("probability-flow ODE, uniform dequantisation")
    assert result["nll"]["num_examples"] == 3

    report = write_report([workdir], str(tmp_path / "report.md"))
    assert "NLL, PF-ODE (bits/dim)" in report and f"{record['bpd']:.4g}" in report

    # Without the file, no column.
    os.remove(os.path.join(workdir, "eval", "ode_nll.json"))
    assert "PF-ODE" not in write_report([workdir], str(tmp_path / "report2.md"))
