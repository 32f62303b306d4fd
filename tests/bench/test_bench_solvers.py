"""bench/bench_solvers.py --quick, part 1 (the solver overhead; not the torch part): the
script runs and its output parses. No assertion on the times themselves."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "bench_solvers.py")

# One row of a part-1 table: solver, K, NFE, solve s, NFE x fwd s, overhead %, met / not met,
# trivial-D ms, trivial fraction %, compile s.
ROW = re.compile(
    r"^\s+(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)%\s+(met|not met)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)$"
)


@pytest.mark.slow
def test_quick_part1_runs_and_parses(tmp_path):
    out = tmp_path / "solvers.json"
    # One network (the tiny UNet) and two solvers (one-step and multistep) keep it CI-sized;
    # the other solvers and the digits UNet go through the same code.
    cmd = [sys.executable, SCRIPT, "--quick", "--part", "1", "--models", "cifar10", "--solvers", "ddim,dpmpp_2m",
           "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = [m.groups() for m in map(ROW.match, proc.stdout.splitlines()) if m]
    assert [r[0] for r in rows] == ["ddim", "dpmpp_2m"], proc.stdout
    for solver, steps, nfe, solve_s, budget_s, overhead, met, trivial_ms, fraction, compile_s in rows:
        assert int(steps) == int(nfe) == 2
        assert met == ("met" if float(overhead) <= 2.0 else "not met")
    assert re.search(r"forward pass: [\d.]+ ms \(median of \d+", proc.stdout)
    assert "Part 2" not in proc.stdout

    results = json.loads(out.read_text())
    assert results["mode"] == "quick" and results["part2"] is None
    (model,) = results["part1"]
    assert model["batch"] == 2 and model["input_shape"] == [8, 8, 3] and model["params"] > 0
    assert model["forward"]["median_s"] > 0
    for row, (solver, *_) in zip(model["solvers"], rows):
        assert row["solver"] == solver and row["nfe"] == 2
        assert row["solve"]["median_s"] > 0 and row["trivial"]["median_s"] > 0
        budget = row["nfe"] * model["forward"]["median_s"]
        assert math.isclose(row["nfe_x_forward_s"], budget)
        assert math.isclose(row["overhead"], row["solve"]["median_s"] / budget - 1.0)
        assert math.isclose(row["trivial_fraction"], row["trivial"]["median_s"] / budget)
