"""Compile-time experiments on the CPU (#16 item 4): what cuts a launch's compile work.

    python bench/compile_experiments.py export          # DDPM CIFAR-10 UNet step, batch 8 (~5 min on 2 cores)
    python bench/compile_experiments.py scan            # N identical res blocks: unrolled vs nn.scan (~2 min)
    python bench/compile_experiments.py flat_update     # Adam + EMA + NaN guard per leaf vs on one flat vector
    python bench/compile_experiments.py parts           # compile time of the step's parts
    python bench/compile_experiments.py all --quick     # tiny configs

Each measurement runs in a fresh process (``--worker``), as a launch would, and the A/B
pairs are interleaved (A, B, A, B, ...) so that a change in the machine's load hits both.

* ``export``: a launch that traces and lowers diffjax's train step (``jit``) against one that
  deserialises a ``jax.export`` of it (serialised once, ahead), each cold (empty persistent
  compilation cache) and warm (the cache the cold launch filled). Phases: trace+lower or
  deserialise, compile (or load from the cache), first step.
* ``scan``: a train step (loss gradient + Adam) of ``--blocks`` identical
  ``diffjax.models.blocks.ResBlock``s at 32x32x128, as a Python loop of blocks (as diffjax's
  UNet builds them) and as one ``nn.scan`` over stacked params: compile time and step time.
* ``parts``: compile time of the parts of the train step (eval forward, loss gradient
  without and with dropout, the whole step), with the compiled module's fusion and while-loop
  counts: where a launch's compile time goes.
* ``flat_update``: diffjax's update (``optax`` Adam with clipping, EMA, and the
  ``jnp.where(finite, new, old)`` guard) applied leaf by leaf, as ``diffjax/train/step.py``
  does, against the same update on the params raveled into one vector
  (``jax.flatten_util.ravel_pytree``): compile time and step time of the whole train step.

Writes ``bench/compile_experiments.json`` and prints a table.
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
from common import REPO, pin_threads, summarize, time_reps, use_case_fusions, write_result  # noqa: E402

T0 = time.perf_counter()


def _case(quick: bool) -> dict:
    return cases_lib.cases(quick)["large"]


# ----------------------------------------------------------------------------- workers


def _step_parts(case):
    import jax
    import jax.numpy as jnp
    from jax_worker import _recipe

    from diffjax.runtime.mesh import data_sharding, make_mesh
    from diffjax.train.loop import abstract_train_state
    from diffjax.train.optim import make_optimizer
    from diffjax.train.step import make_train_step

    config, recipe = _recipe(case)
    mesh = make_mesh(jax.devices()[:1])
    optimizer = make_optimizer(config.train)
    state = abstract_train_state(recipe, optimizer, mesh)
    b = config.train.batch_size
    batch = {"image": jax.ShapeDtypeStruct((b, *recipe.input_shape), jnp.float32, sharding=data_sharding(mesh)),
             "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data_sharding(mesh))}
    return config, recipe, mesh, optimizer, state, batch, make_train_step(recipe, optimizer, config.train.ema_decay, mesh)


def _concrete(abstract):
    import jax
    import numpy as np

    return jax.tree.map(lambda a: jax.device_put(np.full(a.shape, 0.01 if np.issubdtype(a.dtype, np.floating) else 0,
                                                         a.dtype), a.sharding), abstract)


def _flat_step(step, state, batch):
    """The step over flat lists of arrays (jax.export serialises no custom pytree nodes)."""
    import jax

    tree_s, tree_b = jax.tree.structure(state), jax.tree.structure(batch)

    def flat_step(ls, lb):
        new, metrics = step(jax.tree.unflatten(tree_s, ls), jax.tree.unflatten(tree_b, lb))
        return jax.tree.leaves(new), metrics

    return jax.jit(flat_step, donate_argnums=0), jax.tree.leaves(state), jax.tree.leaves(batch)


def worker_export_save(args) -> dict:
    from jax import export

    case = json.loads(args.case)
    *_, state, batch, step = _step_parts(case)
    start = time.perf_counter()
    flat, ls, lb = _flat_step(step, state, batch)
    exp = export.export(flat)(ls, lb)
    blob = exp.serialize()
    with open(args.path, "wb") as f:
        f.write(blob)
    return {"export_s": time.perf_counter() - start, "bytes": len(blob)}


def worker_launch(args) -> dict:
    """One launch: jit (trace + lower) or export (deserialise), compile, first step."""
    import jax

    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    case = json.loads(args.case)
    out = {"import_s": time.perf_counter() - T0}
    config, recipe, mesh, optimizer, state, batch, step = _step_parts(case)
    start = time.perf_counter()
    if args.how == "jit":
        lowered = step.lower(state, batch)
    else:
        from jax import export

        with open(args.path, "rb") as f:
            exp = export.deserialize(bytearray(f.read()))
        lowered = jax.jit(exp.call, donate_argnums=0).lower(jax.tree.leaves(state), jax.tree.leaves(batch))
    out["trace_lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    out["compile_s"] = time.perf_counter() - start
    s, b = _concrete(state), _concrete(batch)
    if args.how != "jit":
        s, b = jax.tree.leaves(s), jax.tree.leaves(b)
    start = time.perf_counter()
    s, metrics = compiled(s, b)
    jax.block_until_ready(metrics)
    out["first_step_s"] = time.perf_counter() - start
    out["total_s"] = time.perf_counter() - T0
    return out


def _res_stack(blocks: int, ch: int, scan: bool):
    import flax.linen as nn
    import jax.numpy as jnp

    from diffjax.models.blocks import ResBlock

    class Loop(nn.Module):
        @nn.compact
        def __call__(self, x, emb):
            for i in range(blocks):
                x = ResBlock(ch, dropout=0.0, name=f"res_{i}")(x, emb, train=False)
            return x

    class Body(nn.Module):
        @nn.compact
        def __call__(self, x, emb):
            return ResBlock(ch, dropout=0.0, name="res")(x, emb, train=False), None

    class Scanned(nn.Module):
        @nn.compact
        def __call__(self, x, emb):
            stack = nn.scan(Body, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                            length=blocks)
            x, _ = stack(name="blocks")(x, emb)
            return x

    del jnp
    return Scanned() if scan else Loop()


def worker_scan(args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    model = _res_stack(args.blocks, args.ch, args.how == "scan")
    x = jnp.ones((args.batch, args.size, args.size, args.ch))
    emb = jnp.ones((args.batch, 4 * args.ch))
    start = time.perf_counter()
    params = jax.jit(model.init)(jax.random.key(0), x, emb)["params"]
    init_s = time.perf_counter() - start
    opt = optax.adam(1e-4)
    opt_state = opt.init(params)

    def step(params, opt_state, x, emb):
        grads = jax.grad(lambda p: jnp.mean(model.apply({"params": p}, x, emb) ** 2))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    start = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x, emb)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    holder = {"p": params, "o": opt_state}

    def one():
        holder["p"], holder["o"] = compiled(holder["p"], holder["o"], x, emb)
        jax.block_until_ready(holder["p"])

    step_stats = summarize(time_reps(one, args.reps, warmup=1))
    return {"init_s": init_s, "lower_s": lower_s, "compile_s": compile_s, "step": step_stats,
            "params": sum(v.size for v in jax.tree.leaves(params))}


def _flat_train_step(recipe, optimizer, ema_decay, mesh):
    """diffjax's ``train_step`` with the update (optimizer, EMA, NaN guard) on one flat vector."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.flatten_util import ravel_pytree

    from diffjax.diffusion.gaussian import q_sample
    from diffjax.diffusion.losses import training_losses
    from diffjax.models.denoiser import make_denoise_fn
    from diffjax.runtime.mesh import data_sharding, replicated_sharding

    diffusion = recipe.family

    def step(flat, batch):
        # flat: (step, params_vec, ema_vec, opt_state over the vector, sampler_state, rng); unravel is static.
        n, pvec, evec, opt_state, sampler_state, rng = flat
        x0 = batch["image"]
        key = jax.random.fold_in(rng, n)
        key_t, key_noise, key_dropout, _ = jax.random.split(key, 4)
        schedule = diffusion.schedule
        t, weights = diffusion.timestep_sampler.sample(sampler_state, key_t, x0.shape[0])
        noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
        x_t = q_sample(schedule, x0, t, noise)
        denoise = make_denoise_fn(recipe.model, num_timesteps=schedule.original_num_timesteps,
                                  rescale_timesteps=recipe.family.rescale_timesteps, train=True, dropout_key=key_dropout)

        def loss_fn(pv):
            out = denoise(unravel(pv), x_t, schedule.timestep_map[t], None)
            terms = training_losses(diffusion.spec, diffusion.objective, schedule, out, x0, x_t, t, noise)
            return jnp.mean(weights * terms["loss"]), terms

        (loss, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(pvec)
        grad_norm = jnp.sqrt(jnp.sum(g * g))
        updates, new_opt = optimizer.update(g, opt_state, pvec)
        new_p = optax.apply_updates(pvec, updates)
        new_e = evec * ema_decay + (1.0 - ema_decay) * new_p
        new_sampler = diffusion.timestep_sampler.update(sampler_state, t, terms["loss"])
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = (n + 1, new_p, new_e, new_opt, new_sampler, rng)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, flat)
        return new, {"loss": loss, "grad_norm": grad_norm}

    unravel = None

    def build(params_abstract):
        nonlocal unravel
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), params_abstract)
        vec, unravel = ravel_pytree(zeros)
        return vec

    rep = replicated_sharding(mesh)
    jitted = jax.jit(step, in_shardings=(rep, data_sharding(mesh)), out_shardings=(rep, rep), donate_argnums=0)
    return jitted, build


def worker_flat(args) -> dict:
    import jax
    import jax.numpy as jnp

    case = json.loads(args.case)
    config, recipe, mesh, optimizer, state, batch, step = _step_parts(case)
    out = {}
    if args.how == "flat":
        step, build = _flat_train_step(recipe, optimizer, config.train.ema_decay, mesh)
        vec = build(state.params)
        n = vec.shape[0]
        vec_abs = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=state.step.sharding)
        opt_abs = jax.eval_shape(optimizer.init, vec_abs)
        opt_abs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=state.step.sharding), opt_abs)
        state = (state.step, vec_abs, vec_abs, opt_abs, state.sampler_state, state.rng)
        out["leaves"] = len(jax.tree.leaves(state))
    else:
        out["leaves"] = len(jax.tree.leaves(state))
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    out["lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    out["compile_s"] = time.perf_counter() - start
    s, b = _concrete(state), _concrete(batch)
    holder = {"s": s}

    def one():
        holder["s"], m = compiled(holder["s"], b)
        jax.block_until_ready(m)

    out["step"] = summarize(time_reps(one, args.reps, warmup=1))
    return out


def worker_parts(args) -> dict:
    """Compile time of a part of the train step: the eval forward, the loss gradient without
    and with dropout, the whole step (gradient + clip + Adam + EMA + NaN guard)."""
    import jax
    import jax.numpy as jnp

    from diffjax.diffusion.gaussian import q_sample
    from diffjax.diffusion.losses import training_losses
    from diffjax.models.denoiser import make_denoise_fn

    case = json.loads(args.case)
    config, recipe, mesh, optimizer, state, batch, step = _step_parts(case)
    diffusion = recipe.family
    schedule = diffusion.schedule
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state.params)
    x0 = jax.ShapeDtypeStruct(batch["image"].shape, jnp.float32)

    def loss_grad(p, x0, key, train):
        t = jax.random.randint(key, (x0.shape[0],), 0, schedule.num_timesteps)
        noise = jax.random.normal(key, x0.shape)
        x_t = q_sample(schedule, x0, t, noise)
        denoise = make_denoise_fn(recipe.model, num_timesteps=schedule.original_num_timesteps,
                                  rescale_timesteps=recipe.family.rescale_timesteps, train=train,
                                  dropout_key=key if train else None)

        def loss(p):
            out = denoise(p, x_t, schedule.timestep_map[t], None)
            return jnp.mean(training_losses(diffusion.spec, diffusion.objective, schedule, out, x0, x_t, t, noise)["loss"])

        return jax.grad(loss)(p)

    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    if args.how == "forward":
        denoise = make_denoise_fn(recipe.model, num_timesteps=1000, rescale_timesteps=recipe.family.rescale_timesteps)
        t = jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32)
        lowered = jax.jit(lambda p, x, t: denoise(p, x, t, None)).lower(params, x0, t)
    elif args.how in ("grad", "grad_dropout"):
        lowered = jax.jit(lambda p, x, k: loss_grad(p, x, k, args.how == "grad_dropout")).lower(params, x0, key)
    else:
        lowered = step.lower(state, batch)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return {"compile_s": compile_s, "fusions": compiled.as_text().count(" fusion("),
            "while_loops": compiled.as_text().count(" while(")}


WORKERS = {"export_save": worker_export_save, "launch": worker_launch, "scan": worker_scan, "flat": worker_flat, "parts": worker_parts}


# ----------------------------------------------------------------------------- driver


def _run(task: str, threads: int, tmpdir: str, **kw) -> dict:
    out = os.path.join(tmpdir, f"{task}_{time.monotonic_ns()}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", task, "--out", out, "--threads", str(threads)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise RuntimeError(f"{task} failed")
    with open(out) as f:
        result = json.load(f)
    result["wall_s"] = time.perf_counter() - start
    result["loadavg"] = os.getloadavg()[0]
    return result


def exp_export(args, tmpdir) -> dict:
    case = json.dumps(_case(args.quick))
    path = os.path.join(tmpdir, "step.exported")
    res = {"save": _run("export_save", args.threads, tmpdir, case=case, path=path), "runs": []}
    print(f"export: serialised in {res['save']['export_s']:.1f} s, {res['save']['bytes'] / 2**20:.1f} MiB", flush=True)
    caches = {how: os.path.join(tmpdir, f"cache_{how}") for how in ("jit", "export")}
    for d in caches.values():
        os.makedirs(d)
    for rep in range(args.reps_launch):
        for how in ("jit", "export"):
            kind = "cold" if rep == 0 else "warm"
            r = _run("launch", args.threads, tmpdir, case=case, how=how, cache_dir=caches[how], path=path)
            r.update(how=how, kind=kind)
            res["runs"].append(r)
            print(f"  {how:6s} {kind}: trace+lower/deserialise {r['trace_lower_s']:.2f} s, compile {r['compile_s']:.2f} s, "
                  f"first step {r['first_step_s']:.2f} s, process total {r['total_s']:.1f} s (load {r['loadavg']:.1f})",
                  flush=True)
    return res


def exp_scan(args, tmpdir) -> dict:
    res = {"blocks": args.blocks, "runs": []}
    size, ch, batch = (8, 32, 2) if args.quick else (32, 128, 8)
    for _ in range(args.reps_launch):
        for how in ("loop", "scan"):
            r = _run("scan", args.threads, tmpdir, how=how, blocks=args.blocks, ch=ch, size=size, batch=batch,
                     reps=args.reps)
            r.update(how=how, shape=[batch, size, size, ch])
            res["runs"].append(r)
            print(f"  scan {how:5s} x{args.blocks} at {batch}x{size}x{size}x{ch}: lower {r['lower_s']:.2f} s, compile "
                  f"{r['compile_s']:.2f} s, step {r['step']['median_s'] * 1e3:.0f} ms (load {r['loadavg']:.1f})", flush=True)
    return res


def exp_flat(args, tmpdir) -> dict:
    res = {"runs": []}
    cases = [_case(True)] if args.quick else [_case(True), _case(False)]
    for case in cases:
        for _ in range(args.reps_launch):
            for how in ("per_leaf", "flat"):
                r = _run("flat", args.threads, tmpdir, how=how, case=json.dumps(case), reps=args.reps)
                r.update(how=how, label=case["label"])
                res["runs"].append(r)
                print(f"  {case['label']}: {how:8s} leaves {r['leaves']}, lower {r['lower_s']:.2f} s, compile "
                      f"{r['compile_s']:.2f} s, step {r['step']['median_s'] * 1e3:.0f} ms (load {r['loadavg']:.1f})",
                      flush=True)
    return res


def exp_parts(args, tmpdir) -> dict:
    res = {"runs": []}
    cases = [_case(True)] if args.quick else [_case(True), _case(False)]
    for case in cases:
        for _ in range(args.reps_launch):
            for how in ("forward", "grad", "grad_dropout", "step"):
                r = _run("parts", args.threads, tmpdir, how=how, case=json.dumps(case))
                r.update(how=how, label=case["label"])
                res["runs"].append(r)
                print(f"  {case['label']}: {how:12s} compile {r['compile_s']:.2f} s, {r['fusions']} fusions, "
                      f"{r['while_loops']} while loops (load {r['loadavg']:.1f})", flush=True)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", default="all", choices=["all", "export", "scan", "flat_update", "parts"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", default=os.path.join(HERE, "compile_experiments.json"))
    parser.add_argument("--reps-launch", type=int, default=3, help="launches per variant (first is cold for export)")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per launch")
    parser.add_argument("--blocks", type=int, default=6)
    # worker
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--out")
    parser.add_argument("--case")
    parser.add_argument("--how")
    parser.add_argument("--cache-dir")
    parser.add_argument("--path")
    parser.add_argument("--ch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.worker:
        pin_threads(args.threads)
        use_case_fusions(args.case)
        result = WORKERS[args.worker](args)
        import jax

        result.update(jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
        write_result(args.out, result)
        return
    results = {"date": time.strftime("%Y-%m-%dT%H:%M"), "quick": args.quick, "threads": args.threads,
               "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="diffjax_compile_") as tmpdir:
        todo = ["export", "scan", "flat_update", "parts"] if args.experiment == "all" else [args.experiment]
        for name in todo:
            print(f"[{name}]", flush=True)
            results[name] = {"export": exp_export, "scan": exp_scan, "flat_update": exp_flat, "parts": exp_parts}[name](args, tmpdir)
            results["loadavg_after"] = os.getloadavg()
            previous = {}
            if os.path.exists(args.json) and not args.quick:
                with open(args.json) as f:
                    previous = json.load(f)
            previous.update(results)
            write_result(args.json if not args.quick else os.path.join(tmpdir, "quick.json"), previous)
    print(f"wrote {args.json}" if not args.quick else "quick run: nothing written")


if __name__ == "__main__":
    main()
