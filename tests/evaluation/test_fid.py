"""FID Inception-v3, its weights converter, FID and IS.

The Flax network is checked against an independent implementation written here with
TensorFlow ops (float64), fed the same random weights in pytorch-fid's state-dict layout:
pool features, logits and the Fréchet distance agree to 1e-4 relative.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from diffjax.evaluation import inception as inc
from diffjax.evaluation.fid import FidScorer, inception_score, make_inception_fn, reference_stats
from diffjax.evaluation.frechet import feature_stats, frechet_distance, load_stats

# A few entries of pytorch-fid's pt_inception-2015-12-05 state dict (torchvision names).
KNOWN_ENTRIES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.weight": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Entry name -> PyTorch shape, from the Flax network's abstract params."""
    abstract = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), inc.abstract_inception_params())
    return {name: value.shape for name, value in inc.state_dict_from_params(abstract).items()}


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled conv weights and non-trivial batch-norm statistics, so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("conv.weight") or name == "fc.weight":
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        else:  # biases and running means
            value = rng.normal(0.0, 0.1, shape)
        state[name] = value.astype(np.float32)
    return state


def tf_reference(state: dict[str, np.ndarray], images_uint8: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """FID Inception-v3 in float64 TensorFlow, from torchvision's description of the network."""
    import tensorflow as tf

    def conv(name, x, kernel=None, stride=1, pad=(0, 0)):
        weight = state[f"{name}.conv.weight"].astype(np.float64)
        x = tf.pad(x, [[0, 0], [pad[0], pad[0]], [pad[1], pad[1]], [0, 0]])
        y = tf.nn.conv2d(x, tf.constant(weight.transpose(2, 3, 1, 0)), stride, "VALID")
        gamma, beta, mean, var = (state[f"{name}.bn.{k}"].astype(np.float64)
                                  for k in ("weight", "bias", "running_mean", "running_var"))
        return tf.nn.relu((y - mean) / np.sqrt(var + 1e-3) * gamma + beta)

    def avg_pool(x):  # TF's SAME average pool divides by the unpadded count
        return tf.nn.avg_pool2d(x, 3, 1, "SAME")

    def block_a(p, x):
        b1 = conv(f"{p}.branch1x1", x)
        b5 = conv(f"{p}.branch5x5_2", conv(f"{p}.branch5x5_1", x), pad=(2, 2))
        b3 = conv(f"{p}.branch3x3dbl_3", conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", x), pad=(1, 1)),
                  pad=(1, 1))
        return tf.concat([b1, b5, b3, conv(f"{p}.branch_pool", avg_pool(x))], -1)

    def block_b(p, x):
        b3 = conv(f"{p}.branch3x3", x, stride=2)
        d = conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", x), pad=(1, 1))
        d = conv(f"{p}.branch3x3dbl_3", d, stride=2)
        return tf.concat([b3, d, tf.nn.max_pool2d(x, 3, 2, "VALID")], -1)

    def block_c(p, x):
        b7 = conv(f"{p}.branch7x7_1", x)
        b7 = conv(f"{p}.branch7x7_3", conv(f"{p}.branch7x7_2", b7, pad=(0, 3)), pad=(3, 0))
        d = conv(f"{p}.branch7x7dbl_1", x)
        for i, pad in zip(range(2, 6), [(3, 0), (0, 3), (3, 0), (0, 3)]):
            d = conv(f"{p}.branch7x7dbl_{i}", d, pad=pad)
        return tf.concat([conv(f"{p}.branch1x1", x), b7, d, conv(f"{p}.branch_pool", avg_pool(x))], -1)

    def block_d(p, x):
        b3 = conv(f"{p}.branch3x3_2", conv(f"{p}.branch3x3_1", x), stride=2)
        b7 = conv(f"{p}.branch7x7x3_1", x)
        b7 = conv(f"{p}.branch7x7x3_3", conv(f"{p}.branch7x7x3_2", b7, pad=(0, 3)), pad=(3, 0))
        b7 = conv(f"{p}.branch7x7x3_4", b7, stride=2)
        return tf.concat([b3, b7, tf.nn.max_pool2d(x, 3, 2, "VALID")], -1)

    def block_e(p, x, pool):
        b3 = conv(f"{p}.branch3x3_1", x)
        b3 = tf.concat([conv(f"{p}.branch3x3_2a", b3, pad=(0, 1)), conv(f"{p}.branch3x3_2b", b3, pad=(1, 0))], -1)
        d = conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", x), pad=(1, 1))
        d = tf.concat([conv(f"{p}.branch3x3dbl_3a", d, pad=(0, 1)), conv(f"{p}.branch3x3dbl_3b", d, pad=(1, 0))], -1)
        pooled = avg_pool(x) if pool == "avg" else tf.nn.max_pool2d(x, 3, 1, "SAME")
        return tf.concat([conv(f"{p}.branch1x1", x), b3, d, conv(f"{p}.branch_pool", pooled)], -1)

    x = tf.constant(images_uint8, tf.float64) / 127.5 - 1.0
    if x.shape[-1] == 1:
        x = tf.tile(x, [1, 1, 1, 3])
    # TF's resize computes in float32 whatever the input (error ~1e-7, far below the tolerance).
    x = tf.cast(tf.image.resize(x, (size, size), method="bilinear", antialias=False), tf.float64)
    x = conv("Conv2d_1a_3x3", x, stride=2)
    x = conv("Conv2d_2a_3x3", x)
    x = conv("Conv2d_2b_3x3", x, pad=(1, 1))
    x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    x = conv("Conv2d_4a_3x3", conv("Conv2d_3b_1x1", x))
    x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = block_a(name, x)
    x = block_b("Mixed_6a", x)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = block_c(name, x)
    x = block_d("Mixed_7a", x)
    x = block_e("Mixed_7c", block_e("Mixed_7b", x, "avg"), "max")
    pool = tf.reduce_mean(x, axis=[1, 2])
    logits = pool @ tf.constant(state["fc.weight"].astype(np.float64).T) + state["fc.bias"].astype(np.float64)
    return pool.numpy(), logits.numpy()


def test_state_dict_layout_is_pytorch_fid(expected_shapes):
    for name, shape in KNOWN_ENTRIES.items():
        assert expected_shapes[name] == shape, name
    # 94 conv + batch-norm units (5 entries each) and the classifier.
    assert len(expected_shapes) == 94 * 5 + 2
    # Learnable parameters (running statistics excluded): torchvision's inception_v3 has
    # 27,161,264, of which the aux classifier is 3,326,696 and the 1000-way fc 2,049,000;
    # the FID network's fc has 1008 outputs: 2048 * 1008 + 1008.
    learnable = sum(int(np.prod(s)) for n, s in expected_shapes.items() if "running" not in n)
    assert learnable == 27_161_264 - 3_326_696 - 2_049_000 + 2048 * 1008 + 1008


def test_missing_weights_file_says_where_to_get_it(tmp_path):
    path = str(tmp_path / "nowhere" / inc.FID_WEIGHTS_FILENAME)
    with pytest.raises(inc.FidWeightsNotFoundError) as error:
        inc.load_fid_inception(path)
    message = str(error.value)
    assert path in message and inc.FID_WEIGHTS_URL in message and "eval.fid_weights" in message


def test_converter_refuses_wrong_weights(tmp_path, expected_shapes):
    state = random_state_dict(expected_shapes)
    state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)  # ignored
    state["Mixed_6c.branch1x1.bn.num_batches_tracked"] = np.zeros((), np.int64)  # ignored
    inc.params_from_state_dict(state)

    missing = dict(state)
    del missing["Mixed_6c.branch7x7_2.conv.weight"]
    with pytest.raises(inc.FidWeightsError, match="Mixed_6c.branch7x7_2.conv.weight"):
        inc.params_from_state_dict(missing)
    wrong_shape = dict(state, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(inc.FidWeightsError, match=r"fc.weight has shape \(1000, 2048\).*\(1008, 2048\)"):
        inc.params_from_state_dict(wrong_shape)
    extra = dict(state, **{"Mixed_8a.conv.weight": np.zeros((1,), np.float32)})
    with pytest.raises(inc.FidWeightsError, match="unexpected.*Mixed_8a"):
        inc.params_from_state_dict(extra)


def test_convert_command_round_trip(tmp_path, expected_shapes):
    state = random_state_dict(expected_shapes, seed=1)
    source = str(tmp_path / "in.npz")
    np.savez(source, **state)
    destination = str(tmp_path / "out.npz")
    inc._convert_main(["convert", source, destination])
    converted = inc.read_state_dict(destination)
    assert converted.keys() == state.keys()
    for name in state:
        np.testing.assert_array_equal(converted[name], state[name])


def test_reads_pytorch_files(tmp_path, expected_shapes):
    torch = pytest.importorskip("torch")
    state = random_state_dict(expected_shapes, seed=2)
    path = str(tmp_path / inc.FID_WEIGHTS_FILENAME)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    params = inc.load_fid_inception(path)
    np.testing.assert_array_equal(
        params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
        state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0),
    )


def test_resize_matches_tensorflow():
    import tensorflow as tf

    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    ours = np.asarray(jax.jit(lambda x: inc.resize_for_inception(x, 299))(images))
    theirs = tf.image.resize(np.repeat(images, 3, -1), (299, 299), method="bilinear", antialias=False).numpy()
    assert ours.shape == (2, 299, 299, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # float32 interpolation weights


@pytest.mark.slow
def test_features_and_distance_match_independent_implementation(expected_shapes):
    state = random_state_dict(expected_shapes, seed=3)
    params = inc.params_from_state_dict(state)
    rng = np.random.default_rng(0)
    # Two sets of 40 RGB 32x32 images: smooth blobs plus noise, the second set brighter.
    base = rng.uniform(0, 255, (80, 4, 4, 3))
    images = np.repeat(np.repeat(base, 8, 1), 8, 2) + rng.normal(0, 20, (80, 32, 32, 3))
    images[40:] += 30
    images = np.clip(images, 0, 255).astype(np.uint8)
    size = 80  # the FID network at a reduced input side (same layers, 1/14 of the FLOPs)

    ours = make_inception_fn(params, image_size=size, batch_size=40)(images)
    pool, logits = tf_reference(state, images, size)
    assert ours.pool.shape == (80, 2048) and ours.logits.shape == (80, 1008)
    assert np.all(np.isfinite(ours.pool)) and pool.std() > 1e-2  # the network does not collapse
    np.testing.assert_allclose(ours.pool, pool, rtol=0, atol=1e-4 * np.abs(pool).max())
    np.testing.assert_allclose(ours.logits, logits, rtol=0, atol=1e-4 * np.abs(logits).max())

    dims = slice(0, 32)  # N = 40 > D, so the covariances are full rank
    ours_fd = frechet_distance(feature_stats(ours.pool[:40, dims]), feature_stats(ours.pool[40:, dims]))
    their_fd = frechet_distance(feature_stats(pool[:40, dims]), feature_stats(pool[40:, dims]))
    assert their_fd > 1e-3
    assert abs(ours_fd - their_fd) <= 1e-4 * their_fd


def test_inception_score_known_values():
    assert inception_score(np.zeros((50, 1008)))[0] == pytest.approx(1.0, abs=1e-12)
    # Confident and evenly spread over 10 classes in every split: IS = 10.
    logits = np.zeros((100, 1008))
    logits[np.arange(100), np.arange(100) % 10] = 60.0
    mean, std = inception_score(logits)
    assert mean == pytest.approx(10.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # One class only: IS = 1 however confident.
    logits = np.zeros((100, 1008))
    logits[:, 3] = 60.0
    assert inception_score(logits)[0] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.slow
def test_reference_stats_are_cached_and_scorer_runs(tmp_path, expected_shapes):
    from diffjax.data import digits

    data_dir = str(tmp_path / "tfds")
    digits.digits_builder(data_dir)
    weights = str(tmp_path / "fid.npz")
    np.savez(weights, **random_state_dict(expected_shapes, seed=4))
    cache_dir = str(tmp_path / "cache")
    calls = []

    def references(inception):
        calls.append(1)
        stats, path = reference_stats(
            inception, data_name="digits", split="train", data_image_size=8, weights_path=weights, image_size=75,
            num_examples=40, cache_dir=cache_dir, data_dir=data_dir,
        )
        return stats

    scorer = FidScorer.create(weights, references, image_size=75, batch_size=20)
    files = os.listdir(os.path.join(cache_dir, "fid_stats"))
    assert len(files) == 1 and files[0].startswith("digits_train_8px_40_inception75_")
    cached = load_stats(os.path.join(cache_dir, "fid_stats", files[0]))
    assert cached.count == 40 and cached.mean.shape == (2048,)

    # The cached file is read back, not recomputed: a second scorer never runs the network on data.
    def no_data(images):
        raise AssertionError("reference images were recomputed")

    stats, _ = reference_stats(
        no_data, data_name="digits", split="train", data_image_size=8, weights_path=weights, image_size=75,
        num_examples=40, cache_dir=cache_dir, data_dir=data_dir,
    )
    np.testing.assert_array_equal(stats.cov, cached.cov)

    samples = np.random.default_rng(0).uniform(-1, 1, (12, 8, 8, 1))
    scores = scorer(samples)
    assert set(scores) == {"fid", "inception_score", "inception_score_std"}
    assert np.isfinite(scores["fid"]) and scores["fid"] > 0 and scores["inception_score"] >= 1.0


def test_evaluate_scores_fid_with_given_weights_and_fails_fast_without(tmp_path, expected_shapes):
    from diffjax.run.evaluate import evaluate
    from diffjax.run.experiments import build_recipe
    from diffjax.run.scorers import sample_quality_kind, sample_scorer
    from tests.support.train_utils import load_experiment

    experiment = load_experiment("ddpm_cifar10")
    config = experiment.get_config()
    assert sample_quality_kind(config) is None  # no weights: no sample metric for cifar10
    weights = str(tmp_path / "fid.npz")
    np.savez(weights, **random_state_dict(expected_shapes, seed=5))
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 2048))
    np.savez(tmp_path / "ref.npz", mu=features.mean(0), sigma=np.cov(features, rowvar=False))  # pytorch-fid's format
    with config.unlocked():
        config.eval.fid_weights = weights
        config.eval.fid_reference = str(tmp_path / "ref.npz")
        config.eval.fid_image_size = 75
    assert sample_quality_kind(config) == "fid"
    scorer = sample_scorer(config, 12, str(tmp_path / "cache"))
    info = scorer.info
    assert scorer.headline == "fid" and info["fid_reference"] == config.eval.fid_reference
    assert info["fid_weights_sha256"] == inc.weights_digest(weights) and info["fid_reference_count"] == 0
    # The given statistics are the reference as they are (scoring itself, the same FidScorer call, is checked by
    # test_reference_stats_are_cached_and_scorer_runs; not compiling Inception again here keeps CI in budget).
    np.testing.assert_allclose(scorer.score.reference.mean, features.mean(0))

    # A missing weights file fails before the checkpoint is even looked for.
    with config.unlocked():
        config.eval.fid_weights = str(tmp_path / "missing.pth")
    with pytest.raises(inc.FidWeightsNotFoundError, match="missing.pth"):
        evaluate(config, str(tmp_path / "no_run"), build_recipe(experiment, config))
