"""Where the train step's time goes: diffjax and PyTorch split into the same parts.

    python bench/profile_step.py            # DDPM CIFAR-10 UNet, batch 8 (about 10 minutes on 2 cores)
    python bench/profile_step.py --quick    # tiny UNet

Each framework runs in its own fresh process pinned to the same CPUs (as in
``run_benchmarks.py``) and times, as medians of several reps after warm-up:

* the parts of a step: eval forward, train forward (dropout), forward + backward of the
  loss (t, noise, q_sample included), the update alone (clip, Adam, EMA; diffjax: donated
  params, opt state and EMA), and the full step;
* diffjax variants of the full step, to price one feature at a time: without the NaN guard
  (``jnp.where(finite, new, old)`` over the whole state in ``diffjax/train/step.py``; here
  it is bypassed by tracing the step with a ``jnp`` whose scalar-predicate ``where`` returns
  the new value), without dropout, with attention as explicit einsums instead of
  ``jax.nn.dot_product_attention``, and the compile time of the step and of jit(init) with
  ``jax_threefry_partitionable`` off;
* single layers at the model's largest activation: a 3x3 conv 128->128 on 8x32x32 and a
  GroupNorm(32)+swish, forward and forward+backward, in both frameworks.

Writes ``bench/profile.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from jax_worker import _cost, _hyper, _recipe  # noqa: E402
from torch_worker import build_train_step  # noqa: E402

# JAX, torch and the workers' modules are imported inside the functions: pin_threads (in
# main) must set the thread counts before XLA, OpenMP and OpenBLAS start.

# ----------------------------------------------------------------------------- diffjax side


class _NoGuardJnp:
    """``jax.numpy`` whose ``where`` with a scalar predicate returns its second argument:
    tracing ``train_step`` with it removes the NaN guard and nothing else."""

    def __init__(self, jnp):
        self._jnp = jnp

    def __getattr__(self, name):
        return getattr(self._jnp, name)

    def where(self, condition, x=None, y=None, **kwargs):
        if getattr(condition, "ndim", None) == 0 and x is not None:
            return x
        return self._jnp.where(condition, x, y, **kwargs)


def _einsum_attention(q, k, v, *args, **kwargs):
    """Plain einsum attention [B, T, N, D] (float32 softmax), for the attention variant."""
    import jax
    import jax.numpy as jnp

    if args or kwargs:
        raise TypeError("the einsum attention variant supports q, k, v only")
    logits = jnp.einsum("btnd,bsnd->bnts", q, k) / jnp.sqrt(jnp.float32(q.shape[-1])).astype(q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnd->btnd", weights, v)


def jax_side(args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import diffjax.train.step as step_module
    from diffjax.diffusion.gaussian import q_sample
    from diffjax.diffusion.losses import training_losses
    from diffjax.models.denoiser import make_denoise_fn
    from diffjax.runtime.mesh import global_batch, make_mesh, replicated_sharding
    from diffjax.train.loop import make_init_fn
    from diffjax.train.optim import ema_update, make_optimizer
    from diffjax.train.step import make_train_step

    case = json.loads(args.case)
    config, recipe = _recipe(case)
    mesh = make_mesh(jax.devices()[:1])
    out: dict = {"parts": {}, "variants": {}, "layers": {}, "compile": {}}

    def compile_timed(fn, *fn_args):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*fn_args).compile() if not hasattr(fn, "lower") else fn.lower(*fn_args).compile()
        return compiled, time.perf_counter() - start

    optimizer = make_optimizer(config.train)
    init_fn = make_init_fn(recipe, optimizer)
    init_jit = jax.jit(init_fn, out_shardings=replicated_sharding(mesh))
    init_c, out["compile"]["init_s"] = compile_timed(init_jit, jax.random.PRNGKey(0))
    state = init_c(jax.random.PRNGKey(0))
    batch = global_batch(mesh, next(recipe.train_batches(0)))
    schedule = recipe.family.schedule

    # Full step and its variants.
    step_c, out["compile"]["step_s"] = compile_timed(make_train_step(recipe, optimizer, config.train.ema_decay, mesh), state, batch)
    out["cost"] = _cost(step_c)
    variants = {"full step": step_c}

    real_jnp = step_module.jnp
    step_module.jnp = _NoGuardJnp(real_jnp)
    try:
        variants["no NaN guard"], _ = compile_timed(make_train_step(recipe, optimizer, config.train.ema_decay, mesh), state, batch)
    finally:
        step_module.jnp = real_jnp
    if config.model.dropout > 0:
        no_drop = dataclasses.replace(recipe, model=recipe.model.clone(dropout=0.0))
        variants["no dropout"], _ = compile_timed(make_train_step(no_drop, optimizer, config.train.ema_decay, mesh), state, batch)
    real_attention = jax.nn.dot_product_attention
    jax.nn.dot_product_attention = _einsum_attention
    try:
        variants["einsum attention"], _ = compile_timed(make_train_step(recipe, optimizer, config.train.ema_decay, mesh), state, batch)
    finally:
        jax.nn.dot_product_attention = real_attention
    jax.config.update("jax_threefry_partitionable", False)
    try:
        _, out["compile"]["step_threefry_nonpartitionable_s"] = compile_timed(
            make_train_step(recipe, optimizer, config.train.ema_decay, mesh), state, batch)
        _, out["compile"]["init_threefry_nonpartitionable_s"] = compile_timed(
            jax.jit(init_fn, out_shardings=replicated_sharding(mesh)), jax.random.PRNGKey(0))
    finally:
        jax.config.update("jax_threefry_partitionable", True)
    # Time the variants interleaved, round by round, so that drift hits them alike.
    timings = {name: [] for name in variants}
    holders = {name: jax.tree.map(jnp.copy, state) for name in variants}
    for name, compiled in variants.items():  # warm-up
        for _ in range(2):
            holders[name], m = compiled(holders[name], batch)
            jax.block_until_ready((holders[name], m))
    for _ in range(args.reps):
        for name, compiled in variants.items():
            start = time.perf_counter()
            holders[name], m = compiled(holders[name], batch)
            jax.block_until_ready((holders[name], m))
            timings[name].append(time.perf_counter() - start)
    out["variants"] = {name: summarize(times) for name, times in timings.items()}
    del holders

    # Parts of the step.
    denoise_eval = make_denoise_fn(recipe.model, num_timesteps=schedule.original_num_timesteps,
                                   rescale_timesteps=recipe.family.rescale_timesteps)
    x0 = batch["image"]
    t = jnp.full((x0.shape[0],), 500, jnp.int32)
    key = jax.random.key(3)

    def forward_train(params, x, t, key):
        denoise = make_denoise_fn(recipe.model, num_timesteps=schedule.original_num_timesteps,
                                  rescale_timesteps=recipe.family.rescale_timesteps, train=True, dropout_key=key)
        return denoise(params, x, t, None)

    def loss_and_grad(params, x0, key):
        key_t, key_noise, key_dropout = jax.random.split(key, 3)
        t, weights = recipe.family.timestep_sampler.sample(state.sampler_state, key_t, x0.shape[0])
        noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
        x_t = q_sample(schedule, x0, t, noise)

        def loss_fn(p):
            output = forward_train(p, x_t, schedule.timestep_map[t], key_dropout)
            terms = training_losses(recipe.family.spec, recipe.family.objective, schedule, output, x0, x_t, t, noise)
            return jnp.mean(weights * terms["loss"])

        return jax.value_and_grad(loss_fn)(params)

    def update(params, opt_state, ema, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, ema_update(ema, params, config.train.ema_decay)

    params = state.params
    parts = {
        "eval forward": (jax.jit(lambda p, x, t: denoise_eval(p, x, t, None)), (params, x0, t)),
        "train forward": (jax.jit(forward_train), (params, x0, t, key)),
        "forward + backward": (jax.jit(loss_and_grad), (params, x0, key)),
    }
    for name, (fn, fn_args) in parts.items():
        compiled = fn.lower(*fn_args).compile()
        out["parts"][name] = summarize(time_reps(lambda: jax.block_until_ready(compiled(*fn_args)), args.reps, warmup=2))
    _, grads = jax.jit(loss_and_grad)(params, x0, key)
    update_c = jax.jit(update, donate_argnums=(0, 1, 2)).lower(params, state.opt_state, state.ema_params, grads).compile()
    holder = {"s": jax.tree.map(jnp.copy, (params, state.opt_state, state.ema_params))}

    def run_update():
        holder["s"] = update_c(*holder["s"], grads)
        jax.block_until_ready(holder["s"])

    out["parts"]["update (clip, Adam, EMA)"] = summarize(time_reps(run_update, args.reps, warmup=2))
    out["parts"]["full step"] = out["variants"]["full step"]

    # Single layers at the largest activation.
    out["layers"] = jax_layers(args)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def _layer_shapes(quick: bool):
    return (8, 8, 8, 8) if quick else (8, 32, 32, 128)


def jax_layers(args) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    b, h, w, c = _layer_shapes(args.quick)
    x = jax.random.normal(jax.random.key(0), (b, h, w, c), jnp.float32)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, c, c), jnp.float32) * 0.05
    groups = min(32, c)
    gn = nn.GroupNorm(num_groups=groups, epsilon=1e-6)
    gn_params = gn.init(jax.random.key(2), x)

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def norm(p, x):
        return nn.swish(gn.apply(p, x))

    fns = {
        "conv3x3 forward": (jax.jit(conv), (x, kernel)),
        "conv3x3 forward + backward": (jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))), (x, kernel)),
        "GroupNorm+swish forward": (jax.jit(norm), (gn_params, x)),
        "GroupNorm+swish forward + backward": (jax.jit(jax.grad(lambda p, x: jnp.sum(norm(p, x) ** 2), argnums=(0, 1))), (gn_params, x)),
    }
    out = {}
    for name, (fn, fn_args) in fns.items():
        compiled = fn.lower(*fn_args).compile()
        out[name] = summarize(time_reps(lambda: jax.block_until_ready(compiled(*fn_args)), args.layer_reps, warmup=3))
    return out


# ----------------------------------------------------------------------------- torch side


def torch_side(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    case, hyper = json.loads(args.case), json.loads(args.hyper)
    built = build_train_step(case, hyper)
    model = built["model"]
    x0 = built["images"][0]
    t = torch.full((x0.shape[0],), 500)
    out: dict = {"parts": {}, "layers": {}, "torch_threads": torch.get_num_threads()}

    def eval_forward():
        model.eval()
        with torch.inference_mode():
            model(x0, t)
        model.train()

    def train_forward():
        with torch.no_grad():
            model(x0, t)

    parts = {
        "eval forward": eval_forward,
        "train forward": train_forward,
        "forward + backward": built["forward_backward"],
        "update (clip, Adam, EMA)": built["update"],
        "full step": built["one_step"],
    }
    built["one_step"]()  # grads exist for "update"
    for name, fn in parts.items():
        out["parts"][name] = summarize(time_reps(fn, args.reps, warmup=2))

    b, h, w, c = _layer_shapes(args.quick)
    x = torch.randn(b, c, h, w, requires_grad=True)
    convolution = torch.nn.Conv2d(c, c, 3, padding=1)
    gn = torch.nn.GroupNorm(min(32, c), c, eps=1e-6)

    def conv_fwd():
        with torch.no_grad():
            convolution(x)

    def conv_bwd():
        (convolution(x) ** 2).sum().backward()

    def gn_fwd():
        with torch.no_grad():
            torch.nn.functional.silu(gn(x))

    def gn_bwd():
        (torch.nn.functional.silu(gn(x)) ** 2).sum().backward()

    for name, fn in {"conv3x3 forward": conv_fwd, "conv3x3 forward + backward": conv_bwd,
                     "GroupNorm+swish forward": gn_fwd, "GroupNorm+swish forward + backward": gn_bwd}.items():
        out["layers"][name] = summarize(time_reps(fn, args.layer_reps, warmup=3))
    out["peak_rss_mib"] = peak_rss_mib()
    return out


# ----------------------------------------------------------------------------- driver


def _worker(side: str, args, extra: list[str], tmpdir: str) -> dict:
    out = os.path.join(tmpdir, f"{side}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--threads", str(args.threads), "--out", out,
           "--reps", str(args.reps), "--layer-reps", str(args.layer_reps), *(["--quick"] if args.quick else []), *extra]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise RuntimeError(f"{side} side failed")
    with open(out) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--layer-reps", type=int, default=20)
    parser.add_argument("--json", default=os.path.join(HERE, "profile.json"))
    parser.add_argument("--side", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--hyper", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        pin_threads(args.threads)
        if args.side == "jax":  # XLA:CPU's fusions as launch.py sets them (diffjax/runtime/xla_cpu.py)
            use_case_fusions(args.case)
        result = jax_side(args) if args.side == "jax" else torch_side(args)
        write_result(args.out, result)
        return

    case = cases_lib.cases(args.quick)["large"]
    loadavg = os.getloadavg()
    print(f"profiling the train step of {case['label']}, {args.threads} threads, load average {loadavg[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        j = _worker("jax", args, ["--case", json.dumps(case)], tmpdir)
        hyper = _hyper_of(case)
        t = _worker("torch", args, ["--case", json.dumps(case), "--hyper", json.dumps(hyper)], tmpdir)
    result = {"case": case, "threads": args.threads, "loadavg_before": loadavg, "loadavg_after": os.getloadavg(),
              "diffjax": j, "torch": t}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(render(result))


def _hyper_of(case: dict) -> dict:
    _, config = cases_lib.build_config(case)
    return _hyper(config)


def render(result: dict) -> str:
    j, t = result["diffjax"], result["torch"]
    lines = ["| part | diffjax ms | PyTorch ms | ratio |", "|---|---|---|---|"]
    for name in j["parts"]:
        a, b = j["parts"][name]["median_s"], t["parts"][name]["median_s"]
        lines.append(f"| {name} | {1e3 * a:.1f} | {1e3 * b:.1f} | {a / b:.2f} |")
    for name in j["layers"]:
        a, b = j["layers"][name]["median_s"], t["layers"][name]["median_s"]
        lines.append(f"| layer: {name} | {1e3 * a:.2f} | {1e3 * b:.2f} | {a / b:.2f} |")
    lines += ["", "| diffjax step variant | ms | vs full step |", "|---|---|---|"]
    full = j["variants"]["full step"]["median_s"]
    for name, stats in j["variants"].items():
        lines.append(f"| {name} | {1e3 * stats['median_s']:.1f} | {stats['median_s'] / full - 1:+.1%} |")
    c = j["compile"]
    lines += ["", "| compile | default (threefry partitionable) | threefry not partitionable |", "|---|---|---|",
              f"| jit(init) | {c['init_s']:.1f} s | {c['init_threefry_nonpartitionable_s']:.1f} s |",
              f"| train step | {c['step_s']:.1f} s | {c['step_threefry_nonpartitionable_s']:.1f} s |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
