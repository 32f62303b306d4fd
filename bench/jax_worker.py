"""diffjax side of the benchmarks; run by ``run_benchmarks.py`` in fresh processes.

    python bench/jax_worker.py train   --case JSON --threads N --out FILE [--reps R] [--sample-steps K]
    python bench/jax_worker.py compile --case JSON --threads N --out FILE --cache-dir DIR
    python bench/jax_worker.py pipeline --threads N --out FILE [--batch B] [--num-batches M]

``train`` times diffjax's real compiled train step (``make_train_step`` over a one-device
mesh, state donated) on synthetic batches, reads XLA's cost and memory analyses of it,
and, with ``--sample-steps``, times a K-step DDIM run of ``diffjax.diffusion.samplers.sample``
inside one jit against one jitted forward pass. ``compile`` lowers and compiles the init
function and the train step from abstract shapes, as a fresh launch does, with JAX's
persistent compilation cache in ``--cache-dir`` (run it twice for cold and warm).
``pipeline`` times ``diffjax.data.make_train_iterator``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import build_config  # noqa: E402
from common import peak_rss_mib, pin_threads, summarize, time_reps, use_case_fusions, write_result  # noqa: E402

# NumPy, JAX and diffjax are imported inside the functions: pin_threads (in main) must set
# the thread counts before OpenBLAS and XLA start, which they do when first imported.


def _recipe(case):
    import numpy as np

    from diffjax.run.experiments import build_recipe

    experiment, config = build_config(case)
    recipe = build_recipe(experiment, config)
    batch_size = config.train.batch_size

    def synthetic_batches(start_step: int):
        rng = np.random.default_rng(start_step)
        while True:
            yield {
                "image": rng.uniform(-1.0, 1.0, (batch_size, *recipe.input_shape)).astype(np.float32),
                "label": np.zeros((batch_size,), np.int32),
            }

    return config, dataclasses.replace(recipe, train_batches=synthetic_batches)


def _hyper(config) -> dict:
    """What the torch reference must match."""
    d, t = config.diffusion, config.train
    return dict(
        batch_size=t.batch_size, lr=t.lr, adam_b1=t.adam_b1, adam_b2=t.adam_b2, adam_eps=t.adam_eps,
        weight_decay=t.weight_decay, grad_clip=t.grad_clip, ema_decay=t.ema_decay, schedule=d.schedule,
        timesteps=d.timesteps, mean_type=d.prediction, objective=d.objective, dropout=config.model.dropout,
    )


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out = {"flops": float(cost.get("flops", float("nan"))),
           "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
           "transcendentals": float(cost.get("transcendentals", float("nan")))}
    mem = compiled.memory_analysis()
    if mem is not None:
        mib = 1024.0**2
        out.update(
            argument_mib=mem.argument_size_in_bytes / mib,
            output_mib=mem.output_size_in_bytes / mib,
            alias_mib=mem.alias_size_in_bytes / mib,
            temp_mib=mem.temp_size_in_bytes / mib,
            generated_code_mib=mem.generated_code_size_in_bytes / mib,
        )
        # Donated outputs reuse their argument buffers (alias), so they are not counted twice.
        out["peak_estimate_mib"] = out["argument_mib"] + out["output_mib"] - out["alias_mib"] + out["temp_mib"]
    return out


def _matmul_gflops(n: int, reps: int) -> dict:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    times = time_reps(lambda: f(a, b).block_until_ready(), reps, warmup=2)
    stats = summarize(times)
    stats.update(n=n, gflop_per_s=2.0 * n**3 / stats["median_s"] / 1e9, gflop_per_s_best=2.0 * n**3 / stats["min_s"] / 1e9)
    return stats


def task_train(args) -> dict:
    import jax
    import jax.numpy as jnp

    from diffjax.diffusion.samplers import sample
    from diffjax.diffusion.schedules import respace
    from diffjax.models.denoiser import count_params, make_denoise_fn
    from diffjax.runtime.mesh import global_batch, make_mesh, replicated_sharding
    from diffjax.train.loop import make_init_fn
    from diffjax.train.optim import make_optimizer
    from diffjax.train.step import make_train_step

    case = json.loads(args.case)
    config, recipe = _recipe(case)
    result = {"case": case, "hyper": _hyper(config), "devices": [str(d) for d in jax.devices()]}
    mesh = make_mesh(jax.devices()[:1])

    optimizer = make_optimizer(config.train)
    start = time.perf_counter()
    init = jax.jit(make_init_fn(recipe, optimizer), out_shardings=replicated_sharding(mesh))
    state = jax.block_until_ready(init(jax.random.PRNGKey(config.train.seed)))
    result["init_s"] = time.perf_counter() - start
    result["params"] = count_params(state.params)

    step_fn = make_train_step(recipe, optimizer, config.train.ema_decay, mesh)
    batches = recipe.train_batches(0)
    device_batches = [global_batch(mesh, next(batches)) for _ in range(4)]

    start = time.perf_counter()
    lowered = step_fn.lower(state, device_batches[0])
    result["lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    result["compile_s"] = time.perf_counter() - start
    result["cost"] = _cost(compiled)

    counter = {"i": 0, "state": state}

    def one_step():
        batch = device_batches[counter["i"] % len(device_batches)]
        counter["state"], metrics = compiled(counter["state"], batch)
        jax.block_until_ready((counter["state"], metrics))
        counter["i"] += 1

    times = time_reps(one_step, args.reps, warmup=args.warmup)
    result["step"] = summarize(times)
    result["step"]["img_per_s"] = config.train.batch_size / result["step"]["median_s"]
    result["cost"]["gflop_per_s"] = result["cost"]["flops"] / 1e9 / result["step"]["median_s"]

    # Back to back without a host sync per step, as the training loop runs.
    n = max(2, args.reps)
    start = time.perf_counter()
    s = counter["state"]
    for i in range(n):
        s, _ = compiled(s, device_batches[i % len(device_batches)])
    jax.block_until_ready(s)
    result["step_unsynced_mean_s"] = (time.perf_counter() - start) / n
    counter["state"] = s

    if args.matmul:
        result["matmul"] = _matmul_gflops(args.matmul, reps=max(3, args.reps))

    if args.sample_steps:
        schedule, _ = respace(recipe.family.schedule, f"ddim{args.sample_steps}")
        denoise = make_denoise_fn(
            recipe.model, num_timesteps=schedule.original_num_timesteps, rescale_timesteps=recipe.family.rescale_timesteps
        )
        shape = (args.sample_batch, *recipe.input_shape)
        params = counter["state"].ema_params

        def draw(p, key):
            return sample(denoise, p, schedule, recipe.family.spec, key, shape, method="ddim", eta=0.0)

        start = time.perf_counter()
        draw_c = jax.jit(draw).lower(params, jax.random.key(0)).compile()
        sample_compile_s = time.perf_counter() - start
        x = jax.random.normal(jax.random.key(2), shape, jnp.float32)
        t = jnp.full((args.sample_batch,), 500, jnp.int32)
        start = time.perf_counter()
        fwd_c = jax.jit(lambda p, x, t: denoise(p, x, t, None)).lower(params, x, t).compile()
        forward_compile_s = time.perf_counter() - start
        fwd_times = time_reps(lambda: fwd_c(params, x, t).block_until_ready(), args.fwd_reps, warmup=2)
        sample_times = time_reps(lambda: draw_c(params, jax.random.key(1)).block_until_ready(), args.sample_reps, warmup=1)
        forward = summarize(fwd_times)
        run = summarize(sample_times)
        result["sampling"] = dict(
            steps=args.sample_steps, batch=args.sample_batch, forward=forward, run=run,
            forward_compile_s=forward_compile_s, sample_compile_s=sample_compile_s,
            forward_gflop=_cost(fwd_c)["flops"] / 1e9,
            overhead=run["median_s"] / (args.sample_steps * forward["median_s"]) - 1.0,
        )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def task_compile(args) -> dict:
    """A fresh launch's compile work: jit(init) and the train step, from abstract shapes."""
    start_all = time.perf_counter()
    import jax

    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", args.min_compile_time)
    import jax.numpy as jnp

    from diffjax.runtime.mesh import data_sharding, make_mesh, replicated_sharding
    from diffjax.train.loop import abstract_train_state, make_init_fn
    from diffjax.train.optim import make_optimizer
    from diffjax.train.step import make_train_step

    case = json.loads(args.case)
    config, recipe = _recipe(case)
    cache_files_before = sum(len(files) for _, _, files in os.walk(args.cache_dir))
    mesh = make_mesh(jax.devices()[:1])
    result = {"case": case, "import_and_build_s": time.perf_counter() - start_all}

    optimizer = make_optimizer(config.train)
    start = time.perf_counter()
    init = jax.jit(make_init_fn(recipe, optimizer), out_shardings=replicated_sharding(mesh))
    init.lower(jax.random.PRNGKey(0)).compile()
    result["init_compile_s"] = time.perf_counter() - start

    abstract_state = abstract_train_state(recipe, optimizer, mesh)
    b = config.train.batch_size
    abstract_batch = {
        "image": jax.ShapeDtypeStruct((b, *recipe.input_shape), jnp.float32, sharding=data_sharding(mesh)),
        "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data_sharding(mesh)),
    }
    step_fn = make_train_step(recipe, optimizer, config.train.ema_decay, mesh)
    start = time.perf_counter()
    lowered = step_fn.lower(abstract_state, abstract_batch)
    result["step_lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    result["step_compile_s"] = time.perf_counter() - start
    result["total_s"] = time.perf_counter() - start_all
    result["cache_files_before"] = cache_files_before
    result["cache_files_after"] = sum(len(files) for _, _, files in os.walk(args.cache_dir))
    return result


def task_pipeline(args) -> dict:
    import numpy as np

    from diffjax.data import make_train_iterator

    result = {"dataset": "digits", "batch": args.batch}
    for name, in_memory in (("in_memory", True), ("streaming", False)):
        start = time.perf_counter()
        it = make_train_iterator("digits", global_batch_size=args.batch, seed=0, in_memory=in_memory)
        first = next(it)
        setup_s = time.perf_counter() - start
        assert first["image"].shape == (args.batch, 8, 8, 1) and first["image"].dtype == np.float32
        count = args.num_batches if in_memory else max(10, args.num_batches // 4)
        times, batch_times = [], []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(count):
                before = time.perf_counter()
                next(it)
                batch_times.append(time.perf_counter() - before)
            times.append((time.perf_counter() - start) / count)
        stats = summarize(times)
        stats.update(setup_s=setup_s, batches_per_rep=count, batches_per_s=1.0 / stats["median_s"],
                     steps_per_epoch=it.steps_per_epoch,
                     # Within an epoch (the median batch) and the slowest batch (an epoch start).
                     median_batch_s=float(np.median(batch_times)), max_batch_s=float(np.max(batch_times)))
        result[name] = stats
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["train", "compile", "pipeline"])
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--case")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--matmul", type=int, default=0, help="also time an NxN float32 matmul")
    parser.add_argument("--sample-steps", type=int, default=0)
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--sample-reps", type=int, default=3)
    parser.add_argument("--fwd-reps", type=int, default=5)
    parser.add_argument("--cache-dir")
    parser.add_argument("--min-compile-time", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-batches", type=int, default=200)
    parser.add_argument("--xla-default", action="store_true", help="XLA:CPU's default fusions, not launch.py's")
    args = parser.parse_args()
    threads = pin_threads(args.threads)
    fusions = "xla_default" if args.xla_default else use_case_fusions(args.case)  # as launch.py runs
    result = {"compile": task_compile, "train": task_train, "pipeline": task_pipeline}[args.task](args)
    import jax

    result["threads"] = threads
    result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    result["xla_cpu_ynn_fusions"] = fusions
    result["jax_backend"] = jax.default_backend()
    write_result(args.out, result)


if __name__ == "__main__":
    main()
