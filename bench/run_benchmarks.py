"""diffjax against PyTorch + diffusers at a matched architecture, on this CPU, in one invocation.

    pip install -e ".[bench]"
    python bench/run_benchmarks.py            # full run, about 15 minutes on 2 cores
    python bench/run_benchmarks.py --quick    # tiny configs, 1-2 reps: checks the script works

Runs back to back, each part in a fresh process pinned to the same ``--threads`` CPUs
(default: all this process may use):

1. train step (forward, backward, clip, Adam, EMA): diffjax's compiled
   ``make_train_step`` on the DDPM CIFAR-10 UNet (batch 8, 32x32x3) and on the digits
   experiment (batch 128, 8x8x1), against diffusers' ``UNet2DModel`` with the same
   layers and parameter count trained by a plain PyTorch step; img/s and time ratio;
2. compile time of a launch (jit(init) + train step), cold and warm with JAX's
   persistent compilation cache, in two fresh processes sharing a temporary cache;
3. sampling: a 50-step DDIM run of ``diffjax.diffusion.samplers.sample`` inside one jit against
   50 x one jitted forward pass, and against diffusers' ``DDIMPipeline`` over the torch UNet;
4. input pipeline: batches/s of ``make_train_iterator("digits")`` against the digits
   train step's steps/s;
5. FLOPs of the CIFAR train step (XLA cost analysis), achieved GFLOP/s, this CPU's
   float32 matmul GFLOP/s, utilisation, XLA's memory analysis and peak RSS.

Writes ``bench/results.json`` and the generated block of ``docs/performance.md``.

``--accelerator`` runs the accelerator benchmark instead (``bench/accelerator.py``: the
train step at batch 128 in fp32 and bf16 against PyTorch eager/TF32/bf16/torch.compile,
cold and warm compile, 50-step DDIM, FLOPs and utilisation against measured matmul peaks,
in about 5 minutes on one GPU); it writes ``bench/accelerator_results.json``, the tables
to ``--tables`` after every stage, and the accelerator block of ``docs/performance.md``
when a full run found an accelerator (never from a ``--quick`` or CPU run).
Timings on a machine busy with other work are meaningless: the report records how many
cores other processes used during the run and flags it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cases as cases_lib  # noqa: E402
import report  # noqa: E402
from common import REPO  # noqa: E402

# How much work each mode does.
SETTINGS = {
    "full": dict(large_reps=10, large_warmup=2, small_reps=20, small_warmup=3, sample_steps=50, sample_batch=8,
                 sample_reps=3, fwd_reps=10, matmul=2048, pipeline_batches=300),
    "quick": dict(large_reps=2, large_warmup=1, small_reps=2, small_warmup=1, sample_steps=50, sample_batch=8,
                  sample_reps=1, fwd_reps=3, matmul=512, pipeline_batches=20),
}


def _busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _machine(threads: int, cpus: list[int], quick: bool) -> dict:
    model, flags = "unknown", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "diffusers", "tensorflow-cpu", "tensorflow-datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return dict(
        date=datetime.datetime.now().isoformat(timespec="minutes"),
        quick=quick,
        cpu_model=model,
        cpu_flags=" ".join(simd) or "no AVX2",
        cpu_count=os.cpu_count(),
        threads=threads,
        cpus=cpus,
        mem_gib=mem_kib / 1024**2,
        kernel=platform.release(),
        python=platform.python_version(),
        versions=versions,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )


class Runner:
    """Runs workers one after the other and keeps their results and logs."""

    def __init__(self, threads: int, tmpdir: str, verbose: bool):
        self.threads = threads
        self.tmpdir = tmpdir
        self.verbose = verbose
        self.count = 0

    def __call__(self, script: str, task: str, *args: str, timeout: float = 3600) -> dict:
        self.count += 1
        out = os.path.join(self.tmpdir, f"{self.count:02d}_{os.path.basename(script)}_{task}.json")
        cmd = [sys.executable, os.path.join(HERE, script), task, "--threads", str(self.threads), "--out", out, *args]
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise RuntimeError(f"{script} {task} failed with exit code {proc.returncode}")
        if self.verbose and proc.stderr.strip():
            sys.stderr.write(proc.stderr[-2000:])
        with open(out) as f:
            result = json.load(f)
        result["worker_wall_s"] = wall
        result["loadavg_after"] = os.getloadavg()
        return result


def _log(message: str) -> None:
    print(message, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configs and 1-2 reps: checks that the script works")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPU threads for each framework (default: every CPU this process may use)")
    parser.add_argument("--json", default=None,
                        help="where to write the results (default bench/results.json, or bench/accelerator_results.json)")
    parser.add_argument("--doc", default=None,
                        help="markdown report to (re)generate (default docs/performance.md); '' skips it")
    parser.add_argument("--accelerator", action="store_true",
                        help="the accelerator benchmark (bench/accelerator.py) instead of the CPU comparison")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="--accelerator: seconds the whole run may take (default 285 full, 600 --quick)")
    parser.add_argument("--tables", default=None,
                        help="--accelerator: markdown tables rewritten after every stage (default: next to --json)")
    parser.add_argument("--skip", default="", help="--accelerator: comma-separated stages to leave out")
    parser.add_argument("--torch-compile", dest="torch_compile", action="store_true", default=None,
                        help="--accelerator: run the torch.compile stage (default: on in full runs, off in --quick)")
    parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
    parser.add_argument("--ahead", dest="ahead", action="store_true", default=None,
                        help="--accelerator: compile the bf16 step and the sampler in the background while torch runs "
                             "(default: on in full runs, off in --quick)")
    parser.add_argument("--no-ahead", dest="ahead", action="store_false")
    parser.add_argument("--gpu-flags", default=None,
                        help="--accelerator: XLA:GPU flag sets to measure against the bf16 step, 'name=FLAGS;name=FLAGS' "
                             "(default: accelerator.GPU_FLAG_SETS; flags from diffjax/runtime/xla_gpu.py's allow-list)")
    parser.add_argument("--report-only", metavar="JSON", default=None,
                        help="--accelerator: write the doc block from a saved results JSON, run nothing")
    parser.add_argument("--only", default="train,sampling,pipeline,compile",
                        help="comma-separated subset of train,sampling,pipeline,compile")
    parser.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    args = parser.parse_args()
    if args.accelerator:
        _accelerator(args)
        return
    args.json = args.json or os.path.join(HERE, "results.json")
    args.doc = os.path.join(REPO, "docs", "performance.md") if args.doc is None else args.doc
    only = set(args.only.split(","))
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    meta = _machine(args.threads, cpus, args.quick)
    the_cases = cases_lib.cases(args.quick)
    results: dict = {"meta": meta, "settings": s, "train_step": {}}

    loadavg_before = os.getloadavg()
    busy0, own0, wall0 = _busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    _log(f"diffjax benchmarks ({mode}): {meta['cpu_model']}, {args.threads} threads on CPUs {cpus}, "
         f"load average {loadavg_before[0]:.2f}")
    if loadavg_before[0] >= 1.0:
        _log("WARNING: the machine is busy (load average >= 1); the timings will not be reliable.")

    with tempfile.TemporaryDirectory(prefix="diffjax_bench_") as tmpdir:
        run = Runner(args.threads, tmpdir, args.verbose)
        workers = {}
        if only & {"train", "sampling", "pipeline"}:
            for key in ("large", "small"):
                case = the_cases[key]
                if key == "small" and not only & {"train", "pipeline"}:
                    continue
                extra_j, extra_t = [], []
                reps, warmup = str(s[f"{key}_reps"]), str(s[f"{key}_warmup"])
                if key == "large":
                    extra = ["--matmul", str(s["matmul"])]
                    if "sampling" in only:
                        extra += ["--sample-steps", str(s["sample_steps"]), "--sample-batch", str(s["sample_batch"]),
                                  "--sample-reps", str(s["sample_reps"]), "--fwd-reps", str(s["fwd_reps"])]
                    extra_j = extra_t = extra
                _log(f"[{key}] diffjax train step: {case['label']} ...")
                jax_result = run("jax_worker.py", "train", "--case", json.dumps(case), "--reps", reps, "--warmup", warmup, *extra_j)
                _log(f"    {jax_result['params']:,} params, {jax_result['step']['median_s']:.3f} s/step "
                     f"(init {jax_result['init_s']:.1f} s, compile {jax_result['compile_s']:.1f} s)")
                _log(f"[{key}] PyTorch/diffusers train step ...")
                torch_result = run("torch_worker.py", "train", "--case", json.dumps(case),
                                   "--hyper", json.dumps(jax_result["hyper"]), "--reps", reps, "--warmup", warmup, *extra_t)
                _log(f"    {torch_result['params']:,} params, {torch_result['step']['median_s']:.3f} s/step "
                     f"(torch threads {torch_result['torch_threads']})")
                workers[key] = (jax_result, torch_result)
                if "train" in only or key == "small":
                    ratio = jax_result["step"]["median_s"] / torch_result["step"]["median_s"]
                    results["train_step"][key] = dict(label=case["label"], diffjax=jax_result, torch=torch_result, ratio=ratio,
                                                      params_match=jax_result["params"] == torch_result["params"])
                    _log(f"    ratio diffjax/torch {ratio:.2f}  ({jax_result['step']['img_per_s']:.1f} vs "
                         f"{torch_result['step']['img_per_s']:.1f} img/s)")

        if "large" in workers:
            j, t = workers["large"]
            if "sampling" in only:
                results["sampling"] = dict(
                    label=the_cases["large"]["label"].split(",")[0], diffjax=j["sampling"], torch=t["sampling"],
                    ratio=j["sampling"]["run"]["median_s"] / t["sampling"]["run"]["median_s"],
                    forward_ratio=j["sampling"]["forward"]["median_s"] / t["sampling"]["forward"]["median_s"],
                )
                _log(f"[sampling] {j['sampling']['steps']}-step DDIM: diffjax {j['sampling']['run']['median_s']:.2f} s "
                     f"(overhead {100 * j['sampling']['overhead']:+.1f}% over {j['sampling']['steps']} x forward), "
                     f"diffusers {t['sampling']['run']['median_s']:.2f} s (overhead {100 * t['sampling']['overhead']:+.1f}%)")
            flops = j["cost"]["flops"]
            results["flops"] = dict(
                label=the_cases["large"]["label"],
                gflop_per_step=flops / 1e9,
                gflop_per_image=flops / 1e9 / j["hyper"]["batch_size"],
                achieved_gflop_per_s=flops / 1e9 / j["step"]["median_s"],
                torch_equiv_gflop_per_s=flops / 1e9 / t["step"]["median_s"],
                matmul_n=j["matmul"]["n"],
                matmul_gflop_per_s=j["matmul"]["gflop_per_s"],
                torch_matmul_gflop_per_s=t["matmul"]["gflop_per_s"],
                utilisation=flops / 1e9 / j["step"]["median_s"] / j["matmul"]["gflop_per_s"],
                forward_gflop=j.get("sampling", {}).get("forward_gflop"),
                forward_batch=s["sample_batch"],
                jax_peak_rss_mib=j["peak_rss_mib"],
                torch_peak_rss_mib=t["peak_rss_mib"],
                **{k: j["cost"].get(k) for k in ("argument_mib", "output_mib", "alias_mib", "temp_mib", "peak_estimate_mib")},
            )
            _log(f"[flops] {flops / 1e9:.1f} GFLOP/step, {results['flops']['achieved_gflop_per_s']:.1f} GFLOP/s achieved, "
                 f"matmul {j['matmul']['gflop_per_s']:.1f} GFLOP/s, utilisation {100 * results['flops']['utilisation']:.0f}%")

        if "pipeline" in only:
            _log("[pipeline] make_train_iterator('digits', batch 128) ...")
            pipe = run("jax_worker.py", "pipeline", "--batch", "128", "--num-batches", str(s["pipeline_batches"]))
            small = results["train_step"].get("small", {}).get("diffjax")
            steps_per_s = None
            if small is not None:
                steps_per_s = 1.0 / small["step"]["median_s"] * (small["hyper"]["batch_size"] / 128)
            pipe["train_steps_per_s"] = steps_per_s
            for name in ("in_memory", "streaming"):
                pipe[name]["ratio"] = pipe[name]["batches_per_s"] / steps_per_s if steps_per_s else None
                _log(f"    {name}: {pipe[name]['batches_per_s']:.0f} batches/s"
                     + (f" = {pipe[name]['ratio']:.0f}x the train step's {steps_per_s:.2f} steps/s" if steps_per_s else ""))
            results["pipeline"] = pipe

        if "compile" in only:
            case = the_cases["large"]
            cache_dir = os.path.join(tmpdir, "jax_cache")
            os.makedirs(cache_dir)
            comp = {"label": case["label"], "min_compile_time": 1.0}
            for name in ("cold", "warm"):
                _log(f"[compile] {name} launch (persistent cache in a temporary folder) ...")
                comp[name] = run("jax_worker.py", "compile", "--case", json.dumps(case), "--cache-dir", cache_dir,
                                 "--min-compile-time", "1.0")
                c = comp[name]
                _log(f"    jit(init) {c['init_compile_s']:.1f} s, step trace/lower {c['step_lower_s']:.1f} s, "
                     f"step compile {c['step_compile_s']:.1f} s, total {c['total_s']:.1f} s; cache files {c['cache_files_after']}")
            results["compile"] = comp

    wall = time.perf_counter() - wall0
    foreign = max(0.0, (_busy_seconds() - busy0) - (_own_cpu_seconds() - own0))
    meta["wall_s"] = wall
    meta["load"] = dict(loadavg_before=loadavg_before, loadavg_after=os.getloadavg(), foreign_cpu_s=foreign,
                        foreign_cores_mean=foreign / wall)
    meta["under_load"] = loadavg_before[0] >= 1.0 or foreign / wall > 0.1
    if meta["under_load"]:
        _log(f"WARNING: other processes used {foreign / wall:.2f} cores on average during the run: timings unreliable.")

    with open(args.json, "w") as f:
        json.dump(results, f, indent=2, default=float)
    _log(f"wrote {args.json} ({wall / 60:.1f} min)")
    if args.doc:
        report.write(args.doc, results)
        _log(f"wrote {args.doc}")
    print()
    print(report.render(results))


def _accelerator(args) -> None:
    import accelerator

    doc_default = os.path.join(REPO, "docs", "performance.md")
    if args.report_only:
        with open(args.report_only) as f:
            results = json.load(f)
        accelerator.write_doc(args.doc or doc_default, results)
        _log(f"wrote {args.doc or doc_default} from {args.report_only}")
        return
    args.json = args.json or os.path.join(HERE, "accelerator_results.json")
    args.tables = args.tables if args.tables is not None else os.path.splitext(args.json)[0] + "_tables.md"
    args.skip = {name for name in args.skip.split(",") if name}
    results = accelerator.run(args)
    backend = (results["stages"].get("jax_fp32", {}).get("device") or {}).get("backend")
    if args.doc:
        accelerator.write_doc(args.doc, results)
        _log(f"wrote {args.doc}")
    elif args.doc is None and not args.quick and backend not in (None, "cpu"):
        accelerator.write_doc(doc_default, results)
        _log(f"wrote {doc_default}")
    print()
    print(accelerator.render(results))


if __name__ == "__main__":
    main()
