"""runtime.sampling: a SamplerChoice from the config, the discrete chain and the solvers through
one compiled sampler, traced settings that do not recompile, and the config's checks."""

import dataclasses

import jax
import numpy as np
import pytest

from diffjax.errors import ConfigError
from diffjax.run.config import validate
from diffjax.runtime.mesh import make_mesh
from diffjax.runtime.sampling import SamplerChoice, make_sampler
from diffjax.train.loop import make_init_fn
from diffjax.train.optim import make_optimizer
from tests.support.train_utils import tiny_image_setup, toy_config, toy_recipe


@pytest.fixture(scope="module")
def toy():
    config = toy_config()
    config = config.copy_and_resolve_references()
    config.diffusion.timesteps = 20
    recipe = toy_recipe(config)
    params = jax.jit(make_init_fn(recipe, make_optimizer(config.train)))(jax.random.PRNGKey(0)).params
    return config, recipe, params


def test_choice_from_settings_and_eval_entries(toy):
    config, recipe, _ = toy
    schedule, family = recipe.family.schedule, recipe.family
    chain = SamplerChoice.from_settings(config.sample)
    assert chain.solver == "" and chain.label == config.sample.steps
    assert family.nfe(chain) == family.num_steps(chain) == int(config.sample.steps.removeprefix("ddim"))
    heun = SamplerChoice.from_settings(config.sample, "heun:5")
    assert (heun.solver, heun.steps, heun.label) == ("heun", "5", "heun:5:uniform_log_snr")
    assert SamplerChoice.from_settings(config.sample, "heun:5:karras").grid == "karras"
    assert family.num_steps(heun) == 5 and family.nfe(heun) == 2 * 5 + 1  # + the final denoising
    assert family.nfe(SamplerChoice.from_settings(config.sample, "dpmpp_2m:10")) == 11
    respaced = SamplerChoice.from_settings(config.sample, "10")
    assert respaced.solver == "" and family.nfe(respaced) == 10 and schedule.num_timesteps == 20
    settings = heun.settings()
    assert settings["grid"] == "uniform_log_snr" and settings["solver_options"] == {}  # Heun takes none
    ancestral = SamplerChoice.from_settings(config.sample, "euler_ancestral:4").settings()["solver_options"]
    assert ancestral == {"eta": 1.0, "s_noise": 1.0}


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.slow
def test_solver_ddim_on_the_chain_grid_is_the_chain_ddim(toy, clip):
    """DDIM as first-order DPM-Solver++ over the K + 1 trained steps of the chain's respacing
    "K + 1", then the final denoising at step 0, is the chain's (K + 1)-step DDIM, with or
    without clipping x0 (the untrained MLP's samples reach ~1e3 unclipped: float32 relative)."""
    config, recipe, params = toy
    mesh = make_mesh()
    chain = dataclasses.replace(SamplerChoice.from_settings(config.sample, "6"), clip_denoised=clip)
    solver = dataclasses.replace(SamplerChoice.from_settings(config.sample, "ddim:5"), grid="discrete_even",
                                 clip_denoised=clip)
    assert recipe.family.nfe(chain) == recipe.family.nfe(solver) == 6
    key = jax.random.PRNGKey(3)
    expected = make_sampler(recipe, mesh, num_samples=32, choice=chain)(params, key)
    got = make_sampler(recipe, mesh, num_samples=32, choice=solver)(params, key)
    np.testing.assert_allclose(got, expected, atol=4e-6 * np.abs(expected).max(), rtol=0)


def test_traced_settings_do_not_recompile(toy):
    config, recipe, params = toy
    choice = SamplerChoice.from_settings(config.sample, "euler_ancestral:4")
    draw = make_sampler(recipe, make_mesh(), num_samples=16, choice=choice)
    key = jax.random.PRNGKey(0)
    first = draw(params, key)
    grid = np.linspace(1.0, 1.0 / 20, 5, dtype=np.float32)
    other_grid = draw(params, key, grid=grid)
    other_eta = draw(params, key, solver_options={"eta": 0.3})
    other_key = draw(params, jax.random.PRNGKey(1), solver_options={"s_noise": 0.9})
    assert draw.compiled._cache_size() == 1
    for other in (other_grid, other_eta, other_key):
        assert np.abs(first - other).max() > 1e-4
    with pytest.raises(ValueError, match="shape"):
        draw(params, key, grid=grid[:3])
    with pytest.raises(ValueError, match="does not take"):
        draw(params, key, solver_options={"snr": 0.1})
    with pytest.raises(ValueError, match="without guidance"):
        draw(params, key, guidance_weight=2.0)
    chain = make_sampler(recipe, make_mesh(), num_samples=16, choice=SamplerChoice.from_settings(config.sample, "ddim4"))
    a, b = chain(params, key), chain(params, key, eta=1.0)
    assert chain.compiled._cache_size() == 1 and np.abs(a - b).max() > 1e-4


@pytest.mark.parametrize("overrides, message", [
    (dict(solver="nope", steps="5"), "unknown solver 'nope'"),
    (dict(solver="heun", steps="ddim5"), "number of steps"),
    (dict(solver="heun", steps="5", grid="linear"), "unknown grid 'linear'"),
    (dict(solver="heun", steps="20", grid="discrete_even"), "fewer than T = 20"),
    (dict(solver="heun", steps="5", dynamic_threshold=1.5), "percentile"),
])
def test_config_checks_the_solver_choice(toy, overrides, message):
    config = toy[0].copy_and_resolve_references()
    config.sample.update(overrides)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_config_checks_the_eval_entries(toy):
    config = toy[0].copy_and_resolve_references()
    config.eval.sample_steps = "ddim5 heun:3 dpmpp_2m:x"
    with pytest.raises(ConfigError, match="eval.sample_steps"):
        validate(config)
    config.eval.sample_steps = "ddim5 heun:3 dpmpp_2m:4 10"
    validate(config)


@pytest.mark.slow
def test_interpolation_grid_decodes_slerps_of_two_latents(tmp_path):
    """--mode=sample's interpolation: each row decodes slerp(x_a, x_b, f) at the fractions; its
    ends are the samples of x_a and x_b themselves (a tiny, untrained digits UNet)."""
    import jax.numpy as jnp

    from diffjax.diffusion.latent import slerp
    from diffjax.run.sample import write_interpolation

    config, recipe = tiny_image_setup()
    params = jax.jit(make_init_fn(recipe, make_optimizer(config.train)))(jax.random.PRNGKey(0)).params
    choice = SamplerChoice.from_settings(config.sample, "dpmpp_2m:3")
    stem = str(tmp_path / "interp")
    record = write_interpolation(recipe, params, choice, make_mesh(), stem, rows=2, columns=4, seed=5)
    with np.load(record["npz"]) as f:
        samples, fractions = f["samples"], f["fractions"]
    assert samples.shape == (2, 4, 8, 8, 1) and list(fractions) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert (tmp_path / "interp.png").exists()
    # Recompute one row from its latents: the same slerp, decoded on its own.
    key_a, key_b = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(5), 2**30))
    x_a, x_b = (jax.random.normal(k, (2, 8, 8, 1), jnp.float32) for k in (key_a, key_b))
    latents = np.asarray(slerp(x_a, x_b, fractions))[:, 1]  # row 1: [F, 8, 8, 1]
    draw = make_sampler(recipe, make_mesh(), num_samples=4, choice=choice)
    np.testing.assert_allclose(draw(params, key_a, x_T=latents), samples[1], atol=1e-5)
    assert np.abs(samples[1, 1] - samples[1, 0]).max() > 1e-3


def test_interpolation_needs_a_deterministic_sampler(toy, tmp_path):
    from diffjax.run.sample import generate_samples

    config, recipe, params = toy
    config = config.copy_and_resolve_references()
    config.sample.update(solver="euler_ancestral", steps="3", interpolation_rows=2)
    with pytest.raises(ConfigError, match="deterministic sampler"):
        generate_samples(recipe, params, config.sample, make_mesh(), str(tmp_path), checkpoint_step=0)
    config.sample.solver = "heun"
    with pytest.raises(ConfigError, match="image data"):
        generate_samples(recipe, params, config.sample, make_mesh(), str(tmp_path), checkpoint_step=0)
    assert not list(tmp_path.iterdir())
