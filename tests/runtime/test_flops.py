"""diffjax.runtime.flops: FLOPs from the lowered HLO against XLA's own CPU cost analysis.

The count follows ``HloCostAnalysis``'s rules on the module JAX lowers to, so on CPU it must
equal ``Lowered.cost_analysis()`` exactly; against the compiled module's
``Compiled.cost_analysis()`` the convolutions and dots are the same and only the
elementwise work differs (XLA's fusion recomputes some producers), so the totals agree
within 2% when convolutions dominate. The DDPM CIFAR-10 UNet's numbers are in
docs/performance.md (``python bench/flops_check.py``); here, the digits UNet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from diffjax.runtime.flops import count_hlo_text, jit_flops, lowered_flops, xla_cost_flops

DN = ("NHWC", "HWIO", "NHWC")
X = jnp.ones((2, 9, 9, 4))
K = jnp.ones((3, 3, 4, 8))


def _conv(x, k, **kw):
    return lax.conv_general_dilated(x, k, dimension_numbers=DN, **kw)


CASES = {
    # 2 x 8 out channels x 4 in x 2 images x (valid taps per spatial dim: 3x9 - 2 = 25)^2
    "conv_same": (lambda: _conv(X, K, window_strides=(1, 1), padding="SAME"), 2 * 8 * 4 * 2 * 25 * 25),
    "conv_stride2": (lambda: _conv(X, K, window_strides=(2, 2), padding=((1, 1), (1, 1))), None),
    "conv_dilated": (lambda: _conv(X, K, window_strides=(1, 1), padding=((1, 2), (0, 1)), lhs_dilation=(2, 2),
                                   rhs_dilation=(1, 2)), None),
    "conv_groups": (lambda: _conv(X, jnp.ones((3, 3, 2, 8)), window_strides=(1, 1), padding="SAME",
                                  feature_group_count=2), None),
    "conv_grads": (lambda: jax.grad(lambda a, b: _conv(a, b, window_strides=(2, 2), padding=((0, 1), (0, 1))).sum(),
                                    argnums=(0, 1))(X, K), None),
    "dot_batched": (lambda: jnp.einsum("bij,bjk->bik", jnp.ones((3, 5, 7)), jnp.ones((3, 7, 11))), 2 * 3 * 5 * 11 * 7),
    "softmax_attention": (lambda: jax.nn.dot_product_attention(*[jnp.ones((2, 16, 2, 8))] * 3), None),
    "reduce_and_select": (lambda: jnp.where(X > 0, X, 0.0).sum(axis=(1, 2)) + jnp.argmax(X, axis=-1).sum(), None),
    "cond": (lambda: lax.cond(X[0, 0, 0, 0] > 0, lambda: X * 2.0, lambda: X + 1.0 + X), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ops_match_xla_lowered_cost_analysis(name):
    fn, expected = CASES[name]
    lowered = jax.jit(fn).lower()
    count = lowered_flops(lowered)
    assert count.total == xla_cost_flops(lowered)
    assert not count.unknown_ops
    if expected is not None:
        assert count.matmul == expected


def test_while_loops_once_or_by_trip_count():
    def f(x):
        return lax.fori_loop(0, 5, lambda i, c: c * 2.0, x)

    x = jnp.ones((1000,))
    once = jit_flops(f, x)
    trips = jit_flops(f, x, while_loops="trip_count")
    assert once.total == xla_cost_flops(jax.jit(f).lower(x))  # XLA counts a loop body once
    assert [w["trip_count"] for w in trips.while_loops] == [5]
    assert trips.total == 5 * once.total


def test_custom_calls_are_listed_not_dropped():
    text = """HloModule m
ENTRY main {
  p = f32[2,4]{1,0} parameter(0)
  ROOT c = f32[2,4]{1,0} custom-call(p), custom_call_target="my_kernel"
}
"""
    count = count_hlo_text(text)
    assert count.total == 0 and count.custom_calls == {"my_kernel": 1}


@pytest.fixture(scope="module")
def tiny_step():
    """The digits UNet's (701,345 params, 8x8x1) real train step (Adam, clip, EMA) at batch 4,
    lowered from shapes."""
    from diffjax.run.experiments import build_recipe, load_experiment
    from diffjax.runtime.mesh import data_sharding, make_mesh
    from diffjax.train.loop import abstract_train_state
    from diffjax.train.optim import make_optimizer
    from diffjax.train.step import make_train_step

    experiment = load_experiment("digits_ddpm")
    config = experiment.get_config(None)
    config.train.batch_size = 4
    config.lock()
    recipe = build_recipe(experiment, config)
    mesh = make_mesh(jax.devices()[:1])
    optimizer = make_optimizer(config.train)
    state = abstract_train_state(recipe, optimizer, mesh)
    batch = {
        "image": jax.ShapeDtypeStruct((4, *recipe.input_shape), jnp.float32, sharding=data_sharding(mesh)),
        "label": jax.ShapeDtypeStruct((4,), jnp.int32, sharding=data_sharding(mesh)),
    }
    step = make_train_step(recipe, optimizer, config.train.ema_decay, mesh)
    return recipe, state, step.lower(state, batch)


@pytest.mark.slow
def test_train_step_equals_xla_lowered_cost_analysis(tiny_step):
    _, _, lowered = tiny_step
    count = lowered_flops(lowered)
    assert count.total == pytest.approx(xla_cost_flops(lowered), rel=1e-5)  # XLA sums in float32
    assert count.conv > 0.5 * count.total  # the convolutions are counted (XLA:GPU's analysis misses them)
    assert not count.unknown_ops
    assert set(count.custom_calls) <= {"xla.sdy.FuncResultSharding", "Sharding"}  # annotations, no compute
    trips = lowered_flops(lowered, while_loops="trip_count")
    assert trips.matmul == count.matmul and trips.total > count.total  # threefry's rolled rounds


@pytest.mark.slow
def test_forward_backward_against_xla_compiled_cost_analysis(tiny_step):
    """Compiled: the digits UNet's loss gradient (no RNG loops).

    Counting the compiled module's text with the same rules gives XLA's compiled number, and
    its convolutions and dots are exactly those of the lowered module. The totals differ
    only by elementwise work that XLA's fusion recomputes in several consumers: 2.7% on
    this 32-channel UNet (measured), 7-9% on the 8-channel ``tiny`` preset, and -0.28% on
    the DDPM CIFAR-10 train step at batch 8 (docs/performance.md, ``bench/flops_check.py``,
    too slow to compile here), where the issue's 2% criterion is measured.
    """
    from diffjax.models.denoiser import make_denoise_fn

    recipe, state, _ = tiny_step
    denoise = make_denoise_fn(recipe.model, num_timesteps=1000, rescale_timesteps=recipe.family.rescale_timesteps)
    x = jax.ShapeDtypeStruct((4, *recipe.input_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((4,), jnp.int32)

    def loss_grad(params, x, t):
        return jax.grad(lambda p: jnp.mean(denoise(p, x, t, None) ** 2))(params)

    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state.params)
    lowered = jax.jit(loss_grad).lower(params, x, t)
    count = lowered_flops(lowered)
    compiled = lowered.compile()
    xla = xla_cost_flops(compiled)
    of_compiled = count_hlo_text(compiled.as_text())
    assert of_compiled.total == pytest.approx(xla, rel=1e-4)
    assert of_compiled.conv == count.conv and of_compiled.dot == count.dot
    assert of_compiled.elementwise > count.elementwise  # the recomputed work
    assert abs(count.total / xla - 1) < 0.04
