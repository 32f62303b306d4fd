"""The comparison report on fake run directories (no training)."""

import json
import os

import numpy as np

from diffjax.run.compare import load_run, main, summary_table, write_report
from tests.support.subprocesses import run_python
from tests.support.train_utils import toy_config


def make_run(root, name, *, schedule="cosine", objective="simple", var_type="fixed_large", metrics=True,
             nll_chain=None, quality_steps=(), vb=False):
    """A workdir as training and evaluation would leave it."""
    path = os.path.join(root, name)
    os.makedirs(os.path.join(path, "eval"))
    config = toy_config()
    config.experiment = f"fake_{name}"
    config.diffusion.schedule = schedule
    config.diffusion.objective = objective
    config.diffusion.var_type = var_type
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    if metrics:
        with open(os.path.join(path, "metrics.jsonl"), "w") as f:
            for step, speed in [(100, 1.0), (200, 10.0), (300, 12.0), (300, 14.0)]:  # step 300 logged twice (resume)
                record = {"step": step, "loss": 1.0 / step, "mse": 1.0 / step, "grad_norm": 0.5, "steps_per_sec": speed}
                if vb:
                    record["vb"] = 0.1 / step
                f.write(json.dumps(record) + "\n")
    if nll_chain is not None:
        steps = 1000 if nll_chain == "" else int(nll_chain)
        timestep_map = np.linspace(0, 999, steps).astype(int).tolist()
        with open(os.path.join(path, "eval", "nll.json"), "w") as f:
            json.dump({"bound": "T-step" if steps == 1000 else "K-step chain", "bpd": 3.25, "prior_bpd": 1e-5,
                       "chain_steps": steps, "timesteps": 1000, "timestep_map": timestep_map,
                       "vb_bpd": list(np.geomspace(1.0, 1e-4, steps)), "num_examples": 297,
                       "checkpoint_step": 300}, f)
    if quality_steps:
        with open(os.path.join(path, "eval", "sample_quality.json"), "w") as f:
            json.dump({"metric": "fd_digits_train", "checkpoint_step": 300, "num_samples": 100,
                       "results": [{"steps": f"ddim{k}", "num_steps": k, "fd_digits_train": 100.0 / k}
                                   for k in quality_steps]}, f)
    return path


def test_report_table_and_plots(tmp_path):
    a = make_run(tmp_path, "a", nll_chain="", quality_steps=(10, 50))
    b = make_run(tmp_path, "b", schedule="linear", objective="hybrid", var_type="learned_range",
                 nll_chain="50", quality_steps=(10, 100), vb=True)
    c = make_run(tmp_path, "c", metrics=False)
    out = tmp_path / "out" / "report.md"

    text = write_report([a, b, c], str(out))

    assert out.read_text() == text
    headers, rows = summary_table([load_run(p) for p in (a, b, c)])
    assert headers[-4:] == ["FD-digits @10 steps", "FD-digits @50 steps", "FD-digits @100 steps", "train steps/s"]
    row_a, row_b, row_c = (dict(zip(headers, row)) for row in rows)
    assert row_a["schedule"] == "cosine (T=1000)" and row_a["steps trained"] == "300"
    assert row_a["NLL (bits/dim)"] == "3.25" and row_a["FD-digits @50 steps"] == "2"
    assert row_a["FD-digits @100 steps"] == "—"
    assert row_a["train steps/s"] == "12"  # median of 10 and 14: the first record (compile) and the replaced 12 are out
    assert row_b["NLL (bits/dim)"] == "3.25 (50-step chain)" and row_b["objective"] == "hybrid"
    assert row_c["NLL (bits/dim)"] == "—" and row_c["steps trained"] == "—"
    for plot in ("schedules", "losses", "nll_per_t", "quality_vs_steps"):
        assert (tmp_path / "out" / f"report_{plot}.png").stat().st_size > 1000
        assert f"(report_{plot}.png)" in text


def test_main_prints_the_table_and_fails_cleanly_on_a_missing_run(tmp_path, capsys):
    a = make_run(tmp_path, "a")
    assert main([a, "--out", str(tmp_path / "r.md")]) == 0
    assert "| a | fake_a | cosine (T=1000) |" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "r.md")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path):
    a = make_run(tmp_path, "a", quality_steps=(10,))
    result = run_python(["-m", "diffjax.run.compare", a, "--out", str(tmp_path / "r.md")], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "FD-digits @10 steps" in result.stdout and (tmp_path / "r_schedules.png").exists()
