"""Tests of diffjax.models: exact parameter counts, shapes, and forward-pass properties.

Big configurations are only traced (``jax.eval_shape``); forward passes use the
``tiny`` UNet and a small MLP so the file stays well under a minute on 2 CPU
cores. Compiles go through ``_compile``, which switches XLA's backend
optimisations off: on this CPU that makes compiling the tiny UNet ~3x faster
and does not change what is being tested (same program, same float32 math).
Test data and parameter perturbations come from NumPy, so no PRNG programs need
compiling except the init and dropout under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import models
from diffjax.models.blocks import cudnn_attention_problem

EXPECTED_PARAM_COUNTS = {
    "ddpm_cifar10": 35_746_307,  # DDPM paper: 35.7M
    "ddpm_256": 113_673_219,  # DDPM paper: 114M; reference analytic count 113.673M
    "iddpm_cifar10": 52_546_438,
    "iddpm_imagenet64": 121_063_942,
    "digits": 701_345,
    "tiny": 45_259,
}
LEARNED_SIGMA = {"iddpm_cifar10", "iddpm_imagenet64"}
T = 1000
TINY_SHAPE = (8, 8, 3)
BATCH = 3


def _compile(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` with XLA backend optimisations off (fast compiles)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def _random_like(tree, seed, scale=0.1, base=None):
    """NumPy-random float32 arrays shaped like ``tree`` (added to ``base`` if given)."""
    rng = np.random.default_rng(seed)
    noise = jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), tree)
    return noise if base is None else jax.tree.map(jnp.add, base, noise)


def _inputs(seed, shape=TINY_SHAPE, batch=BATCH):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
    t = jnp.asarray(rng.integers(0, T, batch), jnp.int32)
    return x, t


@pytest.fixture(scope="module")
def tiny():
    """(net, params at init, params perturbed away from the zero-init layers)."""
    net = models.make_unet("tiny")
    key = jax.random.key(0)
    params = _compile(lambda k: models.init_params(net, k, TINY_SHAPE), key)(key)
    return net, params, _random_like(params, seed=1, base=params)


@pytest.fixture(scope="module")
def tiny_eval_fn(tiny):
    """Compiled eval-mode ``denoise(params, x_t, t, None)`` of the tiny UNet."""
    net, params, _ = tiny
    x, t = _inputs(0)
    compiled = _compile(models.make_denoise_fn(net, num_timesteps=T), params, x, t, None)
    return lambda params, x, t: compiled(params, x, t, None)


# ----------------------------------------------------------------- counts and shapes


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAM_COUNTS))
def test_param_count_and_output_shape(name):
    h, w, c = models.get_image_shape(name)
    net = models.make_unet(name, out_channels=2 * c if name in LEARNED_SIGMA else None)
    x = jnp.zeros((2, h, w, c))
    t = jnp.zeros((2,), jnp.int32)
    out, variables = jax.eval_shape(lambda k: net.init_with_output(k, x, t), jax.random.key(0))
    assert set(variables) == {"params"}
    assert models.count_params(variables["params"]) == EXPECTED_PARAM_COUNTS[name]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    assert out.shape == (2, h, w, 2 * c if name in LEARNED_SIGMA else c)
    assert out.dtype == jnp.float32


def test_every_preset_is_counted():
    unets = {name for name, preset in models.PRESETS.items() if preset["arch"] == "unet"}
    assert unets == set(EXPECTED_PARAM_COUNTS) == set(models.IMAGE_SHAPES)
    assert models.count_params(models.abstract_params(models.make_unet("tiny"), TINY_SHAPE)) == 45_259
    mlp = models.make_network(**models.get_preset("toy2d"))
    assert models.count_params(models.abstract_params(mlp, (2,))) == 175_106


def test_presets_hold_every_hyperparameter_with_the_field_types():
    """A preset fills a config section whose keys take command-line overrides, so it has
    every hyperparameter, each with the type of the network's default (a float stays a float)."""
    assert models.hyperparameters("unet") == (
        "channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_heads", "num_head_channels",
        "dropout", "use_scale_shift_norm", "resblock_updown", "conv_resample", "downsample_padding", "norm_groups",
        "norm_eps", "sinusoid_cos_first", "sinusoid_freq_shift", "attention_implementation",
    )
    assert models.hyperparameters("mlp") == ("hidden", "num_blocks", "sinusoid_dim", "dropout")
    for name, preset in models.PRESETS.items():
        arch = preset["arch"]
        assert list(preset) == ["arch", *models.hyperparameters(arch)], name
        defaults = {f: models.NETWORKS[arch].__dataclass_fields__[f].default for f in models.hyperparameters(arch)}
        for key, value in preset.items():
            if key != "arch" and defaults[key] is not None:
                assert type(value) is type(defaults[key]), (name, key, value)
    with pytest.raises(TypeError):
        models.PRESETS["digits"]["channels"] = 1  # read-only
    fresh = models.get_preset("digits")
    fresh["channels"] = 1
    assert models.PRESETS["digits"]["channels"] == 32


def test_bf16_model_keeps_float32_params():
    abstract = models.abstract_params(models.make_unet("tiny", dtype=jnp.bfloat16), TINY_SHAPE)
    assert models.count_params(abstract) == EXPECTED_PARAM_COUNTS["tiny"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(resblock_updown=True),
        dict(conv_resample=False),
        dict(num_head_channels=4),
        dict(downsample_padding="symmetric", use_scale_shift_norm=True),
        dict(out_channels=6, num_classes=10),
    ],
)
def test_variants_trace_with_right_shape(overrides):
    net = models.make_unet("tiny", **overrides)
    labels = jnp.zeros((2,), jnp.int32) if "num_classes" in overrides else None
    out, _ = jax.eval_shape(
        lambda k: net.init_with_output(k, jnp.zeros((2, *TINY_SHAPE)), jnp.zeros((2,)), labels), jax.random.key(0)
    )
    assert out.shape == (2, 8, 8, overrides.get("out_channels", 3))


def test_bad_configurations_raise():
    with pytest.raises(KeyError):
        models.make_unet("no_such_model")
    with pytest.raises(TypeError, match="model_channels"):
        models.make_unet("tiny", model_channels=3)  # the field is ``channels``
    with pytest.raises(TypeError, match="mlp, not a unet"):
        models.make_unet("toy2d")
    with pytest.raises(KeyError, match="cnn"):
        models.make_network("cnn")
    with pytest.raises(TypeError, match="out_dim"):
        models.make_network("mlp", out_dim=3)  # the output width is always ``out_channels``
    with pytest.raises(ValueError, match="attention_resolutions"):
        models.abstract_params(models.make_unet("tiny", attention_resolutions=(2,)), TINY_SHAPE)
    with pytest.raises(ValueError, match="divisible"):
        models.abstract_params(models.make_unet("tiny", attention_resolutions=()), (7, 7, 3))
    x, t = jnp.zeros((1, *TINY_SHAPE)), jnp.zeros((1,))
    conditional = models.make_unet("tiny", num_classes=2)
    with pytest.raises(ValueError, match="needs labels"):
        jax.eval_shape(lambda k: conditional.init(k, x, t, None), jax.random.key(0))
    unconditional = models.make_unet("tiny")
    with pytest.raises(ValueError, match="labels given"):
        jax.eval_shape(lambda k: unconditional.init(k, x, t, jnp.zeros((1,), jnp.int32)), jax.random.key(0))


# ----------------------------------------------------------------- forward properties


@pytest.mark.slow
def test_output_is_zero_at_init(tiny, tiny_eval_fn):
    _, params, _ = tiny
    assert not np.any(np.asarray(params["conv_out"]["kernel"]))
    x, t = _inputs(2)
    np.testing.assert_array_equal(tiny_eval_fn(params, x, t), 0.0)


@pytest.mark.slow
def test_jit_matches_eager(tiny, tiny_eval_fn):
    net, _, perturbed = tiny
    x, t = _inputs(3)
    jitted = tiny_eval_fn(perturbed, x, t)
    eager = models.make_denoise_fn(net, num_timesteps=T)(perturbed, x, t, None)
    assert float(jnp.std(jitted)) > 1e-2  # a non-trivial output
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_dropout_off_is_deterministic_and_on_depends_on_key(tiny, tiny_eval_fn):
    net, _, perturbed = tiny
    x, t = _inputs(4)

    def train_forward(params, x, t, key):
        return models.make_denoise_fn(net, num_timesteps=T, train=True, dropout_key=key)(params, x, t, None)

    k1, k2 = jax.random.key(10), jax.random.key(11)
    train_fn = _compile(train_forward, perturbed, x, t, k1)
    eval_out = tiny_eval_fn(perturbed, x, t)
    np.testing.assert_array_equal(eval_out, tiny_eval_fn(perturbed, x, t))
    np.testing.assert_array_equal(train_fn(perturbed, x, t, k1), train_fn(perturbed, x, t, k1))
    assert not np.allclose(train_fn(perturbed, x, t, k1), train_fn(perturbed, x, t, k2))
    assert not np.allclose(train_fn(perturbed, x, t, k1), eval_out)
    with pytest.raises(ValueError, match="dropout_key"):
        models.make_denoise_fn(net, num_timesteps=T, train=True)


@pytest.mark.slow
def test_bf16_compute_close_to_float32(tiny, tiny_eval_fn):
    _, _, perturbed = tiny
    x, t = _inputs(5)
    bf16_net = models.make_unet("tiny", dtype=jnp.bfloat16)
    bf16_fn = _compile(models.make_denoise_fn(bf16_net, num_timesteps=T), perturbed, x, t, None)
    out16, out32 = bf16_fn(perturbed, x, t, None), tiny_eval_fn(perturbed, x, t)
    assert out16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 3e-2, rel


def test_examples_do_not_interact(tiny, tiny_eval_fn):
    _, _, perturbed = tiny
    x, t = _inputs(6)
    x_other, t_other = _inputs(7)
    x2, t2 = x.at[1:].set(x_other[1:]), t.at[1:].set(t_other[1:])
    out, out2 = tiny_eval_fn(perturbed, x, t), tiny_eval_fn(perturbed, x2, t2)
    np.testing.assert_allclose(out[0], out2[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[1:], out2[1:])


def test_timestep_changes_output(tiny, tiny_eval_fn):
    _, _, perturbed = tiny
    x, t = _inputs(8)
    assert not np.allclose(tiny_eval_fn(perturbed, x, t), tiny_eval_fn(perturbed, x, (t + 500) % T))


class _TimeRecorder:
    """Stands in for a Flax model; ``apply`` returns what the network would be fed."""

    dropout = 0.0

    def apply(self, variables, x, t, labels, *, train, rngs):
        return dict(variables=variables, x=x, t=t, labels=labels, train=train, rngs=rngs)


def test_denoise_fn_rescales_time_and_passes_arguments():
    x, t = _inputs(9)
    fed = models.make_denoise_fn(_TimeRecorder(), num_timesteps=4000)("p", x, t, None)
    np.testing.assert_allclose(fed["t"], np.asarray(t) * 0.25, rtol=1e-6)
    assert fed["t"].dtype == jnp.float32
    assert fed["variables"] == {"params": "p"} and fed["labels"] is None and fed["train"] is False
    key = jax.random.key(1)
    fed = models.make_denoise_fn(
        _TimeRecorder(), num_timesteps=4000, rescale_timesteps=False, train=True, dropout_key=key
    )("p", x, t, t)
    np.testing.assert_array_equal(fed["t"], t)
    assert fed["train"] is True and fed["rngs"]["dropout"] is key and fed["labels"] is t


def test_class_conditioning_and_null_class():
    num_classes = 3
    net = models.make_unet("tiny", num_classes=num_classes)
    params = _random_like(models.abstract_params(net, TINY_SHAPE), seed=2, scale=0.3)
    assert params["label_embed"]["embedding"].shape == (num_classes + 1, 32)
    x, t = _inputs(10, batch=2)
    labels = jnp.zeros((2,), jnp.int32)
    denoise = _compile(models.make_denoise_fn(net, num_timesteps=T), params, x, t, labels)
    out = {c: denoise(params, x, t, jnp.full((2,), c, jnp.int32)) for c in range(num_classes + 1)}
    assert not np.allclose(out[0], out[1])
    assert np.all(np.isfinite(out[num_classes]))
    assert not np.allclose(out[num_classes], out[0])
    mixed = denoise(params, x, t, jnp.array([0, num_classes], jnp.int32))
    np.testing.assert_allclose(mixed[0], out[0][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[1], out[num_classes][1], rtol=1e-5, atol=1e-6)


def test_attention_matches_manual_multi_head_softmax(monkeypatch):
    block = models.AttentionBlock(num_heads=2, norm_groups=2)
    assert block.implementation == "xla"
    x = _inputs(12, shape=(2, 3, 8), batch=2)[0]
    abstract = jax.eval_shape(lambda k: block.init(k, x), jax.random.key(0))["params"]
    params = _random_like(abstract, seed=4, scale=0.5)
    out = _compile(lambda p, x: block.apply({"params": p}, x), params, x)(params, x)

    # "xla" is what the block computed before the choice existed (jax's default, no
    # implementation argument): the same program, bit for bit, and the same params.
    default_attention = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda q, k, v, implementation: default_attention(q, k, v))
    before = _compile(lambda p, x: block.apply({"params": p}, x), params, x)(params, x)
    monkeypatch.undo()
    np.testing.assert_array_equal(out, before)
    # "cudnn" has the same params, and off a GPU it is refused while tracing, never run as "xla".
    cudnn = models.AttentionBlock(num_heads=2, norm_groups=2, implementation="cudnn", dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="'cudnn' .*needs an NVIDIA GPU.*'cpu'"):
        jax.eval_shape(lambda p, x: cudnn.apply({"params": p}, x), params, x)
    with pytest.raises(ValueError, match="'flash' is not one of"):
        jax.eval_shape(lambda p, x: block.clone(implementation="flash").apply({"params": p}, x), params, x)
    assert cudnn_attention_problem(jnp.bfloat16, [64, 256]) is None
    assert "bfloat16 or float16" in cudnn_attention_problem(jnp.float32, [64])
    assert "[4, 512]" in cudnn_attention_problem(jnp.bfloat16, [4, 64, 512])

    # NumPy reference: GroupNorm, one qkv projection laid out per head as [q, k, v].
    xn = np.asarray(x, np.float64).reshape(2, 6, 2, 4)  # [B, L, groups, C/groups]
    xn = (xn - xn.mean(axis=(1, 3), keepdims=True)) / np.sqrt(xn.var(axis=(1, 3), keepdims=True) + 1e-5)
    xn = xn.reshape(2, 6, 8) * np.asarray(params["norm"]["scale"]) + np.asarray(params["norm"]["bias"])
    qkv = xn @ np.asarray(params["qkv"]["kernel"]) + np.asarray(params["qkv"]["bias"])  # [B, L, 24]
    qkv = qkv.reshape(2, 6, 2, 3, 4)  # [B, L, heads, (q, k, v), head_dim]
    q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    logits = np.einsum("blnd,bmnd->bnlm", q, k) / np.sqrt(4)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("bnlm,bmnd->blnd", weights, v).reshape(2, 6, 8)
    proj = attended @ np.asarray(params["proj_out"]["kernel"]) + np.asarray(params["proj_out"]["bias"])
    expected = np.asarray(x).reshape(2, 6, 8) + proj
    np.testing.assert_allclose(np.asarray(out).reshape(2, 6, 8), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- embedding and MLP


def test_sinusoidal_embedding_convention():
    t = jnp.array([0.0, 3.0, 250.5])
    emb = models.sinusoidal_embedding(t, 8)
    freqs = np.exp(-np.log(10_000.0) * np.arange(4) / 4)
    args = np.asarray(t)[:, None] * freqs[None]
    np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], axis=1), rtol=1e-5, atol=1e-5)
    odd = models.sinusoidal_embedding(t, 9)
    assert odd.shape == (3, 9) and not np.any(odd[:, -1])


def test_mlp_denoiser():
    net = models.MLPDenoiser(hidden=32, num_blocks=2, out_dim=4, num_classes=2, dropout=0.1)
    key = jax.random.key(0)
    params = _compile(lambda k: models.init_params(net, k, (2,)), key)(key)
    x, t = _inputs(11, shape=(2,), batch=5)
    labels = jnp.array([0, 1, 2, 0, 1], jnp.int32)

    def forward(params, x, t, labels, key):
        eval_out = models.make_denoise_fn(net, num_timesteps=T)(params, x, t, labels)
        train_out = models.make_denoise_fn(net, num_timesteps=T, train=True, dropout_key=key)(params, x, t, labels)
        return eval_out, train_out

    forward = _compile(forward, params, x, t, labels, key)
    np.testing.assert_array_equal(forward(params, x, t, labels, key)[0], 0.0)
    perturbed = _random_like(params, seed=3, base=params)
    out, train_out = forward(perturbed, x, t, labels, key)
    assert out.shape == (5, 4) and out.dtype == jnp.float32
    assert not np.allclose(out, train_out)
    assert not np.allclose(out, forward(perturbed, x, (t + 100) % T, labels, key)[0])
    assert not np.allclose(out, forward(perturbed, x, t, 2 - labels, key)[0])
    plain = models.MLPDenoiser(hidden=16, num_blocks=1)
    out, _ = jax.eval_shape(lambda k: plain.init_with_output(k, x, t), key)
    assert out.shape == (5, 2)
