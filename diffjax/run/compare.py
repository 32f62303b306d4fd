"""Compare runs: a markdown table and plots from their workdirs (no JAX computation).

    python -m diffjax.run.compare runs/a runs/b runs/c [--out report.md]

Reads each run's ``config.json``, ``metrics.jsonl`` and ``eval/*.json`` (what
``train_and_evaluate`` and ``diffjax.run.evaluate`` write), prints a table
(experiment, schedule, objective, variance, steps trained, NLL in bits/dim, the continuous
VDM bound in bits/dim where any run has ``eval/elbo.json``, the PF-ODE bound in bits/dim where
any run has ``eval/ode_nll.json``, the sample
metric at each evaluated sampler (chain steps, or solver and NFE), training steps/s; the checkpoint the
eval files come from) and writes it to
``--out`` with PNG plots next to it, named after the report (``report_schedules.png``,
``report_losses.png``, ``report_nll_per_t.png``, ``report_quality_vs_steps.png``):
alpha_bar and log-SNR against t/T for the compared schedules, the loss curves, the NLL
term at each t, and sample quality against NFE, one line per run and sampler. A plot whose
data no run has is left out. Missing files give empty cells, not errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffjax.diffusion.schedules import named_schedule

__all__ = ["RunRecord", "load_run", "main", "markdown_table", "summary_table", "write_report"]

# Column titles of the sample metrics written by diffjax.train.evaluate.
METRIC_TITLES = {
    "fd_digits_train": "FD-digits",
    "fd_digits_test": "FD-digits (test)",
    "mmd": "MMD²",
    "sliced_wasserstein": "SW₁",
    "fid": "FID",
}


@dataclasses.dataclass
class RunRecord:
    """What a run's workdir holds.

    Attributes:
      path: the workdir.
      name: a short unique name for tables and legends.
      config: ``config.json`` as a dict ({} when missing).
      metrics: the records of ``metrics.jsonl``, one per logged step, by step ([] when missing).
      nll: ``eval/nll.json`` or None.
      sample_quality: ``eval/sample_quality.json`` or None.
      ode_nll: ``eval/ode_nll.json`` (the probability-flow ODE bound) or None.
      elbo: ``eval/elbo.json`` (the continuous VDM bound) or None.
    """

    path: str
    name: str
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    nll: dict[str, Any] | None
    sample_quality: dict[str, Any] | None
    ode_nll: dict[str, Any] | None = None
    elbo: dict[str, Any] | None = None

    def setting(self, group: str, key: str, default: Any = None) -> Any:
        """``config[group][key]``, or ``default`` when absent."""
        return self.config.get(group, {}).get(key, default)


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _read_metrics(path: str) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl, the last one of each step (a resumed run repeats steps)."""
    if not os.path.exists(path):
        return []
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def load_run(path: str, name: str | None = None) -> RunRecord:
    """Read a run's workdir.

    Raises:
      FileNotFoundError: ``path`` is not a folder.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run directory {path!r} does not exist")
    return RunRecord(
        path=path,
        name=name or os.path.basename(os.path.normpath(path)),
        config=_read_json(os.path.join(path, "config.json")) or {},
        metrics=_read_metrics(os.path.join(path, "metrics.jsonl")),
        nll=_read_json(os.path.join(path, "eval", "nll.json")),
        sample_quality=_read_json(os.path.join(path, "eval", "sample_quality.json")),
        ode_nll=_read_json(os.path.join(path, "eval", "ode_nll.json")),
        elbo=_read_json(os.path.join(path, "eval", "elbo.json")),
    )


def _unique_names(paths: Sequence[str]) -> list[str]:
    """Folder names, or the normalised paths when two runs share a folder name."""
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [os.path.normpath(p) for p in paths]


def _format(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _steps_per_sec(run: RunRecord) -> float | None:
    """Median training speed; the first record (which includes compilation) is left out."""
    speeds = [r["steps_per_sec"] for r in run.metrics if "steps_per_sec" in r]
    if len(speeds) > 1:
        speeds = speeds[1:]
    return float(np.median(speeds)) if speeds else None


def _sampler_family(record: dict[str, Any], row: dict[str, Any]) -> str:
    """The sampler a quality row was drawn with: a solver's name and grid, e.g. "heun (karras)", or
    ``chain_ddpm`` / ``chain_ddim`` (records written before solvers existed have only the
    record's ``method``)."""
    solver = row.get("solver") or f"chain_{record.get('method', '?')}"
    grid = row.get("settings", {}).get("grid")
    return f"{solver} ({grid})" if grid else solver


def _quality_points(run: RunRecord) -> list[tuple[str, str, int, int, Any]]:
    """(metric, sampler family, NFE, steps, value) of each quality row of a run."""
    record = run.sample_quality
    if not record:
        return []
    metric = record.get("metric")
    return [
        (metric, _sampler_family(record, row), int(row.get("nfe", row["num_steps"])), int(row["num_steps"]), row[metric])
        for row in record.get("results", []) if metric in row
    ]


def _quality_columns(runs: Sequence[RunRecord]) -> list[tuple[str, str, int, int]]:
    """(metric, sampler family, NFE, steps) evaluated by any run, sorted."""
    return sorted({point[:4] for run in runs for point in _quality_points(run)})


def _eval_checkpoint(run: RunRecord) -> str | None:
    """The checkpoint step(s) the eval files were computed from."""
    records = (run.nll, run.elbo, run.ode_nll, run.sample_quality)
    steps = sorted({str(r["checkpoint_step"]) for r in records if r and "checkpoint_step" in r})
    return "/".join(steps) or None


def _nll_cell(run: RunRecord) -> str:
    if not run.nll:
        return "—"
    cell = _format(run.nll.get("bpd"))
    if run.nll.get("bound") != "T-step":
        cell += f" ({run.nll.get('chain_steps')}-step chain)"
    return cell


def _column_name(family: str, nfe: int, steps: int) -> str:
    """"100 steps" for the discrete chain (NFE = steps), "dpmpp_2m 11 NFE" for a solver."""
    if family.startswith("chain_"):
        return f"{steps} steps"
    return f"{family} {nfe} NFE"


def summary_table(runs: Sequence[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """The comparison table.

    Returns:
      (headers, rows): one row of strings per run.
    """
    quality = _quality_columns(runs)
    elbo = any(run.elbo for run in runs)
    ode = any(run.ode_nll for run in runs)
    headers = [
        "run", "experiment", "schedule", "objective", "var_type", "steps trained", "eval checkpoint", "NLL (bits/dim)",
        *(["NLL, continuous bound (bits/dim)"] if elbo else []),
        *(["NLL, PF-ODE (bits/dim)"] if ode else []),
        *[f"{METRIC_TITLES.get(m, m)} @{_column_name(family, nfe, steps)}" for m, family, nfe, steps in quality],
        "train steps/s",
    ]
    rows = []
    for run in runs:
        schedule = run.setting("diffusion", "schedule")
        timesteps = run.setting("diffusion", "timesteps")
        steps_trained = run.metrics[-1]["step"] if run.metrics else None
        values = {point[:4]: point[4] for point in _quality_points(run)}
        rows.append([
            run.name,
            _format(run.config.get("experiment") or None),
            f"{schedule} (T={timesteps})" if schedule else "—",
            _format(run.setting("diffusion", "objective")),
            _format(run.setting("diffusion", "var_type")),
            _format(steps_trained),
            _format(_eval_checkpoint(run)),
            _nll_cell(run),
            *([_format((run.elbo or {}).get("bpd"))] if elbo else []),
            *([_format((run.ode_nll or {}).get("bpd"))] if ode else []),
            *[_format(values.get(column)) for column in quality],
            _format(_steps_per_sec(run), 3),
        ])
    return headers, rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *[line(row) for row in rows]])


# ------------------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib  # 0.5 s to import: only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_schedules(runs: Sequence[RunRecord], path: str) -> bool:
    """alpha_bar and log-SNR = log(alpha_bar / (1 - alpha_bar)) against t/T, one line per
    distinct (schedule, T) of the runs. Returns whether anything was plotted."""
    found = {(r.setting("diffusion", "schedule"), r.setting("diffusion", "timesteps")) for r in runs}
    pairs = sorted((name, int(t)) for name, t in found if name and t)
    if not pairs:
        return False
    plt = _pyplot()
    fig, (ax_bar, ax_snr) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for name, timesteps in pairs:
        # The float64 betas the schedule's tables are built from: log-SNR near t = 0 and T
        # needs more than float32.
        alphas_cumprod = np.cumprod(1.0 - named_schedule(name, timesteps).source.values)
        t = (np.arange(timesteps) + 1) / timesteps
        label = f"{name} (T={timesteps})"
        ax_bar.plot(t, alphas_cumprod, label=label)
        ax_snr.plot(t, np.log(alphas_cumprod) - np.log1p(-alphas_cumprod), label=label)
    ax_bar.set(xlabel="t / T", ylabel="alpha_bar_t", title="signal kept")
    ax_snr.set(xlabel="t / T", ylabel="log SNR", title="log-SNR")
    for ax in (ax_bar, ax_snr):
        _finish_axes(ax, log_y=False)
    _save(fig, path)
    return True


def plot_losses(runs: Sequence[RunRecord], path: str) -> bool:
    """Training loss (and the VLB term where logged) against step."""
    runs = [r for r in runs if r.metrics]
    if not runs:
        return False
    has_vb = any("vb" in m for r in runs for m in r.metrics)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if has_vb else 1, figsize=(10 if has_vb else 6, 4), dpi=100, squeeze=False)
    for key, ax in zip(["loss", "vb"], axes[0]):
        for run in runs:
            points = [(m["step"], m[key]) for m in run.metrics if key in m]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=run.name)
        ax.set(xlabel="step", ylabel=key, title=f"training {key}")
        _finish_axes(ax, log_y=True)
    _save(fig, path)
    return True


def plot_nll_per_t(runs: Sequence[RunRecord], path: str) -> bool:
    """The bound's term at each chain index (bits/dim) against t/T."""
    runs = [r for r in runs if r.nll and r.nll.get("vb_bpd")]
    if not runs:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for run in runs:
        vb = np.asarray(run.nll["vb_bpd"], np.float64)
        timesteps = run.nll.get("timesteps") or len(vb)
        t = (np.asarray(run.nll.get("timestep_map") or np.arange(len(vb))) + 1) / timesteps
        label = run.name
        if run.nll.get("bound") != "T-step":
            label += f" ({run.nll.get('chain_steps')}-step chain)"
        ax.plot(t, vb, label=label)
    ax.set(xlabel="t / T", ylabel="term (bits/dim)", title="NLL bound per step (L_0 at the left)")
    _finish_axes(ax, log_y=True)
    _save(fig, path)
    return True


def plot_quality_vs_steps(runs: Sequence[RunRecord], path: str) -> bool:
    """The sample metric against NFE (network evaluations per sample; the number of steps for
    the discrete chain), one panel per metric, one line per run and sampler."""
    by_metric: dict[str, list[tuple[str, list[int], list[float]]]] = {}
    for run in runs:
        lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for metric, sampler, nfe, _, value in _quality_points(run):
            lines.setdefault((metric, sampler), []).append((nfe, value))
        samplers = {sampler for _, sampler in lines}
        for (metric, sampler), points in sorted(lines.items()):
            nfes, values = zip(*sorted(points))
            label = run.name if len(samplers) == 1 and len(runs) > 1 else f"{run.name}: {sampler}"
            by_metric.setdefault(metric, []).append((label, list(nfes), list(values)))
    if not by_metric:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(by_metric), figsize=(7 * len(by_metric), 4.5), dpi=100, squeeze=False)
    for ax, (metric, lines) in zip(axes[0], sorted(by_metric.items())):
        for name, nfes, values in lines:
            ax.plot(nfes, values, marker="o", label=name)
        title = METRIC_TITLES.get(metric, metric)
        ax.set(xlabel="NFE (network evaluations per sample)", ylabel=title, title=f"{title} vs NFE")
        ax.set_xscale("log")
        _finish_axes(ax, log_y=True)
    _save(fig, path)
    return True


def _finish_axes(ax, *, log_y: bool) -> None:
    """The grid and legend of every panel; with ``log_y``, a log y axis where all plotted
    values are positive."""
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    if log_y and values and min(values) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)


# ----------------------------------------------------------------------------- report

PLOTS = (
    ("schedules", "Schedules", plot_schedules),
    ("losses", "Training loss", plot_losses),
    ("nll_per_t", "NLL per step", plot_nll_per_t),
    ("quality_vs_steps", "Sample quality vs sampling steps", plot_quality_vs_steps),
)


def write_report(run_dirs: Sequence[str], out: str = "report.md") -> str:
    """Write the markdown report of ``run_dirs`` to ``out`` and its plots next to it.

    Returns:
      The markdown text.
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
    runs = [load_run(path, name) for path, name in zip(run_dirs, _unique_names(run_dirs))]
    out_dir = os.path.dirname(os.path.abspath(out))
    stem = os.path.splitext(os.path.basename(out))[0]
    os.makedirs(out_dir, exist_ok=True)
    headers, rows = summary_table(runs)
    lines = ["# Run comparison", "", markdown_table(headers, rows), ""]
    notes = _notes(runs)
    if notes:
        lines += [*notes, ""]
    for key, title, plot in PLOTS:
        filename = f"{stem}_{key}.png"
        if plot(runs, os.path.join(out_dir, filename)):
            lines += [f"## {title}", "", f"![{title}]({filename})", ""]
    text = "\n".join(lines)
    with open(out, "w") as f:
        f.write(text)
    return text


def _notes(runs: Sequence[RunRecord]) -> list[str]:
    """How the numbers were obtained, from the eval files."""
    notes = []
    for run in runs:
        parts = []
        if run.nll:
            parts.append(
                f"NLL: {run.nll.get('bound')} bound over {run.nll.get('num_examples')} examples of "
                f"{run.nll.get('data', '?')}:{run.nll.get('split', '?')}, {run.nll.get('params', '?')} params, "
                f"checkpoint {run.nll.get('checkpoint_step', '?')}"
            )
        if run.elbo:
            parts.append(
                f"continuous bound: {run.elbo.get('bound')}, {_format(run.elbo.get('bpd'))} ± "
                f"{_format(run.elbo.get('bpd_stderr'), 2)} bits/dim over {run.elbo.get('num_examples')} examples, "
                f"{run.elbo.get('draws')} draws each"
            )
        if run.sample_quality:
            q = run.sample_quality
            parts.append(
                f"samples: {q.get('num_samples')} per step count, {q.get('method')} (eta={q.get('eta')}), "
                f"{q.get('params', '?')} params, checkpoint {q.get('checkpoint_step', '?')}, "
                f"vs {q.get('references', '?')}"
            )
        if parts:
            notes.append(f"- **{run.name}**: " + "; ".join(parts))
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffjax.run.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (workdirs)")
    parser.add_argument("--out", default="report.md", help="markdown report; plots are written next to it")
    args = parser.parse_args(argv)
    try:
        text = write_report(args.runs, args.out)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
