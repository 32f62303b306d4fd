"""How ``diffjax.runtime.flops`` (FLOPs from the lowered HLO) agrees with XLA's CPU cost analysis.

    python bench/flops_check.py                   # DDPM CIFAR-10 UNet train step, batch 8 (~1-2 min on 2 cores)
    python bench/flops_check.py --quick           # tiny UNet, batch 8
    python bench/flops_check.py --batch 128       # count only (no compile): the accelerator benchmark's step

For diffjax's real train step (``make_train_step``, as ``bench/jax_worker.py train`` builds
it) it reports

* the new count of the lowered HLO, with ``while`` loops counted once (XLA's rule) and at
  their trip counts (on CPU JAX lowers threefry's 5 rounds as a rolled loop; GPU/TPU unroll
  it), split into convolutions, dots, elementwise and reductions;
* XLA's cost analysis of the same lowered module (``Lowered.cost_analysis()``, CPU only),
  and of the compiled module (``Compiled.cost_analysis()``, what ``bench/jax_worker.py``
  reported so far), and the new count of the compiled module's text;
* the eval forward pass at the same batch.

Writes ``--json`` (default ``bench/flops_results.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cases as cases_lib  # noqa: E402
from common import pin_threads, write_result  # noqa: E402


def _case(quick: bool, batch: int | None) -> dict:
    case = dict(cases_lib.cases(quick)["large"])
    case["overrides"] = dict(case["overrides"])
    if batch:
        case["overrides"]["train.batch_size"] = batch
        case["label"] = case["label"].replace("batch 8", f"batch {batch}")
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="count only; skip XLA's compiled cost analysis")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", default=os.path.join(HERE, "flops_results.json"))
    args = parser.parse_args()
    pin_threads(args.threads)
    from common import use_case_fusions

    case = _case(args.quick, args.batch)
    use_case_fusions(json.dumps(case))
    import jax
    import jax.numpy as jnp
    from jax_worker import _recipe

    from diffjax.models.denoiser import make_denoise_fn
    from diffjax.runtime.flops import count_hlo_text, lowered_flops, xla_cost_flops
    from diffjax.runtime.mesh import data_sharding, make_mesh
    from diffjax.train.loop import abstract_train_state
    from diffjax.train.optim import make_optimizer
    from diffjax.train.step import make_train_step

    config, recipe = _recipe(case)
    mesh = make_mesh(jax.devices()[:1])
    optimizer = make_optimizer(config.train)
    state = abstract_train_state(recipe, optimizer, mesh)
    b = config.train.batch_size
    batch = {
        "image": jax.ShapeDtypeStruct((b, *recipe.input_shape), jnp.float32, sharding=data_sharding(mesh)),
        "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data_sharding(mesh)),
    }
    result: dict = {"case": case, "batch": b, "jax": jax.__version__, "backend": jax.default_backend()}
    step = make_train_step(recipe, optimizer, config.train.ema_decay, mesh)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    result["lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    once = lowered_flops(lowered)
    trips = lowered_flops(lowered, while_loops="trip_count")
    result["count_s"] = time.perf_counter() - start
    result["count_once"] = once.as_dict()
    result["count_trip_count"] = trips.as_dict()
    if jax.default_backend() == "cpu":
        result["xla_lowered"] = xla_cost_flops(lowered)
    if not args.no_compile:
        start = time.perf_counter()
        compiled = lowered.compile()
        result["compile_s"] = time.perf_counter() - start
        result["xla_compiled"] = xla_cost_flops(compiled)
        result["count_of_compiled_text"] = count_hlo_text(compiled.as_text()).as_dict()

    denoise = make_denoise_fn(recipe.model, num_timesteps=1000, rescale_timesteps=recipe.family.rescale_timesteps)
    x = jax.ShapeDtypeStruct((b, *recipe.input_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((b,), jnp.int32)
    fwd = jax.jit(lambda p, x, t: denoise(p, x, t, None)).lower(state.params, x, t)
    result["forward"] = lowered_flops(fwd).as_dict()
    if jax.default_backend() == "cpu":
        result["forward_xla_lowered"] = xla_cost_flops(fwd)
    write_result(args.json, result)

    g = 1e9
    print(f"{case['label']}: lower {result['lower_s']:.1f} s, count {result['count_s']:.1f} s")
    print(f"  new count (while once)      {once.total / g:10.3f} GFLOP  conv {once.conv / g:.3f}  dot {once.dot / g:.3f}  "
          f"elementwise {once.elementwise / g:.3f}  reduce {once.reduce / g:.3f}  other {once.other / g:.3f}")
    print(f"  new count (trip counts)     {trips.total / g:10.3f} GFLOP  (elementwise {trips.elementwise / g:.3f})")
    if "xla_lowered" in result:
        print(f"  XLA Lowered.cost_analysis   {result['xla_lowered'] / g:10.3f} GFLOP  "
              f"(new/XLA - 1 = {once.total / result['xla_lowered'] - 1:+.2e})")
    if "xla_compiled" in result:
        cc = result["count_of_compiled_text"]
        print(f"  XLA Compiled.cost_analysis  {result['xla_compiled'] / g:10.3f} GFLOP  "
              f"(new lowered/XLA compiled - 1 = {once.total / result['xla_compiled'] - 1:+.3%}; trip counts "
              f"{trips.total / result['xla_compiled'] - 1:+.3%})  compile {result['compile_s']:.1f} s")
        print(f"  new count of compiled text  {cc['total'] / g:10.3f} GFLOP  conv {cc['conv'] / g:.3f}  dot {cc['dot'] / g:.3f}  "
              f"elementwise {cc['elementwise'] / g:.3f}")
    print(f"  eval forward, batch {b}      {result['forward']['total'] / g:10.3f} GFLOP "
          f"(matmul {result['forward']['matmul'] / g:.3f})")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
