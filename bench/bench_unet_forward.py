"""Benchmark: one forward and one forward+backward of a named UNet preset.

Usage::

    python bench/bench_unet_forward.py                       # ddpm_cifar10, batch 8, float32
    python bench/bench_unet_forward.py --config iddpm_cifar10 --out-channels 6 --batch 16 --dtype bfloat16

Reports compile time, the median and minimum wall time of ``--reps`` runs
after one warm-up (the minimum is the better figure on a shared machine), XLA's cost analysis (FLOPs), XLA's memory analysis of each program
(arguments / outputs / temporaries: the program's peak device memory is about
their sum) and the process's peak resident set size. Forward is eval mode;
forward+backward is the gradient of an MSE-to-noise loss w.r.t. the params in
train mode (dropout on), i.e. the model part of a training step without the
optimiser.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import models


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux


def _time(fn, args, reps: int) -> list[float]:
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def _program_stats(compiled) -> dict:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mib = 1024.0**2
    stats = {"gflop": float(cost.get("flops", float("nan"))) / 1e9}
    if mem is not None:
        stats.update(
            argument_mib=mem.argument_size_in_bytes / mib,
            output_mib=mem.output_size_in_bytes / mib,
            temp_mib=mem.temp_size_in_bytes / mib,
            peak_estimate_mib=(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / mib,
        )
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ddpm_cifar10", choices=sorted(models.IMAGE_SHAPES),
                        help="a UNet preset of diffjax.models.PRESETS")
    parser.add_argument("--out-channels", type=int, default=0,
                        help="output channels; 0: the image's C (2C for a learned variance, as improved DDPM)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    shape = models.get_image_shape(args.config)
    net = models.make_unet(args.config, out_channels=args.out_channels or None, dtype=jnp.dtype(args.dtype))
    num_timesteps = 1000
    print(f"devices: {jax.devices()}  config={args.config} batch={args.batch} image={shape} dtype={args.dtype}")

    start = time.perf_counter()
    params = jax.jit(lambda k: models.init_params(net, k, shape))(jax.random.key(0))
    jax.block_until_ready(params)
    init_s = time.perf_counter() - start
    print(f"params: {models.count_params(params):,}  jit(init) incl. compile: {init_s:.1f} s")

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, *shape)), jnp.float32)
    noise = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    t = jnp.asarray(rng.integers(0, num_timesteps, args.batch), jnp.int32)
    key = jax.random.key(1)
    denoise = models.make_denoise_fn(net, num_timesteps=num_timesteps)

    def forward(params, x, t):
        return denoise(params, x, t, None)

    def loss(params, x, t, noise, key):
        train_denoise = models.make_denoise_fn(net, num_timesteps=num_timesteps, train=True, dropout_key=key)
        out = train_denoise(params, x, t, None)
        return jnp.mean(jnp.square(out[..., : shape[-1]] - noise))

    grad_fn = jax.value_and_grad(loss)
    results = {"config": args.config, "batch": args.batch, "dtype": args.dtype, "init_s": init_s}
    for name, fn, fn_args in [
        ("forward", forward, (params, x, t)),
        ("forward_backward", grad_fn, (params, x, t, noise, key)),
    ]:
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*fn_args).compile()
        compile_s = time.perf_counter() - start
        times = _time(compiled, fn_args, args.reps)
        median_s, min_s = statistics.median(times), min(times)
        stats = _program_stats(compiled)
        stats.update(compile_s=compile_s, median_s=median_s, min_s=min_s, times_s=[round(s, 3) for s in times])
        stats["gflop_per_s"] = stats["gflop"] / min_s
        stats["peak_rss_mib_after"] = _peak_rss_mib()
        results[name] = stats
        print(
            f"{name:>16}: {median_s:.3f} s median, {min_s:.3f} s min of {args.reps} (compile {compile_s:.1f} s), "
            f"{stats['gflop']:.1f} GFLOP, {stats['gflop_per_s']:.1f} GFLOP/s at min, "
            f"XLA peak estimate {stats.get('peak_estimate_mib', float('nan')):.0f} MiB "
            f"(temp {stats.get('temp_mib', float('nan')):.0f} MiB), process peak RSS {stats['peak_rss_mib_after']:.0f} MiB"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
