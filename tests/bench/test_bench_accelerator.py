"""``python bench/run_benchmarks.py --accelerator --quick`` end to end on the CPU (tiny UNet),
with torch treated as absent (as in CI, where it is not installed), plus the report of a
run cut off after two stages and the background stage runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.subprocesses import REPO, subprocess_env

BENCH = os.path.join(REPO, "bench")


@pytest.mark.slow
def test_accelerator_quick_runs_end_to_end(tmp_path):
    doc = os.path.join(REPO, "docs", "performance.md")
    with open(doc) as f:
        doc_before = f.read()
    env = subprocess_env({"DIFFJAX_BENCH_NO_TORCH": "1"})  # compiles fast: the quick numbers mean nothing anyway
    out = tmp_path / "acc.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run_benchmarks.py"), "--accelerator", "--quick", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    stages = results["stages"]
    for name in ("peak", "jax_fp32", "jax_bf16", "jax_warm", "jax_sample"):
        assert stages[name]["status"] == "ok", (name, stages[name])
        assert stages[name]["complete"]
    for name in ("torch_eager", "torch_sample"):
        assert stages[name]["status"] == "skipped" and "not importable" in stages[name]["skipped"]
    # The options of #16 item 3 need a GPU: on the CPU they are skipped with the reason, never run.
    assert stages["jax_bf16_cudnn"]["status"] == "skipped: cuDNN flash attention needs an NVIDIA GPU (JAX backend cpu)"
    for name in ("jax_bf16_flags_autotune0", "jax_bf16_flags_nhwc", "jax_bf16_flags_lhs"):
        assert stages[name]["status"].startswith("skipped: XLA:GPU flags change nothing"), name
    assert stages["jax_bf16"]["xla_flags"] == env["XLA_FLAGS"]  # no GPU flags in the plain case
    # Each stage printed as it finished, in order.
    printed = [line.split("] ", 1)[1].split(":")[0] for line in proc.stdout.splitlines() if line.startswith("[")]
    assert printed[1:7] == ["peak", "jax_fp32", "torch_eager", "jax_bf16", "jax_warm", "jax_sample"]
    fp32, bf16 = stages["jax_fp32"], stages["jax_bf16"]
    assert fp32["flops"]["conv"] > 0.5 * fp32["flops"]["total"]
    assert bf16["flops"]["matmul_by_dtype"].get("bf16", 0) > 0.9 * bf16["flops"]["matmul"]
    assert fp32["step"]["median_s"] > 0 and bf16["step"]["median_s"] > 0
    assert stages["jax_sample"]["run"]["median_s"] > 0
    tables = (tmp_path / "acc_tables.md").read_text()
    assert "#### Train step, batch 4" in tables and "quick check" in tables
    assert "| attention `cudnn` | n/a | n/a | n/a | n/a s | n/a | skipped: cuDNN flash attention" in tables
    with open(doc) as f:
        assert f.read() == doc_before  # a --quick run never writes the doc


def test_report_of_a_cut_off_run():
    sys.path.insert(0, BENCH)
    import accelerator

    results = {
        "meta": {"date": "2026-12-01T00:00", "quick": False, "budget_s": 285, "versions": {"jax": "x"}, "wall_s": 100},
        "settings": dict(accelerator.SETTINGS["full"]),
        "cases": accelerator.cases(False, 128),
        "stages": {
            "peak": {"status": "ok", "device": {"device_kind": "NVIDIA H200", "backend": "gpu"},
                     "matmul": {"bf16": {"n": 8192, "tflop_per_s": 790.0}}},
            "jax_fp32": {"status": "killed at the deadline after 285 s", "init_s": 19.5, "lower_s": 7.0},
        },
    }
    text = accelerator.render(results)
    assert "| diffjax fp32 (XLA default precision) | not measured |" in text
    assert "jax_fp32 killed at the deadline" in text and "| 19.5 s | 7.0 s | n/a s |" in text


def test_report_of_the_options():
    sys.path.insert(0, BENCH)
    import accelerator

    the_cases = accelerator.cases(False, 128)
    the_cases.update(accelerator.option_cases(the_cases["bf16"], {"nhwc": "--xla_gpu_force_conv_nhwc=true"}))
    step = lambda ms: {"median_s": ms / 1e3}  # noqa: E731
    flops = lambda calls: dict(total=4.5e12, conv=3.9e12, dot=0.6e12, elementwise=0.0, reduce=0.0,  # noqa: E731
                               custom_calls=calls)
    results = {
        "meta": {"date": "2026-12-01T00:00", "quick": False, "budget_s": 285, "versions": {}, "wall_s": 100},
        "settings": dict(accelerator.SETTINGS["full"]), "cases": the_cases,
        "stages": {
            "jax_bf16": {"status": "ok", "step": step(32.0), "compile_s": 50.0, "xla_flags": "",
                         "flops": flops({})},
            "jax_bf16_cudnn": {"status": "ok", "step": step(24.0), "compile_s": 40.0,
                               "flops": flops({"__cudnn$fmhaSoftmax": 3, "__cudnn$fmhaSoftmaxBackward": 3})},
            "jax_bf16_flags_nhwc": {"status": "skipped: 12 s of budget left, needs >= 70 s"},
        },
    }
    text = accelerator.render(results)
    assert "| plain bf16 (attention `xla`, XLA's default flags) | 32.0 | 4000 | 1.000 | 50.0 s | 0 | ok |" in text
    assert "| attention `cudnn` | 24.0 | 5333 | 0.750 | 40.0 s | 6 | ok |" in text
    assert "| `--xla_gpu_force_conv_nhwc=true` | n/a | n/a | n/a | n/a s | n/a | skipped: 12 s of budget left" in text
    # The default flag sets are within diffjax's allow-list; --gpu-flags is parsed and checked.
    from diffjax.runtime.xla_gpu import parse_gpu_flags

    for flags in accelerator.GPU_FLAG_SETS.values():
        assert parse_gpu_flags(flags)
    assert accelerator.parse_flag_sets("a=--xla_gpu_autotune_level=1 --xla_gpu_force_conv_nhwc=true; b=") == {
        "a": "--xla_gpu_autotune_level=1 --xla_gpu_force_conv_nhwc=true", "b": ""}
    with pytest.raises(ValueError, match="not one of the XLA:GPU flags"):
        accelerator.parse_flag_sets("a=--xla_gpu_fast=1")


def test_background_stage(tmp_path):
    sys.path.insert(0, BENCH)
    import time

    import accelerator

    stages = accelerator.Stages(str(tmp_path), time.monotonic() + 120, verbose=False)
    stages.start_background("peak_bg", "peak", ["--matmul", "64", "--reps", "2"])
    result = stages.join("peak_bg")
    assert result["status"] == "ok" and result["matmul"]["bf16"]["n"] == 64
