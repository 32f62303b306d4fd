"""Evaluation: Fréchet distance, toy metrics, NLL over a split, the digits classifier,
and ``evaluate`` on a real (tiny, untrained) toy checkpoint."""

import dataclasses
import json
import os

import chex
import jax
import numpy as np
import pytest

from diffjax.diffusion.likelihood import bpd
from diffjax.evaluation import digits_features as df
from diffjax.evaluation.frechet import FeatureStats, feature_stats, frechet_distance, load_stats, save_stats
from diffjax.evaluation.nll import BoundEvaluator, nll_over_batches, write_nll_json
from diffjax.evaluation.toy_metrics import mmd_rbf, sliced_wasserstein
from diffjax.models.denoiser import make_denoise_fn
from diffjax.run.compare import write_report
from diffjax.run.evaluate import evaluate, sampling_step_list
from diffjax.run.sample import generate
from diffjax.runtime.checkpoint import Checkpointer
from diffjax.train.loop import make_init_fn
from diffjax.train.optim import make_optimizer
from tests.support.train_utils import toy_config, toy_recipe, workdir_with_checkpoint

# ------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    fd = frechet_distance(FeatureStats(mu1, np.diag(var1), 100), FeatureStats(mu2, np.diag(var2), 100))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    np.testing.assert_allclose(fd, expected, rtol=1e-10)


def test_frechet_distance_of_a_scaled_full_covariance_is_the_closed_form():
    # S2 = c^2 S1 commutes with S1: tr((S1 S2)^1/2) = c tr(S1), so d^2 = (1 - c)^2 tr(S1).
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + 0.1 * np.eye(5)
    mu = rng.normal(size=5)
    fd = frechet_distance(FeatureStats(mu, cov, 10), FeatureStats(mu, 9.0 * cov, 10))
    np.testing.assert_allclose(fd, 4.0 * np.trace(cov), rtol=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_singular():
    features = np.random.default_rng(2).normal(size=(500, 16))
    stats = feature_stats(features)
    assert abs(frechet_distance(stats, stats)) < 1e-8
    few = feature_stats(features[:8])  # 8 vectors in 16 dimensions: a singular covariance
    fd = frechet_distance(few, few)
    assert np.isfinite(fd) and abs(fd) < 1e-3 * np.trace(few.cov)


def test_frechet_distance_rejects_an_indefinite_covariance_and_other_dimensions():
    good = FeatureStats(np.zeros(2), np.eye(2), 10)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(good, FeatureStats(np.zeros(2), np.diag([-1.0, 1.0]), 10))
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(good, FeatureStats(np.zeros(3), np.eye(3), 10))


def test_feature_stats_round_trip(tmp_path):
    stats = feature_stats(np.random.default_rng(3).normal(size=(20, 4)).astype(np.float32))
    assert stats.mean.dtype == np.float64 and stats.cov.shape == (4, 4) and stats.count == 20
    save_stats(stats, str(tmp_path / "s.npz"))
    loaded = load_stats(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert loaded.count == 20


# ----------------------------------------------------------------------- toy metrics


def test_toy_metrics_are_near_zero_for_one_distribution_and_large_for_a_shift():
    from diffjax.data.toy2d import sample

    x, y = sample("eight_gaussians", 800, seed=1), sample("eight_gaussians", 800, seed=2)
    shift = np.array([1.0, 0.0])
    mmd_same, mmd_shifted = mmd_rbf(x, y), mmd_rbf(x + shift, y)
    assert abs(mmd_same) < 0.05 * mmd_shifted
    # Shifting by v moves every projection by u.v, so in 2-D SW_1 = |v| E|cos| = 2|v|/pi
    # and SW_2 = |v| sqrt(E[cos^2]) = |v| / sqrt(2) (up to the 256 directions drawn).
    sw_shifted = sliced_wasserstein(x + shift, x)
    np.testing.assert_allclose(sw_shifted, 2 / np.pi, rtol=0.03)
    np.testing.assert_allclose(sliced_wasserstein(x + shift, x, p=2), 1 / np.sqrt(2), rtol=0.03)
    # Two draws differ by the random mass of each mode (about 1% of the points each).
    assert sliced_wasserstein(x, y) < 0.25 * sw_shifted
    # Unequal sizes go through quantiles.
    assert sliced_wasserstein(x[:500], y) < 0.25 * sw_shifted


# ------------------------------------------------------------------------------- NLL


@pytest.fixture(scope="module")
def toy_setup():
    config = toy_config()
    config.diffusion.timesteps = 20
    recipe = toy_recipe(config)
    state = jax.jit(make_init_fn(recipe, make_optimizer(config.train)))(jax.random.PRNGKey(0))
    points = np.random.default_rng(0).normal(size=(10, 2)) * 0.4
    data = (np.round((np.clip(points, -1, 1) + 1) * 127.5) / 127.5 - 1).astype(np.float32)
    return config, recipe, state, data, BoundEvaluator(recipe)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def batches_of(data, batch_size, garbage=0.0):
    """Batches of ``batch_size`` rows, the last padded with masked ``garbage`` rows."""
    batches = []
    for start in range(0, len(data), batch_size):
        rows = data[start : start + batch_size]
        pad = batch_size - len(rows)
        batches.append({
            "image": np.concatenate([rows, np.full((pad, *data.shape[1:]), garbage, np.float32)]),
            "label": np.zeros(batch_size, np.int32),
            "mask": np.arange(batch_size) < len(rows),
        })
    return batches


@pytest.mark.slow
def test_nll_does_not_depend_on_batching_or_padding_and_is_the_mean_bound(toy_setup):
    _, recipe, state, data, evaluator = toy_setup
    whole = evaluator(state.ema_params, batches_of(data, 10), seed=3)
    split = evaluator(state.ema_params, batches_of(data, 4, garbage=0.7), seed=3)
    assert whole.count == split.count == 10
    np.testing.assert_allclose(split.bpd, whole.bpd, rtol=1e-6)
    np.testing.assert_allclose(split.vb_bpd, whole.vb_bpd, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(whole.bpd, whole.prior_bpd + whole.vb_bpd.sum(), rtol=1e-6)
    # The same number from the bound itself with example i's key fold_in(PRNGKey(3), i).
    schedule = recipe.family.schedule
    denoise = make_denoise_fn(recipe.model, num_timesteps=20, rescale_timesteps=recipe.family.rescale_timesteps)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(np.arange(10))
    bound = jax.jit(lambda p, x, k: bpd(denoise, p, schedule, recipe.family.spec, x, k))
    direct = bound(state.ema_params, data, keys)
    np.testing.assert_allclose(whole.bpd, float(np.mean(direct["total"])), rtol=1e-5)
    assert whole.vb_bpd.shape == (20,)


def test_nll_json_labels_the_bound(toy_setup, tmp_path):
    _, recipe, state, data, evaluator = toy_setup
    full = evaluator(state.ema_params, batches_of(data, 10))
    record = write_nll_json(full, str(tmp_path / "nll.json"), checkpoint_step=7)
    assert read_json(tmp_path / "nll.json") == record
    assert record["bound"] == "T-step" and len(record["vb_bpd"]) == 20 and record["checkpoint_step"] == 7
    short = nll_over_batches(recipe, state.ema_params, batches_of(data, 10), chain="5").to_json()
    assert short["bound"] == "K-step chain" and short["chain_steps"] == 5 and len(short["vb_bpd"]) == 5
    assert short["timestep_map"][0] == 0 and short["timestep_map"][-1] == 19


def test_nll_of_nothing_is_an_error(toy_setup):
    _, _, state, data, evaluator = toy_setup
    empty = batches_of(data[:0], 4)
    masked = [dict(b, mask=np.zeros(4, bool)) for b in batches_of(data[:4], 4)]
    for batches in (empty, masked):
        with pytest.raises(ValueError, match="no examples"):
            evaluator(state.ema_params, batches)


# ----------------------------------------------------------------- digits classifier


@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    return df.load_digits_classifier(str(tmp_path_factory.mktemp("feature_cache")))


@pytest.mark.slow
def test_digits_classifier_is_accurate_and_cached(digits_net):
    images, labels = df.digits_arrays("test")
    assert images.shape == (297, 8, 8, 1) and images.min() >= -1 and images.max() <= 1
    assert digits_net.accuracy(images, labels) > 0.95
    assert os.path.exists(digits_net.path)
    again = df.load_digits_classifier(os.path.dirname(digits_net.path))
    assert again.path == digits_net.path
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(digits_net.params)):
        np.testing.assert_array_equal(a, b)
    other = dataclasses.replace(digits_net.settings, seed=1)
    assert other.cache_key() != digits_net.settings.cache_key()


@pytest.mark.slow
def test_fd_digits_is_small_between_splits_and_large_for_noise(digits_net):
    train = {"train": digits_net.stats(df.digits_arrays("train")[0])}
    test_images, test_labels = df.digits_arrays("test")
    data = df.digits_sample_metrics(digits_net, test_images, train)
    noise = np.random.default_rng(0).uniform(-1, 1, size=(297, 8, 8, 1))
    uniform = df.digits_sample_metrics(digits_net, noise, train)
    half = df.digits_sample_metrics(digits_net, test_images[test_labels < 5], train)
    assert uniform["fd_digits_train"] > 10 * data["fd_digits_train"]
    assert half["fd_digits_train"] > 3 * data["fd_digits_train"]
    assert data["classes_present"] == 10 and data["mean_confidence"] > 0.9
    assert half["classes_present"] <= 6 and half["class_tv_from_uniform"] > 0.4
    assert sum(data["class_histogram"]) == 297 and data["classifier_score"] > 8


# ---------------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_restores_and_writes_eval_files_that_compare_reads(toy_setup, tmp_path):
    config, recipe, state, data, _ = toy_setup
    workdir = workdir_with_checkpoint(str(tmp_path / "run"), config, state)
    recipe = dataclasses.replace(recipe, eval_batches=lambda: batches_of(data, 4))

    config = config.copy_and_resolve_references()
    config.eval.update(sample_steps="ddim2 ddim5 dpmpp_2m:3", num_samples=64)
    result = evaluate(config, workdir, recipe)

    nll = read_json(os.path.join(workdir, "eval", "nll.json"))
    assert nll == result["nll"] and nll["bound"] == "T-step" and nll["num_examples"] == 10
    assert nll["params"] == "ema" and nll["checkpoint_step"] == 0 and len(nll["vb_bpd"]) == 20
    quality = read_json(os.path.join(workdir, "eval", "sample_quality.json"))
    assert quality["metric"] == "mmd" and [r["num_steps"] for r in quality["results"]] == [2, 5, 3]
    assert [r["nfe"] for r in quality["results"]] == [2, 5, 4]  # the solver's 3 steps + the final denoising
    assert [r["solver"] for r in quality["results"]] == ["chain_ddim", "chain_ddim", "dpmpp_2m"]
    assert quality["results"][2]["settings"]["grid"] == "uniform_log_snr"
    assert all(np.isfinite(r["mmd"]) and r["sliced_wasserstein"] > 0 for r in quality["results"])
    assert os.path.exists(os.path.join(workdir, "eval", "samples_ddim5.png"))

    report = write_report([workdir], str(tmp_path / "report.md"))
    assert "MMD² @2 steps" in report and "MMD² @5 steps" in report
    assert "MMD² @dpmpp_2m (uniform_log_snr) 4 NFE" in report and os.path.exists(tmp_path / "report_quality_vs_steps.png")
    assert f"{nll['bpd']:.4g}" in report
    assert os.path.exists(tmp_path / "report_nll_per_t.png")


@pytest.mark.slow
def test_generate_writes_reproducible_samples_of_a_checkpoint(toy_setup, tmp_path):
    config, recipe, state, _, _ = toy_setup
    workdir = str(tmp_path / "run")
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    checkpointer.save(3, state.replace(step=np.int32(3)), force=True)
    checkpointer.close()
    config = config.copy_and_resolve_references()
    config.sample.update(num=10, batch_size=4, steps="ddim5", method="ddim", eta=0.0, seed=7)

    meta = generate(config, workdir, recipe)
    with np.load(meta["npz"]) as f:
        samples, images = f["samples"], f["images"]
    chex.assert_shape(samples, (10, 2))
    assert images.dtype == np.uint8 and np.all(np.isfinite(samples))
    assert meta["checkpoint_step"] == 3 and meta["num_steps"] == 5 and meta["params"] == "ema"
    assert os.path.basename(meta["npz"]) == "step3_ema_ddim_eta0_ddim5_n10_seed7.npz"
    assert read_json(meta["npz"][: -len(".npz")] + ".json")["seed"] == 7
    assert os.path.exists(meta["npz"][: -len(".npz")] + "_grid0.png")

    # Chunk j has its own key: fewer samples are a prefix; another seed gives others.
    config.sample.num = 6
    with np.load(generate(config, workdir, recipe)["npz"]) as f:
        np.testing.assert_array_equal(f["samples"], samples[:6])
    config.sample.seed = 8
    with np.load(generate(config, workdir, recipe)["npz"]) as f:
        assert np.abs(f["samples"] - samples[:6]).min() > 0

    # A solver: its name, steps and grid in the file name, its NFE in the record.
    config.sample.update(solver="heun", steps="2", grid="karras")
    meta = generate(config, workdir, recipe)
    assert os.path.basename(meta["npz"]) == "step3_ema_heun_2_karras_n6_seed8.npz"
    assert meta["nfe"] == 5 and meta["solver"] == "heun" and meta["num_steps"] == 2
    with np.load(meta["npz"]) as f:
        assert np.all(np.isfinite(f["samples"])) and f["samples"].shape == (6, 2)


def test_sampling_step_list():
    assert sampling_step_list("ddim10 ddim50;250") == ["ddim10", "ddim50", "250"]
    assert sampling_step_list(("10,10", "ddim5")) == ["10,10", "ddim5"]
    assert sampling_step_list("") == [""]


def test_digits_scorer_of_evaluate(digits_net):
    from diffjax.run.scorers import sample_scorer
    from tests.support.train_utils import load_experiment

    config = load_experiment("digits_ddpm").get_config()
    scorer = sample_scorer(config, 297, os.path.dirname(digits_net.path))
    metrics = scorer.score(df.digits_arrays("test")[0])
    assert scorer.kind == "digits" and scorer.headline == "fd_digits_train"
    assert scorer.info["classifier"]["test_accuracy"] > 0.95
    np.testing.assert_allclose(metrics["fd_digits_train"], scorer.info["fd_digits_test_split_vs_train"], rtol=1e-6)
    assert abs(metrics["fd_digits_test"]) < 1e-6
