"""The markdown report of ``run_benchmarks.py``: a table of the results and the machine.

The generated part of ``docs/performance.md`` lies between ``BEGIN`` and ``END`` markers;
text outside them (analysis written by hand) is kept when the report is regenerated.
"""

from __future__ import annotations

import os
from typing import Any

BEGIN = "<!-- BEGIN bench/run_benchmarks.py output: regenerated on every run -->"
END = "<!-- END bench/run_benchmarks.py output -->"

HEADER = """# Performance

How fast diffjax trains and samples, measured against PyTorch + diffusers at the same
architecture on the same CPU, with the same thread count, in one invocation of

```bash
pip install -e ".[bench]"
python bench/run_benchmarks.py            # full run (~15 min on 2 cores); --quick checks the script in ~2 min
```

which writes `bench/results.json` and the tables below. Ratios are diffjax time / PyTorch
time (below 1.0: diffjax is faster). Each framework runs in its own fresh process pinned to
the same CPUs; every time is the median of several repetitions after warm-up.

"""


def _f(value: Any, fmt: str = "{:.3g}") -> str:
    if value is None:
        return "n/a"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def _ok(flag: bool | None) -> str:
    if flag is None:
        return "n/a"
    return "**met**" if flag else "**not met**"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [BEGIN, ""]
    mode = "quick check (tiny configs, NOT the benchmark)" if meta["quick"] else "full"
    lines.append(f"## Results ({mode}, {meta['date']})")
    lines.append("")
    load = meta["load"]
    if meta.get("under_load"):
        lines.append(
            f"> **Measured under load**: other processes used {load['foreign_cores_mean']:.2f} cores on average "
            f"during the run (load average {load['loadavg_before'][0]:.2f} before it). Treat every time as "
            "unreliable; ratios are affected when the load changed between the two frameworks' runs."
        )
        lines.append("")

    lines.append("### Train step (forward, backward, clip, Adam, EMA)")
    lines.append("")
    lines.append("| case | params diffjax / diffusers | XLA:CPU YNNPACK fusions | diffjax s/step | PyTorch s/step | diffjax img/s | PyTorch img/s | time ratio | target ≤ 1.0 |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for key in ("large", "small"):
        entry = results["train_step"].get(key)
        if not entry:
            continue
        j, t = entry["diffjax"], entry["torch"]
        lines.append(
            f"| {entry['label']} | {j['params']:,} / {t['params']:,} | `{j.get('xla_cpu_ynn_fusions', '?') or 'none'}` "
            f"| {_f(j['step']['median_s'], '{:.3f}')} "
            f"| {_f(t['step']['median_s'], '{:.3f}')} | {_f(j['step']['img_per_s'], '{:.1f}')} "
            f"| {_f(t['step']['img_per_s'], '{:.1f}')} | {_f(entry['ratio'], '{:.2f}')} | {_ok(entry['ratio'] <= 1.0)} |"
        )
    lines.append("")
    large = results["train_step"].get("large", {}).get("diffjax", {})
    if large:
        lines.append(
            f"diffjax's step without a host sync between steps (as the training loop runs): "
            f"{_f(large.get('step_unsynced_mean_s'), '{:.3f}')} s/step. PyTorch: diffusers `UNet2DModel`, "
            f"`torch.optim.Adam` (default implementation), `clip_grad_norm_`, EMA by `torch._foreach_mul_/_foreach_add_`. "
            f"The fusions are each experiment's `config.runtime.xla_cpu_ynn_fusions`, as `launch.py` sets them "
            f"(`diffjax/runtime/xla_cpu.py`; `bench/xla_cpu_experiments.py` compares the settings)."
        )
        lines.append("")

    comp = results.get("compile")
    if comp:
        lines.append(f"### Compile time of a launch ({comp['label']})")
        lines.append("")
        lines.append("| | jit(init) | train step trace+lower | train step compile | total incl. imports | target |")
        lines.append("|---|---|---|---|---|---|")
        for name in ("cold", "warm"):
            c = comp[name]
            target = "" if name == "cold" else _ok(c["init_compile_s"] + c["step_lower_s"] + c["step_compile_s"] < 10.0) + " (< 10 s)"
            lines.append(
                f"| {name} | {_f(c['init_compile_s'], '{:.1f}')} s | {_f(c['step_lower_s'], '{:.1f}')} s "
                f"| {_f(c['step_compile_s'], '{:.1f}')} s | {_f(c['total_s'], '{:.1f}')} s | {target} |"
            )
        lines.append("")
        lines.append(
            f"Two fresh processes sharing a temporary `jax_compilation_cache_dir` with "
            f"`jax_persistent_cache_min_compile_time_secs={comp['min_compile_time']}` (as `launch.py --compilation_cache` "
            f"sets); cache entries after the cold run: {comp['cold']['cache_files_after']}. The target counts "
            "init + trace/lower + compile (imports excluded)."
        )
        lines.append("")

    samp = results.get("sampling")
    if samp:
        j, t = samp["diffjax"], samp["torch"]
        lines.append(f"### Sampling: {j['steps']}-step DDIM, batch {j['batch']} ({samp['label']})")
        lines.append("")
        lines.append("| | diffjax (one jit, `lax.scan`) | diffusers `DDIMPipeline` | ratio |")
        lines.append("|---|---|---|---|")
        lines.append(f"| wall time of the run | {_f(j['run']['median_s'], '{:.2f}')} s | {_f(t['run']['median_s'], '{:.2f}')} s | {_f(samp['ratio'], '{:.2f}')} |")
        lines.append(f"| one forward pass | {_f(j['forward']['median_s'] * 1e3, '{:.1f}')} ms | {_f(t['forward']['median_s'] * 1e3, '{:.1f}')} ms | {_f(samp['forward_ratio'], '{:.2f}')} |")
        lines.append(
            f"| loop overhead over {j['steps']} × forward (target ≤ 5%) | {_f(100 * j['overhead'], '{:+.1f}')}% {_ok(j['overhead'] <= 0.05)} "
            f"| {_f(100 * t['overhead'], '{:+.1f}')}% | |"
        )
        lines.append("")

    pipe = results.get("pipeline")
    if pipe:
        lines.append(f"### Input pipeline: `make_train_iterator(\"digits\")`, batch {pipe['batch']}")
        lines.append("")
        lines.append("| path | batches/s | setup to first batch | ratio to the train step's consumption | target ≥ 10× |")
        lines.append("|---|---|---|---|---|")
        for name in ("in_memory", "streaming"):
            p = pipe[name]
            lines.append(
                f"| {name}{' (default for digits)' if name == 'in_memory' else ' (tf.data, large data sets)'} "
                f"| {_f(p['batches_per_s'], '{:.0f}')} | {_f(p['setup_s'], '{:.1f}')} s | {_f(p['ratio'], '{:.0f}')}× | {_ok(p['ratio'] >= 10)} |"
            )
        lines.append("")
        lines.append(f"Consumption: the digits train step above, {_f(pipe['train_steps_per_s'], '{:.2f}')} steps/s.")
        streaming = pipe.get("streaming", {})
        if "median_batch_s" in streaming:
            lines.append(
                f"Streaming within an epoch: {_f(1.0 / streaming['median_batch_s'], '{:.0f}')} batches/s (median batch); "
                f"the slowest batch, at an epoch start, {_f(streaming['max_batch_s'], '{:.2f}')} s. Digits' epochs are "
                f"{streaming['steps_per_epoch']} batches, so on this data set the epoch starts dominate; the next epoch's "
                f"pipeline is opened on a thread during the current one, which hides the start on data sets whose "
                f"epochs outlast it (CIFAR-10: 390 batches of 128)."
            )
        lines.append("")

    fl = results.get("flops")
    if fl:
        lines.append(f"### FLOPs, utilisation and memory ({fl['label']})")
        lines.append("")
        lines.append("| quantity | value |")
        lines.append("|---|---|")
        lines.append(f"| XLA cost analysis of the train step | {_f(fl['gflop_per_step'], '{:.1f}')} GFLOP/step ({_f(fl['gflop_per_image'], '{:.2f}')} GFLOP/image) |")
        lines.append(f"| achieved (median step) | {_f(fl['achieved_gflop_per_s'], '{:.1f}')} GFLOP/s |")
        lines.append(f"| PyTorch at the same FLOP count | {_f(fl['torch_equiv_gflop_per_s'], '{:.1f}')} GFLOP/s |")
        lines.append(f"| float32 matmul {fl['matmul_n']}² (jnp / torch) | {_f(fl['matmul_gflop_per_s'], '{:.1f}')} / {_f(fl['torch_matmul_gflop_per_s'], '{:.1f}')} GFLOP/s |")
        lines.append(f"| utilisation = achieved / jnp matmul | {_f(100 * fl['utilisation'], '{:.0f}')}% |")
        lines.append(f"| one forward pass (eval, batch {fl['forward_batch']}) | {_f(fl['forward_gflop'], '{:.1f}')} GFLOP |")
        lines.append(
            f"| XLA memory analysis of the step | arguments {_f(fl['argument_mib'], '{:.0f}')} MiB, outputs {_f(fl['output_mib'], '{:.0f}')} MiB "
            f"(aliased/donated {_f(fl['alias_mib'], '{:.0f}')} MiB), temporaries {_f(fl['temp_mib'], '{:.0f}')} MiB; "
            f"peak estimate {_f(fl['peak_estimate_mib'], '{:.0f}')} MiB |"
        )
        lines.append(f"| process peak RSS (train step + sampling), diffjax / PyTorch | {_f(fl['jax_peak_rss_mib'], '{:.0f}')} / {_f(fl['torch_peak_rss_mib'], '{:.0f}')} MiB |")
        lines.append("")

    lines.append("### Machine and versions")
    lines.append("")
    lines.append("| | |")
    lines.append("|---|---|")
    lines.append(f"| CPU | {meta['cpu_model']}, {meta['cpu_count']} cores visible ({meta['cpu_flags']}) |")
    lines.append(f"| threads per framework | {meta['threads']} (CPU affinity {meta['cpus']}; torch.set_num_threads, OMP/MKL, XLA's pool follows the affinity) |")
    lines.append(f"| memory | {meta['mem_gib']:.0f} GiB |")
    lines.append(f"| kernel, Python | {meta['kernel']}, {meta['python']} |")
    lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + " |")
    lines.append(f"| load | other processes used {load['foreign_cores_mean']:.2f} cores on average during the run; "
                 f"load average before {load['loadavg_before'][0]:.2f}, after {load['loadavg_after'][0]:.2f} |")
    lines.append(f"| wall time of the whole run | {meta['wall_s'] / 60:.1f} min |")
    lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def write(path: str, results: dict[str, Any]) -> None:
    """Replace the generated block of ``path`` (or create the file with a header)."""
    block = render(results)
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            text = head + block.rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        text = HEADER + block
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
