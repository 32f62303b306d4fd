"""The family contract (``diffusion.families``): every registered family has every member, builds
from its own config keys, and the Gaussian families' data prediction is written once; the config
side (``set_family``, ``upgrade_config``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import solvers
from diffjax.diffusion.families.base import BOUNDS, check_one_of
from diffjax.diffusion.families.gaussian import data_prediction, model_view
from diffjax.diffusion.families.guidance import Guidance
from diffjax.diffusion.families.registry import FAMILIES
from diffjax.diffusion.parameterization import DiffusionSpec
from diffjax.run.config import base_config, set_family, upgrade_config
from diffjax.run.families import family_from_config

MEMBERS = ("from_values", "output_channels", "init_state", "train_losses", "check_choice", "num_steps", "nfe")
GAUSSIAN_MEMBERS = ("noise_process", "predict_x0", "learned_process", "make_draw")


def _family(name: str, **values):
    return FAMILIES[name].from_values(values, discrete_data=True, num_classes=10)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_the_contract(name):
    cls = FAMILIES[name]
    assert cls.name == name and set(cls.bounds) <= set(BOUNDS)
    family = _family(name)
    for member in MEMBERS + (GAUSSIAN_MEMBERS if cls.gaussian else ()):
        assert hasattr(family, member), (name, member)
    assert not cls.bounds or cls.gaussian  # a likelihood needs a Gaussian process
    config = base_config()
    set_family(config, name)
    assert set(config.diffusion) == {"family", *cls.CONFIG}
    assert type(family_from_config(config.diffusion, num_classes=10)) is cls


def test_output_channels_and_time_input():
    assert _family("discrete").output_channels(3) == 3
    assert _family("discrete", var_type="learned_range").output_channels(3) == 6
    assert _family("continuous").output_channels(3) == 3
    assert _family("naive").output_channels(1) == 1
    assert _family("classifier").output_channels(1) == 10
    t = jnp.array([0, 999], jnp.int32)
    np.testing.assert_array_equal(_family("discrete").network_time(t), t)
    rescaled = _family("discrete", timesteps=4000, rescale_timesteps=True).network_time(jnp.array([0, 2000]))
    np.testing.assert_array_equal(rescaled, [0.0, 500.0])


@pytest.mark.parametrize(
    "name,values,message",
    [
        ("discrete", dict(objective="l1"), "objective: 'l1' is not one of"),
        ("discrete", dict(objective="hybrid"), "var_type: the hybrid objective trains the variance"),
        ("discrete", dict(timesteps=1), "timesteps: must be an integer >= 2"),
        ("continuous", dict(process="ve"), "process: 've' is not one of"),
        ("continuous", dict(gamma_0=6.0), r"gamma_0: gamma_0 \(6.0\) must be below"),
        ("naive", dict(num_levels=0), "num_levels: must be an integer >= 1"),
    ],
)
def test_a_family_names_its_bad_key(name, values, message):
    with pytest.raises(ValueError, match=message):
        _family(name, **values)
    with pytest.raises(ValueError, match="data.num_classes"):
        FAMILIES["classifier"].from_values({}, num_classes=0)
    with pytest.raises(ValueError, match=r"^key: 3 is not one of \[1, 2\]$"):
        check_one_of("key", 3, (2, 1))


def _network(params, x, time_input, cond):
    """A smooth stand-in network: its output depends on x, the time input and the labels."""
    shift = 0.0 if cond is None else 0.01 * cond.astype(x.dtype)[:, None]
    return jnp.tanh(params * x + 1e-3 * time_input.astype(x.dtype)[:, None] + shift)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_discrete_data_prediction_is_the_solvers_reading(prediction):
    """The discrete family's data prediction equals ``solvers.x0_predictor`` of the same network
    read by the same spec, at a scalar (a solver's) and at per-example times (a likelihood's)."""
    family = _family("discrete", timesteps=100, prediction=prediction, rescale_timesteps=True)
    process = family.noise_process()
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    params = jnp.float32(0.7)
    denoise_x0 = data_prediction(family, _network, params, process)
    reference = solvers.x0_predictor(family.chain_denoiser(_network), params, DiffusionSpec(prediction), process)
    for t in (0.3, 0.93):
        np.testing.assert_allclose(denoise_x0(x, jnp.float32(t)), reference(x, jnp.float32(t)), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(denoise_x0(x, jnp.full((5,), t)), reference(x, jnp.float32(t)), rtol=1e-6,
                                   atol=1e-6)
    with pytest.raises(ValueError, match="one time per example"):
        denoise_x0(x, jnp.zeros((4,)))


def test_model_view_refuses_a_family_without_a_process():
    with pytest.raises(ValueError, match="family is 'naive'"):
        model_view(_family("naive"), _network, jnp.float32(1.0))
    process, _ = model_view(_family("continuous", process="edm"), _network, jnp.float32(1.0))
    assert process.t_max > process.t_min


def test_guidance_wraps_the_network_and_the_data_prediction():
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    time_input = jnp.full((4,), 10.0)
    labels = jnp.array([0, 1, 2, 3], jnp.int32)
    params = jnp.float32(0.5)
    plain = Guidance(conditional=True)
    assert plain.network(_network, jnp.float32(2.0)) is _network and plain.model_cond(labels) is labels
    assert Guidance().model_cond(labels) is None
    cfg = Guidance(conditional=True, null_cond=jnp.full((4,), 10, jnp.int32))
    w = jnp.float32(1.5)
    guided = cfg.network(_network, w)(params, x, time_input, labels)
    conditional = _network(params, x, time_input, labels)
    unconditional = _network(params, x, time_input, jnp.full((4,), 10, jnp.int32))
    np.testing.assert_allclose(guided, (1 + w) * conditional - w * unconditional, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cfg.network(_network, jnp.float32(0.0))(params, x, time_input, labels), conditional,
                               rtol=1e-6)
    assert plain.data_prediction("unchanged", None, labels, None) == "unchanged"
    assert plain.chain_arguments(None, labels, None) == {}


OLD_DIFFUSION = dict(
    schedule="cosine", timesteps=1000, mean_type="v", var_type="learned_range", objective="hybrid", rescale_vlb=True,
    loss_weighting="min_snr", snr_gamma=5.0, timestep_sampler="uniform", process="vp_linear", prediction="eps",
    weighting="eps_mse", noise_sampler="uniform", gamma_schedule="fixed_linear", gamma_0=-13.3, gamma_1=5.0,
    learn_endpoints=True, schedule_hidden=1024, variance_gradient=True, sigma_data=0.5, p_mean=-1.2, p_std=1.2,
    naive_levels=7,
)
"""``config.diffusion`` as every config.json had it before the families owned their keys."""


@pytest.mark.parametrize("family", ["discrete", "continuous", "naive", "classifier"])
def test_old_config_json_is_upgraded_to_its_family_keys(family):
    old = {"experiment": "x", "model": {"arch": "unet", "rescale_timesteps": True, "dtype": "float32"},
           "diffusion": {**OLD_DIFFUSION, "family": family}}
    new = upgrade_config(old)
    assert set(new["diffusion"]) == {"family", *FAMILIES[family].CONFIG}
    assert "rescale_timesteps" not in new["model"] and new["model"]["arch"] == "unet"
    d = new["diffusion"]
    if family == "discrete":
        assert (d["prediction"], d["weighting"], d["rescale_timesteps"]) == ("v", "min_snr", True)
    elif family == "continuous":
        assert (d["prediction"], d["weighting"]) == ("eps", "eps_mse")
    elif family == "naive":
        assert d["num_levels"] == 7
    assert upgrade_config(new) == new  # today's layout is left alone
    if family == "classifier":  # a classifier's config.json from before time_input: the log-SNR it used
        before = {**new, "diffusion": {k: v for k, v in new["diffusion"].items() if k != "time_input"}}
        assert upgrade_config(before)["diffusion"]["time_input"] == "log_snr"
    legacy = upgrade_config({"model": {"rescale_timesteps": False}, "diffusion": dict(OLD_DIFFUSION)})  # no family key
    assert legacy["diffusion"]["family"] == "discrete" and legacy["diffusion"]["rescale_timesteps"] is False


def test_set_family_refuses_another_familys_key():
    config = base_config()
    with pytest.raises(KeyError, match="not keys of the naive family"):
        set_family(config, "naive", schedule="linear")
    with pytest.raises(KeyError, match="unknown family"):
        set_family(config, "flow")
    set_family(config, "continuous", process="edm")
    assert config.diffusion.family == "continuous" and config.diffusion.process == "edm"
