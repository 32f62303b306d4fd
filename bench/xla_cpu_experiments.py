"""XLA:CPU experiments behind docs/performance.md's suggestions: conv kernels and flags.

    python bench/xla_cpu_experiments.py            # DDPM CIFAR-10 UNet shapes, batch 8 (~10 min on 2 cores)
    python bench/xla_cpu_experiments.py --quick

For each ``XLA_FLAGS`` setting (one fresh process each, pinned like ``run_benchmarks.py``)
it times, as medians after warm-up:

* the 3x3 convs of the UNet (8x32x32x128, 8x16x16x256, 8x8x8x256; stride 1, SAME): forward,
  and forward + backward (gradients of input and kernel) as ``jax.grad`` derives it, and
  with a hand-written VJP: input gradient as a forward conv of the output gradient with
  the flipped, transposed kernel; kernel gradient as one matmul of the input's 3x3 patches
  (``lax.conv_general_dilated_patches``) with the output gradient;
* diffjax's real train step (``make_train_step``) of the same UNet.

Settings: XLA's default (YNNPACK fusions for convs, dots and reductions), YNNPACK off
(``--xla_cpu_experimental_ynn_fusion_type=``: XLA's own kernels), YNNPACK for dots and
convolutions only, and YNNPACK for dots and reductions (``diffjax/runtime/xla_cpu.py``, what
``launch.py`` sets). Writes ``bench/xla_cpu_experiments.json`` and prints a table.
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
from common import REPO, pin_threads, summarize, time_reps, write_result  # noqa: E402
from jax_worker import _recipe  # noqa: E402

# JAX and diffjax are imported inside the functions: the worker's pin_threads must set the
# thread counts (and XLA_FLAGS is set per worker) before XLA starts.

SETTINGS = {
    "default (YNNPACK)": "",
    "YNNPACK off (Eigen)": "--xla_cpu_experimental_ynn_fusion_type=",
    "YNNPACK dot+conv only": "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",
    "YNNPACK dot+reduce (diffjax)": "--xla_cpu_experimental_ynn_fusion_type=dot,reduce",
}


def conv_shapes(quick: bool):
    if quick:
        return [(8, 8, 8, 16)]
    return [(8, 32, 32, 128), (8, 16, 16, 256), (8, 8, 8, 256)]


def make_convs():
    import jax
    import jax.numpy as jnp
    from jax import lax

    dims = ("NHWC", "HWIO", "NHWC")

    def conv(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dims)

    @jax.custom_vjp
    def conv_manual(x, k):
        return conv(x, k)

    def fwd(x, k):
        return conv(x, k), (x, k)

    def bwd(res, g):
        x, k = res
        # dL/dx: correlate g with the kernel rotated by 180 degrees, in/out swapped.
        k_t = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2)
        dx = conv(g, k_t)
        # dL/dk: patches of x [B, H, W, C*9] (feature order c, kh, kw) contracted with g over B, H, W.
        kh, kw, cin, cout = k.shape
        patches = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), "SAME", dimension_numbers=dims)
        dk = jnp.einsum("bhwp,bhwo->po", patches, g).reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)
        return dx, dk

    conv_manual.defvjp(fwd, bwd)
    return conv, conv_manual


def worker(args) -> dict:
    import jax
    import jax.numpy as jnp

    conv, conv_manual = make_convs()
    out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "convs": {}}
    for shape in conv_shapes(args.quick):
        b, h, w, c = shape
        x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
        k = jax.random.normal(jax.random.key(1), (3, 3, c, c), jnp.float32) * 0.05
        fns = {
            "forward": jax.jit(conv),
            "fwd+bwd (jax.grad)": jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))),
            "fwd+bwd (manual VJP)": jax.jit(jax.grad(lambda x, k: jnp.sum(conv_manual(x, k) ** 2), argnums=(0, 1))),
        }
        ref = fns["fwd+bwd (jax.grad)"](x, k)
        got = fns["fwd+bwd (manual VJP)"](x, k)
        err = max(float(jnp.max(jnp.abs(a - b_)) / (jnp.max(jnp.abs(a)) + 1e-30)) for a, b_ in zip(ref, got))
        entry = {"manual_vjp_max_rel_err": err}
        for name, fn in fns.items():
            compiled = fn.lower(x, k).compile()
            entry[name] = summarize(time_reps(lambda: jax.block_until_ready(compiled(x, k)), args.layer_reps, warmup=3))
        out["convs"]["x".join(map(str, shape))] = entry

    if not args.skip_step:
        from diffjax.runtime.mesh import global_batch, make_mesh, replicated_sharding
        from diffjax.train.loop import make_init_fn
        from diffjax.train.optim import make_optimizer
        from diffjax.train.step import make_train_step

        case = json.loads(args.case)
        config, recipe = _recipe(case)
        mesh = make_mesh(jax.devices()[:1])
        state = jax.jit(make_init_fn(recipe, make_optimizer(config.train)), out_shardings=replicated_sharding(mesh))(jax.random.PRNGKey(0))
        batch = global_batch(mesh, next(recipe.train_batches(0)))
        start = time.perf_counter()
        step = make_train_step(recipe, make_optimizer(config.train), config.train.ema_decay, mesh).lower(state, batch).compile()
        out["step_compile_s"] = time.perf_counter() - start
        holder = {"state": state}

        def run():
            holder["state"], metrics = step(holder["state"], batch)
            jax.block_until_ready((holder["state"], metrics))

        out["step"] = summarize(time_reps(run, args.reps, warmup=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layer-reps", type=int, default=20)
    parser.add_argument("--skip-step", action="store_true", help="convs only")
    parser.add_argument("--json", default=os.path.join(HERE, "xla_cpu_experiments.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pin_threads(args.threads)
        write_result(args.out, worker(args))
        return

    case = cases_lib.cases(args.quick)["large"]
    results = {"case": case, "threads": args.threads, "loadavg_before": os.getloadavg(), "settings": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, flags in SETTINGS.items():
            print(f"[{name}] XLA_FLAGS={flags!r} ...", flush=True)
            out = os.path.join(tmpdir, "out.json")
            env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--out", out, "--case", json.dumps(case),
                   "--threads", str(args.threads), "--reps", str(args.reps), "--layer-reps", str(args.layer_reps),
                   *(["--quick"] if args.quick else []), *(["--skip-step"] if args.skip_step else [])]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-6000:])
                raise RuntimeError(f"{name} failed")
            with open(out) as f:
                results["settings"][name] = json.load(f)
    results["loadavg_after"] = os.getloadavg()
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(render(results))


def render(results: dict) -> str:
    names = list(results["settings"])
    lines = ["| measurement | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    first = results["settings"][names[0]]
    for shape, entry in first["convs"].items():
        for kind in ("forward", "fwd+bwd (jax.grad)", "fwd+bwd (manual VJP)"):
            cells = [f"{1e3 * results['settings'][n]['convs'][shape][kind]['median_s']:.2f} ms" for n in names]
            lines.append(f"| conv3x3 {shape} {kind} | " + " | ".join(cells) + " |")
    if "step" in first:
        cells = [f"{results['settings'][n]['step']['median_s']:.3f} s (compile {results['settings'][n]['step_compile_s']:.0f} s)"
                 for n in names]
        lines.append("| diffjax train step | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
