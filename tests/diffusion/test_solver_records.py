"""``solvers.SOLVERS`` as records (issue 22, item 4): each ``Solver``'s NFE per step, stochastic flag
and options are those of its step function, and its option methods validate a user's options."""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion import processes, solvers, time_grids


def _parameters(step):
    function = step.func if isinstance(step, functools.partial) else step
    bound = step.keywords if isinstance(step, functools.partial) else {}
    return {k: p for k, p in inspect.signature(function).parameters.items() if k not in bound}


@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
def test_a_record_describes_its_step(name):
    """Its name is its key; its options are exactly the step's keyword parameters (but the static
    settings no config reaches: UniPC's variant and corrector, the ddpm variance, pc's corrector
    steps), with the step's own defaults; traced options are floats, static ones bools."""
    solver = solvers.SOLVERS[name]
    assert isinstance(solver, solvers.Solver) and solver.name == name
    keywords = {k: p.default for k, p in _parameters(solver.step).items() if p.kind is p.KEYWORD_ONLY}
    not_configurable = {"variant", "use_corrector", "variance", "corrector_steps"}
    assert {**solver.options, **solver.static_options} == {k: v for k, v in keywords.items()
                                                          if k not in not_configurable}
    assert all(isinstance(v, float) for v in solver.options.values())
    assert all(isinstance(v, bool) for v in solver.static_options.values())


@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
def test_nfe_per_step_and_stochastic_are_measured(name):
    """``nfe_per_step`` denoiser calls in the traced step (Heun: the Euler step and the correction);
    ``stochastic`` iff the result depends on ``solve``'s key (EDM's sampler with S_churn > 0: at its
    default 0 it is Heun)."""
    solver = solvers.SOLVERS[name]
    process = processes.VPLinear()
    grid = time_grids.uniform_log_snr(process, 3)
    calls = []

    def denoise_x0(x, t):
        calls.append(t)
        return 0.5 * x

    def run(key):
        options = {"s_churn": 40.0} if name == "edm_stochastic" else {}
        return solvers.solve(solver.bind(options), process, denoise_x0, jnp.ones((2, 3)), grid, key=key)

    first = jax.jit(run)(jax.random.PRNGKey(0))
    assert len(calls) == solver.nfe_per_step
    second = jax.jit(run)(jax.random.PRNGKey(1))
    assert (not np.allclose(first, second)) == solver.stochastic


def test_option_defaults_are_the_config_defaults():
    """One mapping for all solvers (``config.sample.solver_options``): the stochastic options as
    before the records, and the static ``lower_order_final``."""
    assert solvers.option_defaults() == {
        "eta": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0, "snr": 0.16,
        "lower_order_final": True,
    }


def test_complete_validates_and_fills_in():
    solver = solvers.SOLVERS["dpmpp_2m_sde"]
    assert solver.complete({"eta": 0}) == {"eta": 0.0, "s_noise": 1.0, "lower_order_final": True}
    assert solver.traced({}) == {"eta": 1.0, "s_noise": 1.0} and solver.static({}) == {"lower_order_final": True}
    with pytest.raises(ValueError, match=r"takes no options \['s_churn'\]"):
        solver.complete({"s_churn": 1.0})
    with pytest.raises(ValueError, match="lower_order_final is a bool"):
        solver.complete({"lower_order_final": "no"})
    step = solver.bind({"eta": 0.0, "lower_order_final": False})
    assert step.func is solver.step and step.keywords == {"eta": 0.0, "s_noise": 1.0, "lower_order_final": False}


def test_a_record_refuses_an_option_its_step_lacks():
    with pytest.raises(ValueError, match=r"its step takes no options \['eta'\]"):
        solvers.Solver("bad", solvers.ddim_step, 1, False, options={"eta": 0.0})
