"""One stage of ``run_benchmarks.py --accelerator``, in a fresh process on the default JAX/torch device.

    python bench/accel_worker.py peak        --out FILE --matmul N
    python bench/accel_worker.py jax_train   --out FILE --case JSON --cache-dir DIR [--init real|fill] [--reps R]
    python bench/accel_worker.py jax_launch  --out FILE --case JSON --cache-dir DIR
    python bench/accel_worker.py jax_sample  --out FILE --case JSON --sample-steps K --sample-batch B
    python bench/accel_worker.py torch_train --out FILE --case JSON --hyper JSON --modes fp32,tf32,bf16 [--compile]
    python bench/accel_worker.py torch_sample --out FILE --case JSON --hyper JSON --sample-steps K --sample-batch B

Unlike the CPU workers, nothing is pinned: JAX and torch use their default device (a GPU
when one is there, else the CPU, as in ``--quick`` on a CPU-only machine). The JAX stages
apply the case config's ``runtime.xla_gpu_flags`` as ``launch.py`` does, before JAX starts
(``diffjax.runtime.xla_gpu``; an ``XLA_FLAGS`` setting of the same flag wins), and record the
``XLA_FLAGS`` they ran with. Every stage
rewrites its ``--out`` file after each part it finishes, so a stage killed at the
benchmark's deadline still leaves what it measured. Times are medians of ``--reps`` after
warm-up, each step ended by ``block_until_ready`` / ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import peak_rss_mib, summarize, time_reps, write_result  # noqa: E402

T0 = time.perf_counter()


class Progress:
    """The stage's result dict, written to ``path`` on every ``save``."""

    def __init__(self, path: str):
        self.path = path
        self.data: dict = {"complete": False}

    def save(self, **updates) -> None:
        self.data.update(updates)
        self.data["elapsed_s"] = time.perf_counter() - T0
        write_result(self.path, self.data)


def _use_case_gpu_flags(case: dict) -> str:
    """``launch.py``'s ``use_gpu_flags`` for the case's ``config.runtime.xla_gpu_flags``: call
    before JAX starts a backend. Returns the ``XLA_FLAGS`` the process runs with."""
    from cases import build_config

    from diffjax.runtime.xla_gpu import use_gpu_flags

    _, config = build_config(case)
    use_gpu_flags(config.runtime.xla_gpu_flags)
    return os.environ.get("XLA_FLAGS", "")


def _device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    return dict(backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count(),
                jax=jax.__version__)


def _jax_matmul(n: int, dtype: str, precision: str | None, reps: int) -> dict:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=precision))
    stats = summarize(time_reps(lambda: f(a, b).block_until_ready(), reps, warmup=3))
    stats.update(n=n, dtype=dtype, precision=precision or "default",
                 tflop_per_s=2.0 * n**3 / stats["median_s"] / 1e12, tflop_per_s_best=2.0 * n**3 / stats["min_s"] / 1e12)
    return stats


def task_peak(args, prog: Progress) -> None:
    """Matmul peaks of JAX on this device: float32 at XLA's default precision (TF32 on an
    NVIDIA GPU since Ampere), float32 'highest', bfloat16."""
    prog.save(device=_device_info(), matmul={})
    for name, dtype, precision in (("bf16", "bfloat16", None), ("f32_default", "float32", None),
                                   ("f32_highest", "float32", "highest")):
        prog.data["matmul"][name] = _jax_matmul(args.matmul, dtype, precision, args.reps)
        prog.save()


def _state_and_step(case: dict, init: str, prog: Progress):
    """The recipe, train step and a state: ``real`` runs jit(init) (a launch's work; timed),
    ``fill`` fills the abstract state with constants (no init program to compile)."""
    import jax
    import jax.numpy as jnp
    from jax_worker import _hyper, _recipe

    from diffjax.models.denoiser import count_params
    from diffjax.runtime.mesh import make_mesh, replicated_sharding
    from diffjax.train.loop import abstract_train_state, make_init_fn
    from diffjax.train.optim import make_optimizer
    from diffjax.train.step import make_train_step

    config, recipe = _recipe(case)
    mesh = make_mesh(jax.devices()[:1])
    optimizer = make_optimizer(config.train)
    prog.save(hyper=_hyper(config), model_dtype=str(config.model.dtype), batch=config.train.batch_size)
    start = time.perf_counter()
    if init == "real":
        init_fn = jax.jit(make_init_fn(recipe, optimizer), out_shardings=replicated_sharding(mesh))
        state = jax.block_until_ready(init_fn(jax.random.PRNGKey(config.train.seed)))
    else:
        import numpy as np

        abstract = abstract_train_state(recipe, optimizer, mesh)
        state = jax.tree.map(
            lambda a: jax.device_put(np.full(a.shape, 0.01 if jnp.issubdtype(a.dtype, jnp.floating) else 0, a.dtype),
                                     a.sharding), abstract)
        state = jax.block_until_ready(state)
    prog.save(init=init, init_s=time.perf_counter() - start, params=count_params(state.params))
    step = make_train_step(recipe, optimizer, config.train.ema_decay, mesh)
    return config, recipe, mesh, state, step


def _batches(config, recipe, mesh, n: int = 4) -> list:
    import numpy as np

    from diffjax.runtime.mesh import global_batch

    rng = np.random.default_rng(0)
    b = config.train.batch_size
    return [global_batch(mesh, {"image": rng.uniform(-1, 1, (b, *recipe.input_shape)).astype(np.float32),
                                "label": np.zeros((b,), np.int32)}) for _ in range(n)]


def _use_cache(cache_dir: str | None) -> None:
    import jax

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _abstract_batch(config, recipe, mesh):
    import jax

    from diffjax.runtime.mesh import data_sharding

    b = config.train.batch_size
    return {"image": jax.ShapeDtypeStruct((b, *recipe.input_shape), "float32", sharding=data_sharding(mesh)),
            "label": jax.ShapeDtypeStruct((b,), "int32", sharding=data_sharding(mesh))}


def task_jax_train(args, prog: Progress) -> None:
    """diffjax's train step: a launch's compile work (init, trace+lower, compile), the FLOP
    count of the lowered step, then the timed steps. The step is lowered from abstract
    shapes, as a launch (and ``jax_launch``) does, so that its persistent-cache entry is
    the one a later process finds; ``--compile-only`` stops after compiling (to fill the
    cache ahead of a timed stage)."""
    import jax

    from diffjax.runtime.flops import lowered_flops, xla_cost_flops
    from diffjax.train.loop import abstract_train_state
    from diffjax.train.optim import make_optimizer

    _use_cache(args.cache_dir)
    case = json.loads(args.case)
    prog.save(case=case, xla_flags=_use_case_gpu_flags(case))
    prog.save(device=_device_info(), import_s=time.perf_counter() - T0)
    config, recipe, mesh, state, step = _state_and_step(case, args.init, prog)
    abstract_state = abstract_train_state(recipe, make_optimizer(config.train), mesh)
    start = time.perf_counter()
    lowered = step.lower(abstract_state, _abstract_batch(config, recipe, mesh))
    prog.save(lower_s=time.perf_counter() - start)
    start = time.perf_counter()
    count = lowered_flops(lowered, while_loops="trip_count")
    prog.save(flops=count.as_dict(), count_s=time.perf_counter() - start)
    start = time.perf_counter()
    compiled = lowered.compile()
    prog.save(compile_s=time.perf_counter() - start, launch_s=time.perf_counter() - T0)
    try:
        prog.save(xla_cost_flops=xla_cost_flops(compiled))  # on GPU: misses the cuDNN convolutions
    except Exception as e:  # noqa: BLE001 - not every backend implements it
        prog.save(xla_cost_flops=None, xla_cost_error=repr(e))
    if args.compile_only:
        return
    batches = _batches(config, recipe, mesh)
    holder = {"state": state, "i": 0}

    def one():
        holder["state"], metrics = compiled(holder["state"], batches[holder["i"] % len(batches)])
        jax.block_until_ready((holder["state"], metrics))
        holder["i"] += 1

    stats = summarize(time_reps(one, args.reps, warmup=args.warmup))
    b = config.train.batch_size
    stats.update(img_per_s=b / stats["median_s"], tflop_per_s=count.total / stats["median_s"] / 1e12)
    prog.save(step=stats)
    # Back to back without a sync per step, as the training loop runs.
    n = max(2, args.reps)
    s = holder["state"]
    start = time.perf_counter()
    for i in range(n):
        s, _ = compiled(s, batches[i % len(batches)])
    jax.block_until_ready(s)
    prog.save(step_unsynced_mean_s=(time.perf_counter() - start) / n, peak_rss_mib=peak_rss_mib())


def task_jax_launch(args, prog: Progress) -> None:
    """A second launch with the persistent cache the first one filled: jit(init) + the step."""
    import jax
    from jax_worker import _recipe

    from diffjax.runtime.mesh import make_mesh, replicated_sharding
    from diffjax.train.loop import abstract_train_state, make_init_fn
    from diffjax.train.optim import make_optimizer
    from diffjax.train.step import make_train_step

    _use_cache(args.cache_dir)
    case = json.loads(args.case)
    prog.save(case=case, xla_flags=_use_case_gpu_flags(case))
    prog.save(device=_device_info(), import_s=time.perf_counter() - T0)
    config, recipe = _recipe(case)
    mesh = make_mesh(jax.devices()[:1])
    optimizer = make_optimizer(config.train)
    start = time.perf_counter()
    init = jax.jit(make_init_fn(recipe, optimizer), out_shardings=replicated_sharding(mesh))
    init.lower(jax.random.PRNGKey(0)).compile()
    prog.save(init_compile_s=time.perf_counter() - start)
    state = abstract_train_state(recipe, optimizer, mesh)
    batch = _abstract_batch(config, recipe, mesh)
    step = make_train_step(recipe, optimizer, config.train.ema_decay, mesh)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    prog.save(step_lower_s=time.perf_counter() - start)
    start = time.perf_counter()
    lowered.compile()
    prog.save(step_compile_s=time.perf_counter() - start, launch_s=time.perf_counter() - T0,
              cache_files=sum(len(f) for _, _, f in os.walk(args.cache_dir)))


def task_jax_sample(args, prog: Progress) -> None:
    """A K-step DDIM run in one jit (``lax.scan``) against K x one jitted forward pass."""
    import jax
    import jax.numpy as jnp

    from diffjax.diffusion.samplers import sample
    from diffjax.diffusion.schedules import respace
    from diffjax.models.denoiser import make_denoise_fn
    from diffjax.runtime.flops import lowered_flops

    _use_cache(args.cache_dir)
    case = json.loads(args.case)
    prog.save(case=case, xla_flags=_use_case_gpu_flags(case))
    prog.save(device=_device_info(), steps=args.sample_steps, batch=args.sample_batch)
    config, recipe, mesh, state, _ = _state_and_step(case, "fill", prog)
    params = state.params
    schedule, _ = respace(recipe.family.schedule, f"ddim{args.sample_steps}")
    denoise = make_denoise_fn(recipe.model, num_timesteps=schedule.original_num_timesteps,
                              rescale_timesteps=recipe.family.rescale_timesteps)
    shape = (args.sample_batch, *recipe.input_shape)

    def draw(p, key):
        return sample(denoise, p, schedule, recipe.family.spec, key, shape, method="ddim", eta=0.0)

    x = jax.random.normal(jax.random.key(2), shape, jnp.float32)
    t = jnp.full((args.sample_batch,), 500, jnp.int32)
    if args.compile_only:
        start = time.perf_counter()
        jax.jit(lambda p, x, t: denoise(p, x, t, None)).lower(params, x, t).compile()
        prog.save(forward_compile_s=time.perf_counter() - start)
        start = time.perf_counter()
        jax.jit(draw).lower(params, jax.random.key(0)).compile()
        prog.save(sample_compile_s=time.perf_counter() - start)
        return
    start = time.perf_counter()
    fwd_lowered = jax.jit(lambda p, x, t: denoise(p, x, t, None)).lower(params, x, t)
    fwd = fwd_lowered.compile()
    prog.save(forward_compile_s=time.perf_counter() - start, forward_flops=lowered_flops(fwd_lowered).total)
    forward = summarize(time_reps(lambda: fwd(params, x, t).block_until_ready(), args.fwd_reps, warmup=2))
    prog.save(forward=forward)
    start = time.perf_counter()
    draw_c = jax.jit(draw).lower(params, jax.random.key(0)).compile()
    prog.save(sample_compile_s=time.perf_counter() - start)
    run = summarize(time_reps(lambda: draw_c(params, jax.random.key(1)).block_until_ready(), args.sample_reps, warmup=1))
    prog.save(run=run, overhead=run["median_s"] / (args.sample_steps * forward["median_s"]) - 1.0)


def _torch_available() -> str | None:
    if os.environ.get("DIFFJAX_BENCH_NO_TORCH"):  # tests: the path CI takes, where torch is not installed
        return "DIFFJAX_BENCH_NO_TORCH is set"
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means: skip the torch stages
        return f"{type(e).__name__}: {e}"
    return None


def _torch_matmul(torch, device, n: int, dtype, reps: int) -> dict:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run():
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()

    stats = summarize(time_reps(run, reps, warmup=3))
    stats.update(n=n, tflop_per_s=2.0 * n**3 / stats["median_s"] / 1e12)
    return stats


def _set_tf32(torch, on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def task_torch_train(args, prog: Progress) -> None:
    """diffusers' UNet2DModel trained the plain PyTorch way (``torch_worker.build_train_step``'s
    step on this device) in each ``--modes``: fp32 (TF32 off), tf32, bf16 (autocast, TF32 on);
    eager, or ``torch.compile``'d with ``--compile``."""
    missing = _torch_available()
    if missing:
        prog.save(skipped=f"torch/diffusers not importable ({missing})")
        return
    import diffusers
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prog.save(torch=torch.__version__, diffusers=diffusers.__version__, torch_device=str(device),
              torch_device_name=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", modes={})
    case, hyper = json.loads(args.case), json.loads(args.hyper)
    if args.matmul:
        peaks = {}
        for name, dtype, tf32 in (("bf16", torch.bfloat16, True), ("tf32", torch.float32, True), ("fp32", torch.float32, False)):
            if name == "tf32" and device.type != "cuda":
                continue
            _set_tf32(torch, tf32)
            peaks[name] = _torch_matmul(torch, device, args.matmul, dtype, args.reps)
        prog.save(matmul=peaks)
    for mode in args.modes.split(","):
        if mode == "tf32" and device.type != "cuda":
            prog.data["modes"][mode] = {"skipped": "TF32 is a CUDA mode"}
            prog.save()
            continue
        _set_tf32(torch, mode != "fp32")
        built = _build_torch_step(torch, case, hyper, device, autocast=mode == "bf16", compile_model=args.compile)
        entry = {"params": sum(p.numel() for p in built["model"].parameters()), "compiled": args.compile}
        start = time.perf_counter()
        built["one_step"]()
        entry["first_step_s"] = time.perf_counter() - start  # includes torch.compile's compilation
        stats = summarize(time_reps(built["one_step"], args.reps, warmup=args.warmup))
        stats["img_per_s"] = hyper["batch_size"] / stats["median_s"]
        entry["step"] = stats
        entry["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mib()
        prog.data["modes"][mode] = entry
        prog.save()
        del built
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def _build_torch_step(torch, case: dict, hyper: dict, device, autocast: bool, compile_model: bool) -> dict:
    """``torch_worker.build_train_step`` on ``device``, synchronised, optionally under bf16 autocast."""
    from torch_worker import build_train_step

    built = build_train_step(case, hyper)
    model = built["model"].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    # Rebuild the optimiser and EMA on the device (build_train_step made them on the CPU).
    optimizer = torch.optim.Adam(params, lr=hyper["lr"], betas=(hyper["adam_b1"], hyper["adam_b2"]),
                                 eps=hyper["adam_eps"], weight_decay=hyper["weight_decay"])
    ema = [p.detach().clone() for p in params]
    decay = hyper["ema_decay"]
    batch, timesteps = hyper["batch_size"], hyper["timesteps"]
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float().to(device)
    images = [x.to(device) for x in built["images"]]
    net = torch.compile(model) if compile_model else model
    counter = {"i": 0}
    model.train()

    def one_step():
        x0 = images[counter["i"] % len(images)]
        counter["i"] += 1
        t = torch.randint(0, timesteps, (batch,), device=device)
        noise = torch.randn_like(x0)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = net(x_t, t).sample
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hyper["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, hyper["grad_clip"])
        optimizer.step()
        with torch.no_grad():
            torch._foreach_mul_(ema, decay)
            torch._foreach_add_(ema, [p.detach() for p in params], alpha=1.0 - decay)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    return dict(model=model, one_step=one_step)


def task_torch_sample(args, prog: Progress) -> None:
    """diffusers' DDIMPipeline over the same UNet (eval, TF32 on as JAX's default f32
    precision is on a GPU), and one forward pass."""
    missing = _torch_available()
    if missing:
        prog.save(skipped=f"torch/diffusers not importable ({missing})")
        return
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _set_tf32(torch, True)
    case, hyper = json.loads(args.case), json.loads(args.hyper)
    kwargs = dict(case["torch_unet"])
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        kwargs[key] = tuple(kwargs[key])
    torch.manual_seed(0)
    model = UNet2DModel(**kwargs).to(device).eval()
    timesteps = hyper["timesteps"]
    scheduler = DDIMScheduler(num_train_timesteps=timesteps, beta_start=1e-4 * 1000 / timesteps,
                              beta_end=0.02 * 1000 / timesteps, beta_schedule="linear", clip_sample=True,
                              prediction_type="epsilon")
    pipeline = DDIMPipeline(unet=model, scheduler=scheduler).to(device)
    pipeline.set_progress_bar_config(disable=True)
    b, c, s = args.sample_batch, kwargs["in_channels"], kwargs["sample_size"]
    x = torch.randn(b, c, s, s, device=device)
    t = torch.full((b,), 500, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.inference_mode():
            model(x, t)
        sync()

    def run():
        pipeline(batch_size=b, generator=torch.Generator(device=device).manual_seed(0), eta=0.0,
                 num_inference_steps=args.sample_steps, output_type="np")
        sync()

    prog.save(steps=args.sample_steps, batch=b, torch=torch.__version__, torch_device=str(device))
    forward_stats = summarize(time_reps(forward, args.fwd_reps, warmup=2))
    prog.save(forward=forward_stats)
    run_stats = summarize(time_reps(run, args.sample_reps, warmup=1))
    prog.save(run=run_stats, overhead=run_stats["median_s"] / (args.sample_steps * forward_stats["median_s"]) - 1.0)


TASKS = {"peak": task_peak, "jax_train": task_jax_train, "jax_launch": task_jax_launch, "jax_sample": task_jax_sample,
         "torch_train": task_torch_train, "torch_sample": task_torch_sample}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--case")
    parser.add_argument("--hyper")
    parser.add_argument("--cache-dir")
    parser.add_argument("--init", choices=["real", "fill"], default="real")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=0)
    parser.add_argument("--modes", default="fp32,tf32,bf16")
    parser.add_argument("--compile", action="store_true", help="torch_train: torch.compile the model")
    parser.add_argument("--compile-only", action="store_true", help="jax_train: stop after compiling")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--sample-batch", type=int, default=128)
    parser.add_argument("--sample-reps", type=int, default=3)
    parser.add_argument("--fwd-reps", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    prog = Progress(args.out)
    prog.save(task=args.task)
    TASKS[args.task](args, prog)
    prog.save(complete=True)


if __name__ == "__main__":
    main()
