"""How fast the solvers of ``diffjax.diffusion.solvers`` are, on this CPU, in one invocation.

    pip install -e ".[bench]"                # torch + diffusers, for part 2 only
    python bench/bench_solvers.py            # full run, about 4-5 minutes on 2 quiet cores
    python bench/bench_solvers.py --quick    # tiny shapes, 2-4 NFE: checks that the script works
    python bench/bench_solvers.py --part 1   # only the solver overhead (no torch needed)

Every measurement runs in a fresh process pinned to the same ``--threads`` CPUs (as
``run_benchmarks.py``'s workers, with each experiment's XLA:CPU fusions as ``launch.py`` sets
them), and every ratio is against a reference measured in the same run. Every timed run
follows an untimed run of the same compiled program (see ``SETTINGS``).

1. Solver overhead. For the digits UNet (``experiments/digits_ddpm.py``, batch 1000, 8x8x1)
   and the DDPM CIFAR-10 UNet (``experiments/ddpm_cifar10.py``, batch 8, 32x32x3):

   * the time of one jitted forward pass of the network (median of 5, after warm-up);
   * for each solver (ddim, dpmpp_2m, heun, unipc_3; ``--solvers``, those registered in
     ``solvers.SOLVERS``) at K = NFE / (its NFE per step) steps of a uniform-log-SNR grid
     (``--nfe``, default 10: heun takes 5 steps), the time of a jitted ``solvers.solve`` with
     the real network (``solvers.x0_predictor``; no clipping, no final denoising: exactly NFE
     network calls) and **overhead = solve time / (NFE x forward time) - 1**, the solver's own
     share (its arithmetic, the scan, the x0 conversion); the issue's target is <= 2%;
   * the same ``solve`` with a trivial denoiser D(x, t) = 0.5 x at the same shapes, which
     times the solver's arithmetic and the scan alone, printed as a fraction of NFE x forward.

   The programs are compiled ahead of time (``jit(...).lower(...).compile()``, compile time
   printed, not counted); the solves take the params as an argument, as
   ``runtime.sampling.make_sampler``'s compiled sampler does.

2. DPM-Solver++(2M) at 20 NFE against diffusers, DDPM CIFAR-10 UNet, batch 8, both on CPU
   with the same thread count. diffjax: one jit of x_T ~ N(0, I) then ``solvers.solve`` with
   ``dpmpp_2m``, composed as ``make_sampler`` composes it for ``SamplerChoice(solver="dpmpp_2m",
   steps="19", grid="discrete_even", clip_denoised=False)``: 19 steps then the final denoising
   to x_0, 20 NFE (without make_sampler's host side: the device_put of the key, the copy of
   the samples to numpy). diffusers: ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2,
   ``lower_order_final``, the experiment's linear betas, 20 steps, the last one to sigma = 0:
   20 NFE) driving ``UNet2DModel`` with the matched architecture (``cases.DDPM_CIFAR10_TORCH``,
   the same parameter count, checked) in eval mode under ``torch.inference_mode``, the loop
   of diffusers' pipelines written out. Printed: seconds per sample of each and their ratio,
   the ratio of one forward pass, and each framework's loop overhead over 20 x its own
   forward pass. Without torch/diffusers part 2 says it is skipped and part 1 still runs.

``--quick`` swaps in the digits UNet at batch 16 and the 45k-parameter ``tiny`` UNet (8x8x3)
at batch 2 (part 2: tiny UNet, 4 NFE): it checks that the script works, its times mean
nothing. The params are random (kernels N(0, 1/fan_in), biases 0, norm scales 1): the times
do not depend on their values, and no init program has to be compiled. Timings on a busy
machine are meaningless: the script reports the load average and how many cores other
processes used during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cases as cases_lib  # noqa: E402
from common import REPO, peak_rss_mib, pin_threads, summarize, time_reps, use_case_fusions, write_result  # noqa: E402

SOLVER_NAMES = ("ddim", "dpmpp_2m", "heun", "unipc_3")
TARGET_OVERHEAD = 0.02

DIGITS_CASE = dict(label="digits UNet", experiment="digits_ddpm", overrides={}, torch_unet=cases_lib.DIGITS_TORCH)
CIFAR_CASE = dict(label="DDPM CIFAR-10 UNet", experiment="ddpm_cifar10", overrides={},
                  torch_unet=cases_lib.DDPM_CIFAR10_TORCH)
TINY_CASE = dict(label="tiny UNet (quick)", experiment="ddpm_cifar10", model_preset="tiny",
                 overrides={"data.image_size": 8}, torch_unet=cases_lib.TINY_TORCH)

# How much work each mode does. models: part 1's networks by name; nfe: network evaluations
# per solve (heun: nfe / 2 steps). Every timed run follows an untimed one of the same compiled
# program: the first call of an XLA:CPU executable carries a one-off cost (measured ~0.3-0.4 s
# on the CIFAR-10 UNet with YNNPACK fusions, 4% of a 10-NFE solve).
SETTINGS = {
    "full": dict(
        models={"digits": dict(case=DIGITS_CASE, batch=1000), "cifar10": dict(case=CIFAR_CASE, batch=8)},
        nfe=10, fwd_reps=5, fwd_warmup=1, solve_reps=1, solve_warmup=1, trivial_reps=10,
        vs_diffusers=dict(case=CIFAR_CASE, batch=8, nfe=20, reps=1, warmup=1),
    ),
    "quick": dict(
        models={"digits": dict(case=dict(DIGITS_CASE, label="digits UNet (quick)"), batch=16),
                "cifar10": dict(case=TINY_CASE, batch=2)},
        nfe=2, fwd_reps=2, fwd_warmup=1, solve_reps=1, solve_warmup=1, trivial_reps=2,
        vs_diffusers=dict(case=TINY_CASE, batch=2, nfe=4, reps=1, warmup=1),
    ),
}


# ---------------------------------------------------------------------------------------------
# diffjax worker (a fresh process: pin_threads and the XLA flags come before JAX starts)


def _random_params(model, input_shape):
    """Params of the model's structure with random values: kernels N(0, 1/fan_in), biases 0,
    norm scales 1 (times do not depend on the values; no init program to compile)."""
    import jax
    import numpy as np

    from diffjax.models.denoiser import abstract_params

    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "bias":
            return np.zeros(leaf.shape, leaf.dtype)
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        fan_in = max(1, int(np.prod(leaf.shape[:-1])))
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    return jax.device_put(jax.tree_util.tree_map_with_path(fill, abstract_params(model, input_shape)))


def _compile(fn, *args):
    """``fn`` jitted and compiled ahead of time for ``args``, and the seconds that took."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def task_jax(args) -> dict:
    import jax
    import jax.numpy as jnp

    from diffjax.diffusion import solvers, time_grids
    from diffjax.diffusion.processes import discrete_process
    from diffjax.models.denoiser import count_params, make_denoise_fn
    from diffjax.run.experiments import build_recipe

    case = json.loads(args.case)
    experiment, config = cases_lib.build_config(case)
    recipe = build_recipe(experiment, config)
    schedule = recipe.family.schedule
    spec = recipe.family.spec
    process = discrete_process(schedule)
    denoise = make_denoise_fn(recipe.model, num_timesteps=schedule.original_num_timesteps,
                              rescale_timesteps=recipe.family.rescale_timesteps)
    start = time.perf_counter()
    params = _random_params(recipe.model, recipe.input_shape)
    result = {"case": case, "batch": args.batch, "params": count_params(params), "input_shape": list(recipe.input_shape),
              "params_s": time.perf_counter() - start, "schedule": config.diffusion.schedule,
              "timesteps": schedule.num_timesteps, "mean_type": spec.mean_type}
    shape = (args.batch, *recipe.input_shape)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)

    # The reference: one forward pass, called with a model step as x0_predictor calls it.
    t_net = process.model_timestep(jnp.full((args.batch,), 0.5, jnp.float32))
    fwd, fwd_compile_s = _compile(lambda p, x, t: denoise(p, x, t, None), params, x, t_net)
    forward = summarize(time_reps(lambda: fwd(params, x, t_net).block_until_ready(), args.fwd_reps, args.fwd_warmup))
    forward["compile_s"] = fwd_compile_s
    result["forward"] = forward

    rows = []
    if args.nfe > 0:
        for name in args.solvers.split(","):
            if name not in solvers.SOLVERS:
                rows.append(dict(solver=name, skipped="not registered in solvers.SOLVERS"))
                continue
            per_step = solvers.SOLVERS[name].nfe_per_step
            steps = max(1, args.nfe // per_step)
            nfe = steps * per_step
            step = solvers.SOLVERS[name].step
            grid = time_grids.uniform_log_snr(process, steps)

            def real(p, x, grid, step=step):
                return solvers.solve(step, process, solvers.x0_predictor(denoise, p, spec, process), x, grid)

            def trivial(x, grid, step=step):
                return solvers.solve(step, process, lambda x, t: 0.5 * x, x, grid)

            real_c, real_compile_s = _compile(real, params, x, grid)
            real_times = time_reps(lambda: real_c(params, x, grid).block_until_ready(), args.solve_reps,
                                   args.solve_warmup)
            trivial_c, trivial_compile_s = _compile(trivial, x, grid)
            trivial_times = time_reps(lambda: trivial_c(x, grid).block_until_ready(), args.trivial_reps, 2)
            run, bare = summarize(real_times), summarize(trivial_times)
            budget = nfe * forward["median_s"]
            rows.append(dict(solver=name, steps=steps, nfe=nfe, solve=run, trivial=bare, compile_s=real_compile_s,
                             trivial_compile_s=trivial_compile_s, nfe_x_forward_s=budget,
                             overhead=run["median_s"] / budget - 1.0, trivial_fraction=bare["median_s"] / budget))
    result["solvers"] = rows

    if args.sampler_nfe:
        # make_sampler's composition for SamplerChoice(solver="dpmpp_2m", steps=nfe - 1,
        # grid="discrete_even", clip_denoised=False): K steps, then the final denoising.
        steps = args.sampler_nfe - 1
        grid = time_grids.discrete_grid(schedule.original_num_timesteps, steps, "even")

        def draw(p, key):
            x_T = jax.random.normal(key, shape, jnp.float32)
            denoise_x0 = solvers.x0_predictor(denoise, p, spec, process)
            return solvers.solve(solvers.SOLVERS["dpmpp_2m"].step, process, denoise_x0, x_T, grid, denoise_to_zero=True)

        key = jax.random.key(3)
        draw_c, draw_compile_s = _compile(draw, params, key)
        run = summarize(time_reps(lambda: draw_c(params, key).block_until_ready(), args.sampler_reps,
                                  args.sampler_warmup))
        result["sampler"] = dict(solver="dpmpp_2m", steps=steps, nfe=args.sampler_nfe, grid="discrete_even",
                                 run=run, compile_s=draw_compile_s, per_sample_s=run["median_s"] / args.batch,
                                 overhead=run["median_s"] / (args.sampler_nfe * forward["median_s"]) - 1.0)
    result["peak_rss_mib"] = peak_rss_mib()
    result["jax_version"] = jax.__version__
    return result


# ---------------------------------------------------------------------------------------------
# PyTorch + diffusers worker


def task_torch(args) -> dict:
    import torch
    from diffusers import DPMSolverMultistepScheduler, UNet2DModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    case, hyper = json.loads(args.case), json.loads(args.hyper)
    if hyper["schedule"] != "linear" or hyper["mean_type"] != "eps":
        raise ValueError(f"the diffusers reference is set up for linear betas and eps prediction, not {hyper}")
    unet_kwargs = dict(case["torch_unet"])
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        unet_kwargs[key] = tuple(unet_kwargs[key])
    model = UNet2DModel(**unet_kwargs).eval()
    timesteps = hyper["timesteps"]
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=timesteps, beta_start=1e-4 * 1000 / timesteps, beta_end=0.02 * 1000 / timesteps,
        beta_schedule="linear", prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2,
        lower_order_final=True, thresholding=False,
    )
    channels, size = unet_kwargs["in_channels"], unet_kwargs["sample_size"]
    x = torch.randn(args.batch, channels, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.full((args.batch,), 500)

    def forward():
        with torch.inference_mode():
            model(x, t)

    calls = {"n": 0}

    def sample():
        scheduler.set_timesteps(args.sampler_nfe)
        sample = torch.randn(args.batch, channels, size, size, generator=torch.Generator().manual_seed(2))
        sample = sample * scheduler.init_noise_sigma
        calls["n"] = 0
        with torch.inference_mode():
            for step_t in scheduler.timesteps:
                eps = model(sample, step_t).sample
                calls["n"] += 1
                sample = scheduler.step(eps, step_t, sample).prev_sample
        return sample

    forward_stats = summarize(time_reps(forward, args.fwd_reps, args.fwd_warmup))
    run = summarize(time_reps(sample, args.sampler_reps, args.sampler_warmup))
    import diffusers

    return dict(
        case=case, batch=args.batch, params=sum(p.numel() for p in model.parameters()), forward=forward_stats,
        sampler=dict(nfe=calls["n"], run=run, per_sample_s=run["median_s"] / args.batch,
                     overhead=run["median_s"] / (calls["n"] * forward_stats["median_s"]) - 1.0,
                     timesteps=[int(v) for v in scheduler.timesteps[:3]] + ["..."] + [int(scheduler.timesteps[-1])]),
        torch_threads=torch.get_num_threads(), torch_version=torch.__version__, diffusers_version=diffusers.__version__,
        peak_rss_mib=peak_rss_mib(),
    )


def _effective_fusions(xla_flags: str) -> str:
    """The YNNPACK fusion setting XLA_FLAGS gives (``xla_default`` when it does not set it)."""
    from diffjax.runtime.xla_cpu import YNN_FUSION_OPTION

    value = "xla_default"
    for flag in xla_flags.split():
        if flag.startswith(f"--{YNN_FUSION_OPTION}="):
            value = flag.split("=", 1)[1]
    return value


def worker_main(args) -> None:
    threads = pin_threads(args.threads)
    if args.worker == "jax":
        use_case_fusions(args.case)  # as launch.py runs the experiment; an XLA_FLAGS that sets the option wins
        result = task_jax(args)
        result["xla_cpu_ynn_fusions"] = _effective_fusions(os.environ.get("XLA_FLAGS", ""))
        result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    else:
        result = task_torch(args)
    result["threads"] = threads
    write_result(args.out, result)


# ---------------------------------------------------------------------------------------------
# The driver: runs the workers one after the other and prints the tables.


def _busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_worker(worker: str, threads: int, tmpdir: str, verbose: bool, *extra: str) -> dict:
    out = os.path.join(tmpdir, f"{worker}_{len(os.listdir(tmpdir)):02d}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--threads", str(threads), "--out", out, *extra]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"the {worker} worker failed with exit code {proc.returncode}")
    if verbose and proc.stderr.strip():
        sys.stderr.write(proc.stderr[-2000:])
    with open(out) as f:
        return json.load(f)


def _torch_available() -> str | None:
    """None if torch and diffusers can be imported (checked without importing them here)."""
    from importlib.util import find_spec

    missing = [name for name in ("torch", "diffusers") if find_spec(name) is None]
    return None if not missing else f"{'/'.join(missing)} not installed"


def _print_part1(model: dict) -> None:
    c = model["case"]
    fwd = model["forward"]
    shape = "x".join(str(v) for v in model["input_shape"])
    print(f"\n[{c['label']}, batch {model['batch']}, {shape}] {model['params']:,} params, "
          f"XLA:CPU fusions '{model['xla_cpu_ynn_fusions']}'")
    print(f"  forward pass: {1e3 * fwd['median_s']:.1f} ms (median of {fwd['reps']}; min {1e3 * fwd['min_s']:.1f} ms; "
          f"compile {fwd['compile_s']:.1f} s)")
    print(f"  {'solver':<10} {'K':>3} {'NFE':>4} {'solve s':>9} {'NFE x fwd s':>12} {'overhead':>9} {'target':>8}"
          f" {'trivial-D ms':>13} {'trivial/(NFE x fwd)':>20} {'compile s':>10}")
    for row in model["solvers"]:
        if "skipped" in row:
            print(f"  {row['solver']:<10} skipped: {row['skipped']}")
            continue
        met = "met" if row["overhead"] <= TARGET_OVERHEAD else "not met"
        print(f"  {row['solver']:<10} {row['steps']:>3} {row['nfe']:>4} {row['solve']['median_s']:>9.3f} "
              f"{row['nfe_x_forward_s']:>12.3f} {100 * row['overhead']:>+8.2f}% {met:>8} "
              f"{1e3 * row['trivial']['median_s']:>13.3f} {100 * row['trivial_fraction']:>19.3f}% "
              f"{row['compile_s']:>10.1f}")


def _print_part2(part2: dict) -> None:
    if "skipped" in part2:
        print(f"\nPart 2 (DPM-Solver++(2M) against diffusers) skipped: {part2['skipped']} (pip install -e '.[bench]')")
        return
    j, t = part2["diffjax"], part2["torch"]
    js, ts = j["sampler"], t["sampler"]
    print(f"\nPart 2: DPM-Solver++(2M), {js['nfe']} NFE, {part2['label']}, batch {part2['batch']}, "
          f"params diffjax / diffusers {j['params']:,} / {t['params']:,}")
    print(f"  {'':<48} {'run s':>8} {'s/sample':>9} {'forward ms':>11} {'overhead':>9}")
    print(f"  {'diffjax solve(dpmpp_2m, ' + str(js['steps']) + ' steps + final denoise)':<48} "
          f"{js['run']['median_s']:>8.3f} {js['per_sample_s']:>9.4f} {1e3 * j['forward']['median_s']:>11.1f} "
          f"{100 * js['overhead']:>+8.2f}%")
    print(f"  {'diffusers DPMSolverMultistepScheduler (' + str(ts['nfe']) + ' steps)':<48} "
          f"{ts['run']['median_s']:>8.3f} {ts['per_sample_s']:>9.4f} {1e3 * t['forward']['median_s']:>11.1f} "
          f"{100 * ts['overhead']:>+8.2f}%")
    print(f"  ratio diffjax / diffusers, time per sample: {part2['ratio']:.3f}  "
          f"(forward pass alone: {part2['forward_ratio']:.3f}; torch {t['torch_version']}, "
          f"diffusers {t['diffusers_version']}, {t['torch_threads']} torch threads)")
    if not part2["params_match"]:
        print("  WARNING: the two networks' parameter counts differ: the architectures are not matched")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few steps: checks that the script works")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads for each framework (default: every CPU this process may use)")
    parser.add_argument("--part", default="1,2", help="comma-separated subset of 1 (solver overhead), 2 (diffusers)")
    parser.add_argument("--models", default="digits,cifar10", help="part 1's networks: a subset of digits,cifar10")
    parser.add_argument("--solvers", default=",".join(SOLVER_NAMES), help="part 1's solvers (keys of solvers.SOLVERS)")
    parser.add_argument("--nfe", type=int, default=0,
                        help="part 1's network evaluations per solve (default: the mode's, 10 full, 2 quick)")
    parser.add_argument("--reps", type=int, default=None, help="timed runs of each solve / sampler (default: mode's)")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    # Worker mode (run by the driver in a fresh process).
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--hyper", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--fwd-reps", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--fwd-warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--solve-reps", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--solve-warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--trivial-reps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--sampler-nfe", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sampler-reps", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--sampler-warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    parts = set(args.part.split(","))
    if not parts <= {"1", "2"}:
        parser.error(f"--part takes 1, 2 or 1,2, got {args.part!r}")
    models = args.models.split(",")
    if not set(models) <= {"digits", "cifar10"}:
        parser.error(f"--models takes a subset of digits,cifar10, got {args.models!r}")
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    solve_reps = args.reps or s["solve_reps"]
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    load_before = os.getloadavg()
    busy0, own0, wall0 = _busy_seconds(), _children_cpu_seconds(), time.perf_counter()
    print(f"diffjax solver benchmark ({mode}): {args.threads} threads on CPUs {cpus}, load average {load_before[0]:.2f}",
          flush=True)
    if load_before[0] >= 1.0:
        print("WARNING: the machine is busy (load average >= 1); the timings will not be reliable.", flush=True)
    timing = ["--fwd-reps", str(s["fwd_reps"]), "--fwd-warmup", str(s["fwd_warmup"])]
    results: dict = {"mode": mode, "threads": args.threads, "cpus": cpus, "target_overhead": TARGET_OVERHEAD,
                     "part1": [], "part2": None}

    with tempfile.TemporaryDirectory(prefix="diffjax_bench_solvers_") as tmpdir:
        if "1" in parts:
            print(f"\nPart 1: solver overhead = solve time / (NFE x forward time) - 1 (target <= "
                  f"{100 * TARGET_OVERHEAD:.0f}%); trivial-D = the same solve with D(x, t) = 0.5 x; each solve: "
                  f"median of {solve_reps} timed run(s) after {s['solve_warmup']} untimed", flush=True)
            for name in models:
                m = s["models"][name]
                model = _run_worker(
                    "jax", args.threads, tmpdir, args.verbose, "--case", json.dumps(m["case"]),
                    "--batch", str(m["batch"]), "--nfe", str(args.nfe or s["nfe"]), "--solvers", args.solvers, *timing,
                    "--solve-reps", str(solve_reps), "--solve-warmup", str(s["solve_warmup"]),
                    "--trivial-reps", str(s["trivial_reps"]),
                )
                results["part1"].append(model)
                _print_part1(model)
                sys.stdout.flush()

        if "2" in parts:
            v = s["vs_diffusers"]
            missing = _torch_available()
            if missing:
                results["part2"] = {"skipped": missing}
            else:
                sampler = ["--batch", str(v["batch"]), "--sampler-nfe", str(v["nfe"]),
                           "--sampler-reps", str(args.reps or v["reps"]), "--sampler-warmup", str(v["warmup"])]
                case_json = json.dumps(v["case"])
                j = _run_worker("jax", args.threads, tmpdir, args.verbose, "--case", case_json, "--nfe", "0",
                                *timing, *sampler)
                hyper = {"schedule": j["schedule"], "timesteps": j["timesteps"], "mean_type": j["mean_type"]}
                t = _run_worker("torch", args.threads, tmpdir, args.verbose, "--case", case_json,
                                "--hyper", json.dumps(hyper), *timing, *sampler)
                results["part2"] = dict(
                    label=v["case"]["label"], batch=v["batch"], diffjax=j, torch=t,
                    ratio=j["sampler"]["per_sample_s"] / t["sampler"]["per_sample_s"],
                    forward_ratio=j["forward"]["median_s"] / t["forward"]["median_s"],
                    params_match=j["params"] == t["params"],
                )
            _print_part2(results["part2"])

    wall = time.perf_counter() - wall0
    foreign = max(0.0, (_busy_seconds() - busy0) - (_children_cpu_seconds() - own0))
    results["load"] = dict(loadavg_before=load_before, loadavg_after=os.getloadavg(), foreign_cores_mean=foreign / wall,
                           wall_s=wall)
    print(f"\nwall time {wall / 60:.1f} min; other processes used {foreign / wall:.2f} cores on average"
          + (" -- timings unreliable" if foreign / wall > 0.1 or load_before[0] >= 1.0 else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=float)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
