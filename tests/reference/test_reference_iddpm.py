"""diffjax against openai/improved-diffusion: every array of the reference file, in float32.

``iddpm_reference.npz`` (described in ``shared/golden/README.md``) holds 199 arrays that
improved DDPM's ``gaussian_diffusion.py`` and ``respace.py`` computed in float64 from
random inputs (images NHWC, B = 6, 8x8x3, t = [0, 1, 10, 500, 998, 999]). Each array is
recomputed here from the file's inputs with diffjax's public functions in default
float32, and must match to float32 precision: tables and betas to relative 1e-5 (kept
timesteps exactly), everything else to |diff| <= max(1e-5, 1e-4 |ref|).

``test_every_reference_array_is_checked`` keeps the list of checked keys, written out
from the README's description, equal to the file's keys minus its inputs, so no array
goes unchecked. The file and its README are kept in ``tests/reference/data/`` (copied from
``shared/golden/``), so this test never skips.
"""

from __future__ import annotations

import functools
import itertools
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import (
    DiffusionSpec,
    Objective,
    bpd,
    ddim_step,
    ddpm_step,
    named_schedule,
    p_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    respace,
    space_timesteps,
    training_losses,
    vb_terms_bpd,
)

REFERENCE_PATH = pathlib.Path(__file__).resolve().parent / "data" / "iddpm_reference.npz"
T = 1000
SCHEDULE_NAMES = ("linear", "cosine")
MEAN_TYPES = ("eps", "x0")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range", "learned")
TABLES = (
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
ETAS = ("0.0", "0.5", "1.0")
# improved DDPM's loss types as diffjax objectives (eps prediction): the VLB term of the
# plain MSE is unweighted, the rescaled one weighted T/1000; the KL is the VLB term, x T
# when rescaled.
OBJECTIVE_OF_LOSS_TYPE = {
    "mse": Objective("simple", rescale_vlb=False),
    "rescaled_mse": Objective("simple", rescale_vlb=True),
    "kl": Objective("vlb", rescale_vlb=False),
    "rescaled_kl": Objective("vlb", rescale_vlb=True),
}
TERMS_OF_LOSS_TYPE = {
    ("mse", "fixed_small"): ("mse", "loss"),
    ("mse", "learned_range"): ("vb", "mse", "loss"),
    ("kl", "fixed_small"): ("loss",),
    ("kl", "learned_range"): ("loss",),
}
RESPACINGS = (
    ("1000", "ddim50"),
    ("1000", "ddim25"),
    ("1000", "10,15,20"),
    ("4000", "250"),
    ("4000", "100,50"),
    ("1000", "1000"),
)
BPD_NUM_TIMESTEPS = 100
BPD_VAR_TYPES = ("fixed_large", "learned_range")
BPD_OUTPUTS = ("total_bpd", "prior_bpd", "vb", "mse", "xstart_mse")

INPUT_KEYS = (
    "in/x0",
    "in/t",
    "in/noise",
    "in/model_out",
    "in/step_noise/linear",
    "in/step_noise/cosine",
    "in/bpd_noise",
)


def reference_keys_by_family() -> dict[str, list[str]]:
    """The checked keys of the reference file, per family, as its README lists them."""
    families = {
        "betas": [f"betas/{name}/{num}" for name in SCHEDULE_NAMES for num in (1000, 4000)],
        "table": [f"table/{name}/{table}" for name in SCHEDULE_NAMES for table in TABLES],
        "q_sample": [f"q_sample/{name}" for name in SCHEDULE_NAMES],
        "q_posterior": [f"q_posterior/{name}/{out}" for name in SCHEDULE_NAMES for out in ("mean", "log_variance")],
        "p_mean_variance": [
            f"p_mean_variance/{name}/{mean_type}/{var_type}/clip{clip}/{out}"
            for name, mean_type, var_type, clip, out in itertools.product(
                SCHEDULE_NAMES, MEAN_TYPES, VAR_TYPES, (0, 1), ("mean", "log_variance", "pred_xstart")
            )
        ],
        "vb_bpd": [
            f"vb_bpd/{name}/{mean_type}/{var_type}"
            for name, mean_type, var_type in itertools.product(SCHEDULE_NAMES, MEAN_TYPES, VAR_TYPES)
        ],
        "training_losses": [
            f"training_losses/{name}/{prefix}{loss}/{var_type}/{term}"
            for name in SCHEDULE_NAMES
            for (loss, var_type), terms in TERMS_OF_LOSS_TYPE.items()
            for prefix in ("", "rescaled_")
            for term in terms
        ],
        "ddim_step": [f"ddim_step/{name}/eta{eta}" for name in SCHEDULE_NAMES for eta in ETAS],
        "p_sample_step": [f"p_sample_step/{name}" for name in SCHEDULE_NAMES],
        "respace": [f"respace/{num}/{spec}/{out}" for num, spec in RESPACINGS for out in ("timesteps", "betas")],
        "bpd": [
            f"bpd/linear{BPD_NUM_TIMESTEPS}/{var_type}/{out}" for var_type in BPD_VAR_TYPES for out in BPD_OUTPUTS
        ],
    }
    return families


CHECKED_KEYS = [key for keys in reference_keys_by_family().values() for key in keys]
RELATIVE_FAMILIES = ("betas", "table", "respace")
"""Families compared to relative 1e-5; the others to max(1e-5, 1e-4 |ref|)."""


# ------------------------------------------------------------------------ inputs


@functools.cache
def reference() -> dict[str, np.ndarray]:
    """Every array of the reference file, by key (float64, ints as int64)."""
    with np.load(REFERENCE_PATH) as arrays:
        return {key: arrays[key] for key in arrays.files}


def f32(key: str) -> jnp.ndarray:
    """A reference array as a float32 jax array."""
    return jnp.asarray(reference()[key], jnp.float32)


def timesteps() -> jnp.ndarray:
    """in/t as int32 [B]."""
    return jnp.asarray(reference()["in/t"], jnp.int32)


def model_output(spec: DiffusionSpec) -> jnp.ndarray:
    """in/model_out [B, H, W, 2C], or its first C channels for a fixed variance."""
    output = f32("in/model_out")
    return output if spec.learns_variance else output[..., : output.shape[-1] // 2]


@functools.cache
def schedule(name: str, num_timesteps: int = T):
    return named_schedule(name, num_timesteps)


# -------------------------------------------------------- diffjax value per family


def betas_value(name: str, num_timesteps: str) -> np.ndarray:
    """betas/{schedule}/{T}: the float32 schedule's betas [T]."""
    return schedule(name, int(num_timesteps)).betas


def table_value(name: str, table: str) -> np.ndarray:
    """table/{schedule}/{table}: a float32 table [T]."""
    if table not in TABLES:
        raise KeyError(table)
    return getattr(schedule(name), table)


def q_sample_value(name: str) -> np.ndarray:
    """q_sample/{schedule}: x_t [B, H, W, C] from in/x0, in/t, in/noise."""
    return q_sample(schedule(name), f32("in/x0"), timesteps(), f32("in/noise"))


def reference_x_t(name: str) -> jnp.ndarray:
    """The reference's x_t [B, H, W, C] (q_sample/{schedule}), the input of the later keys."""
    return f32(f"q_sample/{name}")


def q_posterior_value(name: str, out: str) -> np.ndarray:
    """q_posterior/{schedule}/{mean,log_variance}: [B, H, W, C]."""
    x0 = f32("in/x0")
    mean, _, log_variance = q_posterior_mean_variance(schedule(name), x0, reference_x_t(name), timesteps())
    return {"mean": mean, "log_variance": jnp.broadcast_to(log_variance, x0.shape)}[out]


def p_mean_variance_value(name: str, mean_type: str, var_type: str, clip: str, out: str) -> np.ndarray:
    """p_mean_variance/{schedule}/{mean type}/{var type}/clip{0,1}/{mean,log_variance,pred_xstart}."""
    spec = DiffusionSpec(mean_type, var_type)
    x_t = reference_x_t(name)
    model = p_mean_variance(spec, schedule(name), model_output(spec), x_t, timesteps(), {"clip0": False, "clip1": True}[clip])
    return {
        "mean": model["mean"],
        "log_variance": jnp.broadcast_to(model["log_variance"], x_t.shape),
        "pred_xstart": model["pred_x0"],
    }[out]


def vb_bpd_value(name: str, mean_type: str, var_type: str) -> np.ndarray:
    """vb_bpd/{schedule}/{mean type}/{var type}: the VLB term [B] in bits/dim, unclipped."""
    spec = DiffusionSpec(mean_type, var_type)
    x_t = reference_x_t(name)
    return vb_terms_bpd(spec, schedule(name), model_output(spec), f32("in/x0"), x_t, timesteps(), False)["vb"]


def training_losses_value(name: str, loss_type: str, var_type: str, term: str) -> np.ndarray:
    """training_losses/{schedule}/{loss type}/{var type}/{loss,mse,vb}: [B], eps prediction.

    x_t is diffjax's q_sample of the inputs, as in a training step.
    """
    spec = DiffusionSpec("eps", var_type)
    x0, t, noise = f32("in/x0"), timesteps(), f32("in/noise")
    x_t = q_sample(schedule(name), x0, t, noise)
    objective = OBJECTIVE_OF_LOSS_TYPE[loss_type]
    return training_losses(spec, objective, schedule(name), model_output(spec), x0, x_t, t, noise)[term]


STEP_SPEC = DiffusionSpec("eps", "fixed_small")


def ddim_step_value(name: str, eta: str) -> np.ndarray:
    """ddim_step/{schedule}/eta{eta}: x_{t-1} [B, H, W, C] with the reference's draw, clipped x_0-hat."""
    if not eta.startswith("eta"):
        raise KeyError(eta)
    x_t, noise = reference_x_t(name), f32(f"in/step_noise/{name}")
    output = model_output(STEP_SPEC)
    return ddim_step(STEP_SPEC, schedule(name), output, x_t, timesteps(), None, True, float(eta[3:]), noise=noise)[0]


def p_sample_step_value(name: str) -> np.ndarray:
    """p_sample_step/{schedule}: the ancestral x_{t-1} [B, H, W, C] with the reference's draw."""
    x_t, noise = reference_x_t(name), f32(f"in/step_noise/{name}")
    return ddpm_step(STEP_SPEC, schedule(name), model_output(STEP_SPEC), x_t, timesteps(), None, True, noise=noise)[0]


def respace_value(num_timesteps: str, spacing: str, out: str) -> np.ndarray:
    """respace/{T}/{spacing}/{timesteps,betas}: kept steps [K], or the respaced cosine chain's betas [K]."""
    if out == "timesteps":
        return np.asarray(space_timesteps(int(num_timesteps), spacing))
    if out != "betas":
        raise KeyError(out)
    respaced, _ = respace(schedule("cosine", int(num_timesteps)), spacing)
    return respaced.betas


def linear_eps_denoiser(learns_variance: bool):
    """The reference's fake denoiser: eps = 0.5 x_t t / T + 0.1 (t the raw step), and for a
    learned range the variance channels tanh(x_t). [B, H, W, C] -> [B, H, W, C or 2C]."""

    def denoise(params, x_t, t, cond):
        eps = 0.5 * x_t * (t.astype(jnp.float32) / BPD_NUM_TIMESTEPS)[:, None, None, None] + 0.1
        return jnp.concatenate([eps, jnp.tanh(x_t)], axis=-1) if learns_variance else eps

    return denoise


@functools.cache
def bound_terms(var_type: str) -> dict[str, np.ndarray]:
    """The full bound on the T = 100 linear chain with the reference's q_sample draws,
    under the reference's names; per-step terms [B, T] in its loop order (t = T-1 first)."""
    spec = DiffusionSpec("eps", var_type)
    denoise = linear_eps_denoiser(spec.learns_variance)
    noise_by_index = f32("in/bpd_noise")[::-1]  # loop step j drew the noise of index T-1-j
    chain = schedule("linear", BPD_NUM_TIMESTEPS)
    out = bpd(denoise, None, chain, spec, f32("in/x0"), None, clip_denoised=True, noise=noise_by_index)
    in_loop_order = lambda per_index: np.asarray(per_index)[:, ::-1]
    return {
        "total_bpd": np.asarray(out["total"]),
        "prior_bpd": np.asarray(out["prior"]),
        "vb": in_loop_order(out["vb"]),
        "mse": in_loop_order(out["eps_mse"]),
        "xstart_mse": in_loop_order(out["x0_mse"]),
    }


def bpd_value(chain: str, var_type: str, out: str) -> np.ndarray:
    """bpd/linear100/{var type}/{total_bpd,prior_bpd,vb,mse,xstart_mse}."""
    if chain != f"linear{BPD_NUM_TIMESTEPS}":
        raise KeyError(chain)
    return bound_terms(var_type)[out]


VALUE_OF_FAMILY = {
    "betas": betas_value,
    "table": table_value,
    "q_sample": q_sample_value,
    "q_posterior": q_posterior_value,
    "p_mean_variance": p_mean_variance_value,
    "vb_bpd": vb_bpd_value,
    "training_losses": training_losses_value,
    "ddim_step": ddim_step_value,
    "p_sample_step": p_sample_step_value,
    "respace": respace_value,
    "bpd": bpd_value,
}


def diffjax_value(key: str) -> np.ndarray:
    """diffjax's counterpart of the reference array ``key``."""
    family, *parts = key.split("/")
    return np.asarray(VALUE_OF_FAMILY[family](*parts))


# ----------------------------------------------------------------------- tests


def assert_matches(key: str, actual: np.ndarray, expected: np.ndarray) -> None:
    """The README's tolerance for ``key``; integer arrays exactly."""
    assert actual.shape == expected.shape, f"{key}: shape {actual.shape}, reference {expected.shape}"
    if np.issubdtype(expected.dtype, np.integer):
        np.testing.assert_array_equal(actual, expected, err_msg=key)
        return
    assert actual.dtype == np.float32, f"{key}: diffjax computed it in {actual.dtype}, not float32"
    expected = expected.astype(np.float64)
    if key.split("/")[0] in RELATIVE_FAMILIES:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=0, err_msg=key)
        return
    error = np.abs(actual.astype(np.float64) - expected)
    allowed = np.maximum(1e-5, 1e-4 * np.abs(expected))
    worst = np.unravel_index(np.argmax(error / allowed), error.shape)
    assert np.all(error <= allowed), (
        f"{key}: {np.sum(error > allowed)} of {error.size} values off; worst at {worst}: "
        f"diffjax {actual[worst]!r}, reference {expected[worst]!r}, allowed |diff| {allowed[worst]:.3g}"
    )


@pytest.mark.parametrize("key", CHECKED_KEYS)
def test_matches_improved_diffusion(key):
    assert_matches(key, diffjax_value(key), reference()[key])


def test_every_reference_array_is_checked():
    """The checked keys and the inputs are exactly the file's keys: nothing unchecked, nothing missing."""
    file_keys = set(reference())
    assert len(CHECKED_KEYS) == len(set(CHECKED_KEYS))
    assert set(INPUT_KEYS) | set(CHECKED_KEYS) == file_keys, (
        f"unchecked: {sorted(file_keys - set(CHECKED_KEYS) - set(INPUT_KEYS))}; "
        f"missing from the file: {sorted((set(CHECKED_KEYS) | set(INPUT_KEYS)) - file_keys)}"
    )
    assert len(file_keys) == 199
