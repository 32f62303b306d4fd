"""PyTorch/diffusers reference of the benchmarks; run by ``run_benchmarks.py`` in a fresh process.

    python bench/torch_worker.py train --case JSON --hyper JSON --threads N --out FILE [--reps R] [--sample-steps K]

The same train step as diffjax's, written the usual PyTorch way: diffusers'
``UNet2DModel`` with the matched config in train mode (dropout on), t uniform in [0, T),
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps-MSE loss, backward, global-norm
gradient clipping (when the diffjax config clips), ``torch.optim.Adam`` and an EMA of the
params with ``torch._foreach_mul_`` / ``torch._foreach_add_``. With ``--sample-steps`` it
also times diffusers' ``DDIMPipeline`` (its DDIMScheduler loop over the same UNet, eval
mode) and one forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import peak_rss_mib, pin_threads, summarize, time_reps, write_result  # noqa: E402

# torch and diffusers are imported inside the functions: pin_threads (in main) must set the
# thread counts before torch's OpenMP pool starts.


def _linear_alphas_cumprod(torch, timesteps: int):
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()


def _matmul_gflops(torch, n: int, reps: int) -> dict:
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = time_reps(lambda: torch.mm(a, b), reps, warmup=2)
    stats = summarize(times)
    stats.update(n=n, gflop_per_s=2.0 * n**3 / stats["median_s"] / 1e9, gflop_per_s_best=2.0 * n**3 / stats["min_s"] / 1e9)
    return stats


def build_train_step(case: dict, hyper: dict, adam_foreach=None) -> dict:
    """The torch model, optimiser, EMA and step closures of a case (see the module doc)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    if hyper["schedule"] != "linear" or hyper["mean_type"] != "eps" or hyper["objective"] != "simple":
        raise ValueError(f"the torch reference implements linear/eps/L_simple only, not {hyper}")
    unet_kwargs = dict(case["torch_unet"])
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        unet_kwargs[key] = tuple(unet_kwargs[key])
    model = UNet2DModel(**unet_kwargs)
    batch, timesteps = hyper["batch_size"], hyper["timesteps"]
    channels, size = unet_kwargs["in_channels"], unet_kwargs["sample_size"]
    alphas_cumprod = _linear_alphas_cumprod(torch, timesteps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params, lr=hyper["lr"], betas=(hyper["adam_b1"], hyper["adam_b2"]), eps=hyper["adam_eps"],
        weight_decay=hyper["weight_decay"], foreach=adam_foreach,
    )
    ema = [p.detach().clone() for p in params]
    decay = hyper["ema_decay"]
    images = [torch.rand(batch, channels, size, size) * 2 - 1 for _ in range(4)]
    counter = {"i": 0}
    model.train()

    def forward_backward():
        x0 = images[counter["i"] % len(images)]
        counter["i"] += 1
        t = torch.randint(0, timesteps, (batch,))
        noise = torch.randn_like(x0)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
        loss = torch.nn.functional.mse_loss(model(x_t, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def update():
        if hyper["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, hyper["grad_clip"])
        optimizer.step()
        with torch.no_grad():
            torch._foreach_mul_(ema, decay)
            torch._foreach_add_(ema, [p.detach() for p in params], alpha=1.0 - decay)

    def one_step():
        loss = forward_backward()
        update()
        return loss

    return dict(model=model, params=params, one_step=one_step, forward_backward=forward_backward, update=update,
                images=images, unet_kwargs=unet_kwargs)


def task_train(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    case, hyper = json.loads(args.case), json.loads(args.hyper)
    built = build_train_step(case, hyper, args.adam_foreach)
    model, one_step, unet_kwargs = built["model"], built["one_step"], built["unet_kwargs"]
    result = {
        "case": case, "hyper": hyper, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "params": sum(p.numel() for p in model.parameters()),
    }
    batch, timesteps = hyper["batch_size"], hyper["timesteps"]
    channels, size = unet_kwargs["in_channels"], unet_kwargs["sample_size"]

    times = time_reps(one_step, args.reps, warmup=args.warmup)
    result["step"] = summarize(times)
    result["step"]["img_per_s"] = batch / result["step"]["median_s"]
    result["adam_foreach"] = args.adam_foreach

    if args.matmul:
        result["matmul"] = _matmul_gflops(torch, args.matmul, reps=max(3, args.reps))

    if args.sample_steps:
        from diffusers import DDIMPipeline, DDIMScheduler

        model.eval()
        scheduler = DDIMScheduler(
            num_train_timesteps=timesteps, beta_start=1e-4 * 1000 / timesteps, beta_end=0.02 * 1000 / timesteps,
            beta_schedule="linear", clip_sample=True, prediction_type="epsilon",
        )
        pipeline = DDIMPipeline(unet=model, scheduler=scheduler)
        pipeline.set_progress_bar_config(disable=True)
        x = torch.randn(args.sample_batch, channels, size, size)
        t = torch.full((args.sample_batch,), 500)

        def forward():
            with torch.inference_mode():
                model(x, t)

        def run():
            generator = torch.Generator().manual_seed(0)
            pipeline(batch_size=args.sample_batch, generator=generator, eta=0.0,
                     num_inference_steps=args.sample_steps, output_type="np")

        forward_stats = summarize(time_reps(forward, args.fwd_reps, warmup=2))
        run_stats = summarize(time_reps(run, args.sample_reps, warmup=1))
        result["sampling"] = dict(
            steps=args.sample_steps, batch=args.sample_batch, forward=forward_stats, run=run_stats,
            scheduler_timesteps=[int(v) for v in pipeline.scheduler.timesteps[:3]] + ["..."],
            overhead=run_stats["median_s"] / (args.sample_steps * forward_stats["median_s"]) - 1.0,
        )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["train"])
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--hyper", required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--adam-foreach", type=lambda s: None if s == "default" else s == "true", default=None,
                        help="torch.optim.Adam's foreach: true, false or default (torch's choice)")
    parser.add_argument("--matmul", type=int, default=0)
    parser.add_argument("--sample-steps", type=int, default=0)
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--sample-reps", type=int, default=3)
    parser.add_argument("--fwd-reps", type=int, default=5)
    args = parser.parse_args()
    threads = pin_threads(args.threads)
    result = task_train(args)
    import diffusers
    import torch

    result["threads"] = threads
    result["torch_version"] = torch.__version__
    result["diffusers_version"] = diffusers.__version__
    result["torch_parallel_info"] = torch.__config__.parallel_info()
    write_result(args.out, result)


if __name__ == "__main__":
    main()
