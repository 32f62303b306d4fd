"""How a denoiser's output is read: the eps/x_0/v conversions against their closed forms in
float64 (a float64 schedule under ``jax.enable_x64``), under jit, and ``read_output``."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import parameterization as param
from diffjax.diffusion import schedules
from diffjax.diffusion.parameterization import DiffusionSpec

T = 1000
STEPS = np.array([0, 1, 2, 500, 998, 999])
SHAPE = (6, 3, 2, 2)
TIGHT = dict(rtol=1e-9, atol=1e-9)


@pytest.fixture(params=["linear", "cosine"])
def float64_case(request):
    """A float64 schedule, alpha_bar [B, 1, 1, 1] at STEPS, and float64 x0, eps, t; under x64."""
    with jax.enable_x64(True):
        betas = schedules.get_betas(request.param, T)
        schedule = schedules.make_schedule(betas, dtype=jnp.float64)
        rng = np.random.default_rng(0)
        x0 = rng.uniform(-1.5, 1.5, SHAPE)
        eps = rng.standard_normal(SHAPE)
        alpha_bar = np.cumprod(1.0 - betas)[STEPS].reshape(-1, 1, 1, 1)
        yield schedule, alpha_bar, x0, eps, jnp.asarray(STEPS, jnp.int32)


def closed_forms(alpha_bar, x0, eps):
    """x_t and v from x_0 and eps (float64 numpy)."""
    x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1.0 - alpha_bar) * eps
    v = np.sqrt(alpha_bar) * eps - np.sqrt(1.0 - alpha_bar) * x0
    return x_t, v


def test_conversions_match_closed_forms(float64_case):
    schedule, alpha_bar, x0, eps, t = float64_case
    x_t, v = closed_forms(alpha_bar, x0, eps)
    conversions = {
        "v": (param.predict_v, x0, eps, v),
        "x0_from_eps": (param.predict_x0_from_eps, x_t, eps, x0),
        "eps_from_x0": (param.predict_eps_from_x0, x_t, x0, eps),
        "x0_from_v": (param.predict_x0_from_v, x_t, v, x0),
        "eps_from_v": (param.predict_eps_from_v, x_t, v, eps),
    }
    for name, (convert, first, second, expected) in conversions.items():
        got = jax.jit(convert)(schedule, jnp.asarray(first), t, jnp.asarray(second))
        assert got.dtype == jnp.float64 and got.shape == SHAPE, name
        np.testing.assert_allclose(got, expected, **TIGHT, err_msg=name)


def test_conversions_round_trip(float64_case):
    """Each conversion undone by its inverse; v's rotation keeps x_t^2 + v^2 = x_0^2 + eps^2."""
    schedule, alpha_bar, x0, eps, t = float64_case
    x_t, _ = closed_forms(alpha_bar, x0, eps)
    x0, eps, x_t = jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(x_t)

    @jax.jit
    def round_trips(x0, eps, x_t):
        v = param.predict_v(schedule, x0, t, eps)
        x0_from_v = param.predict_x0_from_v(schedule, x_t, t, v)
        eps_from_v = param.predict_eps_from_v(schedule, x_t, t, v)
        return dict(
            x0_via_eps=param.predict_x0_from_eps(schedule, x_t, t, param.predict_eps_from_x0(schedule, x_t, t, x0)),
            eps_via_x0=param.predict_eps_from_x0(schedule, x_t, t, param.predict_x0_from_eps(schedule, x_t, t, eps)),
            x0_via_v=x0_from_v,
            eps_via_v=eps_from_v,
            v_via_x0_and_eps=param.predict_v(schedule, x0_from_v, t, eps_from_v),
            v_norm=jnp.square(x_t) + jnp.square(v),
        ), v

    out, v = round_trips(x0, eps, x_t)
    expected = dict(
        x0_via_eps=x0, eps_via_x0=eps, x0_via_v=x0, eps_via_v=eps, v_via_x0_and_eps=v,
        v_norm=jnp.square(x0) + jnp.square(eps),
    )
    for name, want in expected.items():
        np.testing.assert_allclose(out[name], want, **TIGHT, err_msg=name)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("var_type", ["fixed_small", "learned_range"])
def test_every_mean_type_reads_a_consistent_output_the_same(float64_case, clip, var_type):
    schedule, alpha_bar, x0, eps, t = float64_case
    x_t, v = closed_forms(alpha_bar, x0, eps)
    var_part = np.tanh(x0)
    read = jax.jit(param.read_output, static_argnums=(0, 5))
    predictions = {}
    for mean_type, mean_part in [("eps", eps), ("x0", x0), ("v", v)]:
        spec = DiffusionSpec(mean_type, var_type)
        output = param.join_output(jnp.asarray(mean_part), jnp.asarray(var_part) if spec.learns_variance else None)
        predictions[mean_type] = read(spec, schedule, output, jnp.asarray(x_t), t, clip)
    want_x0 = np.clip(x0, -1, 1) if clip else x0
    want_eps = (x_t - np.sqrt(alpha_bar) * want_x0) / np.sqrt(1.0 - alpha_bar)
    want_v = np.sqrt(alpha_bar) * want_eps - np.sqrt(1.0 - alpha_bar) * want_x0
    for mean_type, prediction in predictions.items():
        # eps from a clipped x_0 at t = 0 divides by sqrt(1 - alpha_bar_0) ~ 0.01 (linear).
        np.testing.assert_allclose(prediction.x0, want_x0, **TIGHT, err_msg=mean_type)
        np.testing.assert_allclose(prediction.eps, want_eps, rtol=1e-9, atol=1e-8, err_msg=mean_type)
        np.testing.assert_allclose(prediction.v, want_v, rtol=1e-9, atol=1e-8, err_msg=mean_type)
        np.testing.assert_array_equal(prediction.log_variance, predictions["eps"].log_variance)


def test_prediction_target_is_what_a_perfect_denoiser_outputs(float64_case):
    schedule, alpha_bar, x0, eps, t = float64_case
    _, v = closed_forms(alpha_bar, x0, eps)
    for mean_type, expected in [("eps", eps), ("x0", x0), ("v", v)]:
        target = jax.jit(param.prediction_target, static_argnums=0)(
            DiffusionSpec(mean_type), schedule, jnp.asarray(x0), t, jnp.asarray(eps)
        )
        np.testing.assert_allclose(target, expected, **TIGHT, err_msg=mean_type)


def test_mse_ratio_to_x0_is_the_ratio_of_squared_errors(float64_case):
    """An error in x_0-hat, seen in each parameterisation at fixed x_t, has its squared size
    scaled by ``mse_ratio_to_x0``: SNR for eps, 1 for x0, SNR + 1 for v."""
    schedule, alpha_bar, x0, eps, t = float64_case
    x_t, _ = closed_forms(alpha_bar, x0, eps)
    snr = jnp.asarray(alpha_bar[:, 0, 0, 0] / (1.0 - alpha_bar[:, 0, 0, 0]))
    x0_hat = x0 + 0.1 * np.random.default_rng(1).standard_normal(SHAPE)
    x0_squared_error = np.square(x0_hat - x0).sum(axis=(1, 2, 3))
    prediction = param.read_output(DiffusionSpec("x0"), schedule, jnp.asarray(x0_hat), jnp.asarray(x_t), t)
    for mean_type, mean_part in [("eps", prediction.eps), ("x0", prediction.x0), ("v", prediction.v)]:
        spec = DiffusionSpec(mean_type)
        target = param.prediction_target(spec, schedule, jnp.asarray(x0), t, jnp.asarray(eps))
        squared_error = np.square(np.asarray(mean_part) - np.asarray(target)).sum(axis=(1, 2, 3))
        ratio = jax.jit(param.mse_ratio_to_x0, static_argnums=0)(spec, snr)
        np.testing.assert_allclose(squared_error / x0_squared_error, ratio, rtol=1e-7, err_msg=mean_type)


def test_split_and_join_are_inverse_and_check_the_shape():
    output = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
    mean_part, var_part = param.split_output(DiffusionSpec("v", "learned"), output, (2, 3, 2))
    np.testing.assert_array_equal(mean_part, output[..., :2])
    np.testing.assert_array_equal(param.join_output(mean_part, var_part), output)
    mean_part, var_part = param.split_output(DiffusionSpec("x0", "fixed_large"), output, (2, 3, 4))
    assert var_part is None and mean_part is output and param.join_output(mean_part, None) is output
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\).*expects \(2, 3, 6\)"):
        param.split_output(DiffusionSpec("eps", "learned_range"), output, (2, 3, 3))


def test_model_log_variance_ends_of_learned_range():
    schedule = schedules.named_schedule("cosine", 100)
    t = jnp.array([0, 1, 50, 99], jnp.int32)
    ones = jnp.ones((4, 5, 3))
    spec = DiffusionSpec("eps", "learned_range")
    np.testing.assert_allclose(
        param.model_log_variance(spec, schedule, ones, t, 3)[:, 0, 0], schedule.log_betas[t], rtol=1e-6
    )
    small = param.model_log_variance(DiffusionSpec("eps", "fixed_small"), schedule, None, t, 3)
    assert small.shape == (4, 1, 1)
    np.testing.assert_allclose(param.model_log_variance(spec, schedule, -ones, t, 3), jnp.broadcast_to(small, ones.shape), rtol=1e-6)
    learned = param.model_log_variance(DiffusionSpec("eps", "learned"), schedule, 0.5 * ones, t, 3)
    np.testing.assert_array_equal(learned, 0.5 * ones)


def test_only_the_parameterization_module_branches_on_the_spec():
    """The posterior, losses, samplers and likelihood read an output through
    ``parameterization``; none of them looks at mean_type or var_type itself."""
    package = pathlib.Path(param.__file__).resolve().parents[1]
    readers = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "parameterization.py" or path.parts[-2] == "run":
            continue  # run/ builds specs from configs
        if path.name == "discrete.py":
            continue  # the discrete family builds its spec from config values and checks them (run/'s job before)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("mean_type", "var_type", "learns_variance"):
                readers.append(f"{path.relative_to(package)}:{node.lineno} .{node.attr}")
    assert readers == []
