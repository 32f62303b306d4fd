"""The four defects of the solver audit (issue 23), each with a test that fails on the code before
the fix: (1) the recorded NFE is the number of model calls for every grid and K; (2) every solver
grid but DDIM's truncated spacings starts at the top step, so a sample at many steps converges;
(3) a last step onto sigma = 0 is first order, whatever ``lower_order_final`` says; (4)
``lower_order_final`` is a validated solver option, and it sets UniPC-3's measured order.

Run as a script to print the measured orders of ``docs/solvers.md``:
``python -m tests.diffusion.test_solver_audit`` (float64, a few minutes on 2 cores).
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from diffjax.diffusion import processes, schedules, solvers, time_grids
from diffjax.runtime.sampler_choice import GRID_NAMES, SamplerChoice, solver_grid

MU, S = 0.3, 0.5  # data N(MU, S^2 I)
TRUNCATED = ("discrete_ddim_truncated", "discrete_ddim_quadratic_truncated")


class GaussianX0:
    """The exact data prediction of N(MU, S^2 I) under ``process``; counts its calls in ``calls``."""

    def __init__(self, process):
        self.process, self.calls = process, 0

    def __call__(self, x, t):
        self.calls += 1
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        return MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * MU)


def exact_map(process, x_T, t_T, t_0):
    """The probability-flow ODE's map of Gaussian data from (x_T, t_T) to t_0 (the standardised
    coordinate is kept)."""
    scale = lambda t: jnp.sqrt(process.alpha(t) ** 2 * S**2 + process.sigma(t) ** 2)  # noqa: E731
    z = (x_T - process.alpha(t_T) * MU) / scale(t_T)
    return process.alpha(t_0) * MU + scale(t_0) * z


# ---------------------------------------------------------------- 1: NFE from the grid built

SMALL_T = 8


def _counted(model):
    """``model`` as a named sub-computation, so that its calls can be found in a jaxpr."""

    @functools.partial(jax.jit, inline=False)
    def denoise_x0(x, t):
        return model(x, t)

    return denoise_x0


def model_calls(jaxpr) -> int:
    """The denoiser calls a jaxpr makes when run: each ``_counted`` call once, a scan's body
    ``length`` times, a cond's most expensive branch (Heun's correction)."""
    calls = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("jit", "pjit") and eqn.params["name"] == "denoise_x0":
            calls += 1
        elif eqn.primitive.name == "scan":
            calls += eqn.params["length"] * model_calls(eqn.params["jaxpr"].jaxpr)
        elif eqn.primitive.name == "cond":
            calls += max(model_calls(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            calls += sum(model_calls(sub) for sub in jex_core.jaxprs_in_params(eqn.params))
    return calls


@pytest.mark.parametrize("grid_name", GRID_NAMES)
def test_nfe_is_the_number_of_model_calls_for_every_grid_and_k(grid_name):
    """For every K in 1..T - 1 (T = 8), a choice either is refused by ``check`` (a K at which the
    rule's steps would coincide, naming the largest K at which they do not) or its ``nfe`` is the
    number of denoiser calls of ``solve`` over the grid the sampler builds, the final denoising
    included: counted in the traced program (``model_calls``: the scan's length times its body's
    calls, plus the final one). Before the fix ``discrete_ddim_quadratic`` merged coinciding steps
    and made fewer calls than ``nfe``."""
    schedule = schedules.named_schedule("cosine", SMALL_T)
    process = processes.discrete_process(schedule)
    x_T = jnp.linspace(-2.0, 2.0, 3)[:, None]
    refused = []
    for k in range(1, SMALL_T):
        choice = SamplerChoice(solver="ddim", steps=str(k), grid=grid_name, clip_denoised=False)
        try:
            choice.check(SMALL_T)
        except ValueError as error:
            assert "largest K" in str(error), error
            refused.append(k)
            continue
        grid = solver_grid(choice, schedule)
        jaxpr = jax.make_jaxpr(lambda x: solvers.solve(  # noqa: B023
            solvers.ddim_step, process, _counted(GaussianX0(process)), x, grid, denoise_to_zero=True))(x_T)
        assert model_calls(jaxpr.jaxpr) == choice.nfe(), (grid_name, k)
    # Only DDIM's exact quadratic spacing has coinciding steps (for K > ~sqrt(0.8 T)).
    assert (refused != []) == (grid_name == "discrete_ddim_quadratic_truncated"), refused


def test_refused_k_names_the_largest_distinct_one():
    """At T = 1000 DDIM's quadratic spacing (up to 0.8 T) has distinct steps up to K = 28."""
    assert time_grids.discrete_grid(1000, 28, "ddim_quadratic_truncated").shape == (29,)
    with pytest.raises(ValueError, match="largest K whose 'ddim_quadratic_truncated' steps are distinct is 28"):
        time_grids.discrete_grid(1000, 49, "ddim_quadratic_truncated")
    assert time_grids.discrete_grid(1000, 999, "ddim_quadratic").shape == (1000,)  # raised to stay one apart


# ---------------------------------------------------------- 2: grids start at the top step


@functools.partial(jax.jit, static_argnames=("denoise_x0",))
def _sample(process, denoise_x0, x_T, grid):
    return solvers.solve(solvers.SOLVERS["dpmpp_2m"].step, process, denoise_x0, x_T, grid, denoise_to_zero=True)


def _gaussian_error(grid_name, num_steps):
    """max |x_0 - the exact map of x_T from t = 1| over 5 points of DPM-Solver++(2M) on the cosine
    chain (T = 1000) with the exact denoiser of N(MU, S^2): x_T is the state at the chain's top."""
    schedule = schedules.named_schedule("cosine", 1000)
    process = processes.discrete_process(schedule)
    choice = SamplerChoice(solver="dpmpp_2m", steps=str(num_steps), grid=grid_name)
    choice.check(1000)
    x_T = jnp.linspace(-2.0, 2.0, 5)[:, None]
    got = _sample(process, GaussianX0(process), x_T, solver_grid(choice, schedule))
    exact = exact_map(process, x_T, jnp.float32(1.0), jnp.float32(1.0 / 1000))
    return float(jnp.max(jnp.abs(got - exact)))


@pytest.mark.parametrize("grid_name", [name for name in GRID_NAMES if name not in TRUNCATED])
def test_every_grid_converges_on_gaussian_data(grid_name):
    """At K = 200 every grid but the truncated ones gives the exact map of Gaussian data to 1e-2
    (measured 9e-5 .. 2.2e-3, the largest on the Karras grid); before the fix ``discrete_ddim``
    (top step 800 at K = 200, 900 at K = 100) and ``discrete_ddim_quadratic`` (top step 800)
    were off by 0.03 .. 0.1 at K = 100 and did not converge."""
    assert _gaussian_error(grid_name, 200) < 1e-2


def test_the_truncated_grids_start_below_the_top_and_keep_their_error():
    """DDIM's exact spacings: the quadratic one starts at step 800 at every K, and its error does
    not fall with K (the floor the grid names warn about); ``ddim_truncated`` starts at K c."""
    assert float(time_grids.discrete_grid(1000, 9, "ddim_quadratic_truncated")[0]) == np.float32(0.801)
    assert float(time_grids.discrete_grid(1000, 10, "ddim_truncated")[0]) == np.float32(0.991)
    errors = [_gaussian_error("discrete_ddim_quadratic_truncated", k) for k in (14, 28)]
    assert min(errors) > 5e-2, errors


# ------------------------------------------------- 3: the last step onto sigma = 0 is first order

MULTISTEP = ("dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "dpmpp_2m_sde")


def _run(name, grid, lower_order_final, denoise_to_zero=False):
    process = processes.VPLinear()
    step = solvers.SOLVERS[name].bind({"lower_order_final": lower_order_final})
    x_T = jnp.linspace(-2.0, 2.0, 5)[:, None]
    return solvers.solve(step, process, GaussianX0(process), x_T, grid, key=jax.random.PRNGKey(3),
                         denoise_to_zero=denoise_to_zero)


@pytest.mark.parametrize("name", MULTISTEP)
def test_a_last_step_to_sigma_zero_is_first_order(name):
    """On a grid that ends at t = 0 (sigma = 0, lambda = +inf), with either ``lower_order_final``,
    the multistep solvers give finite samples (before the fix: inf/NaN without it): the step to
    sigma = 0 is x' = D, so without ``lower_order_final`` (whose lower orders depend on the steps
    left) and a corrector the result is the solve to the grid's last positive time followed by
    the final denoising."""
    process = processes.VPLinear()
    grid = jnp.concatenate([time_grids.uniform_log_snr(process, 9), jnp.zeros((1,), jnp.float32)])
    for lower_order_final in (False, True):
        to_zero = _run(name, grid, lower_order_final)
        assert bool(jnp.all(jnp.isfinite(to_zero))), (name, lower_order_final, to_zero)
        if not lower_order_final and not name.startswith("unipc"):  # UniPC corrects the state before its last step
            denoised = _run(name, grid[:-1], lower_order_final, denoise_to_zero=True)
            np.testing.assert_allclose(to_zero, denoised, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", MULTISTEP)
def test_a_last_step_to_positive_sigma_keeps_its_order(name):
    """The other end: on a grid that ends at sigma > 0 the fix changes nothing, so without
    ``lower_order_final`` the last step stays of higher order (it differs from the first-order
    last step of ``lower_order_final=True``)."""
    grid = time_grids.uniform_log_snr(processes.VPLinear(), 9)
    without, with_final = _run(name, grid, False), _run(name, grid, True)
    assert bool(jnp.all(jnp.isfinite(without))) and not np.allclose(without, with_final, rtol=1e-4, atol=1e-5)


# ------------------------------------------------ 4: lower_order_final, a validated solver option


def test_lower_order_final_is_a_validated_static_solver_option():
    """``config.sample.solver_options.lower_order_final`` reaches the multistep solvers' steps as a
    bound static (Python bool) option; a non-bool value is refused by ``check``."""
    settings = dict(solver="unipc_3", steps="10", method="ddim", eta=0.0, clip_denoised=True,
                    dynamic_threshold=0.0, guidance_weight=0.0, grid="karras", rho=7.0,
                    solver_options={"lower_order_final": False})
    choice = SamplerChoice.from_settings(settings)
    choice.check(1000)
    assert choice.solver_step().keywords["lower_order_final"] is False
    assert "lower_order_final" not in choice.traced_options()  # static: never a traced argument
    assert choice.settings()["solver_options"] == {"lower_order_final": False}
    bad = SamplerChoice.from_settings({**settings, "solver_options": {"lower_order_final": 0.5}})
    with pytest.raises(ValueError, match="lower_order_final is a bool"):
        bad.check(1000)


def closed_form_error(step, process, grid_fn, num_steps):
    """max |x at the grid's end - the exact map| over 5 points (float64 under enable_x64)."""
    grid = grid_fn(process, num_steps).astype(jnp.float64)
    z = jnp.linspace(-2.0, 2.0, 5, dtype=jnp.float64)[:, None]
    x_T = process.alpha(grid[0]) * MU + z * jnp.sqrt(process.alpha(grid[0]) ** 2 * S**2 + process.sigma(grid[0]) ** 2)
    got = jax.jit(lambda x, g: solvers.solve(step, process, GaussianX0(process), x, g))(x_T, grid)
    return float(jnp.max(jnp.abs(got - exact_map(process, x_T, grid[0], grid[-1]))))


def fitted_order(name, process_name, grid_name, step_counts, lower_order_final=True):
    """The log-log slope of the closed-form error against K (float64)."""
    solver = solvers.SOLVERS[name]
    options = {"lower_order_final": lower_order_final} if solver.static_options else {}
    with jax.enable_x64(True):
        process = processes.named_process(process_name)
        errors = [closed_form_error(solver.bind(options), process, time_grids.GRIDS[grid_name], k)
                  for k in step_counts]
    return -np.polyfit(np.log(step_counts), np.log(errors), 1)[0], errors


def test_unipc_3_order_depends_on_lower_order_final():
    """UniPC-3 on VP-linear with the Karras grid, K = 32..128: fourth order without the lower-order
    final steps, and pulled below that by them (their last DDIM step; measured 3.96 and 3.50)."""
    without, _ = fitted_order("unipc_3", "vp_linear", "karras", (32, 64, 128), lower_order_final=False)
    with_final, _ = fitted_order("unipc_3", "vp_linear", "karras", (32, 64, 128), lower_order_final=True)
    assert abs(without - 4.0) < 0.3 and with_final < without - 0.3, (without, with_final)


# ------------------------------------------------------------------ the measurements of the doc

ORDER_SETTINGS = [  # (solver, process, grid, K); each with lower_order_final True and False where it has it
    ("euler", "vp_linear", "uniform_log_snr", (16, 32, 64)),
    ("ddim", "vp_linear", "uniform_log_snr", (16, 32, 64)),
    ("heun", "vp_linear", "uniform_log_snr", (16, 32, 64)),
    ("dpmpp_2m", "vp_linear", "uniform_log_snr", (16, 32, 64)),
    ("dpmpp_2m", "edm", "karras", (16, 32, 64)),
    ("dpmpp_3m", "edm", "karras", (32, 64, 128)),
    ("dpmpp_3m", "vp_linear", "karras", (32, 64, 128)),
    ("unipc_2", "edm", "karras", (16, 32, 64)),
    ("unipc_2", "vp_linear", "karras", (32, 64, 128)),
    ("unipc_3", "edm", "karras", (32, 64, 128)),
    ("unipc_3", "vp_linear", "karras", (32, 64, 128)),
    ("unipc_3", "vp_linear", "karras", (50, 75, 100, 125)),
]


def main(argv):
    names = argv[0].split(",") if argv else None
    print("| solver | process | grid | K | lower_order_final | fitted order |")
    print("|---|---|---|---|---|---|")
    for name, process_name, grid_name, ks in ORDER_SETTINGS:
        if names and name not in names:
            continue
        finals = (True, False) if solvers.SOLVERS[name].static_options else (None,)
        for final in finals:
            order, _ = fitted_order(name, process_name, grid_name, ks, lower_order_final=final)
            label = "—" if final is None else str(final)
            print(f"| {name} | {process_name} | {grid_name} | {ks[0]}..{ks[-1]} | {label} | {order:.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
