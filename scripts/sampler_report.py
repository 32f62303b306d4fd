"""Tables and a plot of quality against NFE from the JSON lines of ``scripts/sampler_sweep.py``.

    python scripts/sampler_report.py runs/digits/eval/sampler_sweep_seed0.jsonl \
        [more.jsonl ...] --names default [...] --out docs/results_samplers_table.md

For each sweep: a markdown table, one row per sampler (solver and grid, or the discrete chain),
one column per NFE (``COLUMNS``), the metric (FD-digits) in each cell, and the best cell of each
column in bold (from the first sweep given for the name, so that every cell starts from the same x_T);
then ``<out stem>_<name>.png``: the metric against NFE, one line per sampler, with the
chain's 1000-step ancestral value as a horizontal line. Entries repeated in later sweeps of
the same name (other seeds) are listed with their spread in a second table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np

from diffjax.diffusion.solvers import SOLVERS


def _load(path: str) -> list[dict]:
    """The rows of a sweep, one per entry (an entry run twice with the same seed gives the same
    samples: the first row is kept)."""
    rows = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row["entry"], row)
    return list(rows.values())


def _family(row: dict) -> str:
    settings = row.get("settings", {})
    if row.get("family") == "naive":
        return "naive diffusion's iterative sampler"
    if settings.get("sampler") == "chain":
        return f"chain {settings['method']}" + (" (strided)" if row["num_steps"] < 1000 else "")
    return f"{row['solver']} ({settings['grid']})"


STOCHASTIC = tuple(name for name, solver in SOLVERS.items() if solver.stochastic)
"""Drawn dashed (the deterministic solvers solid, the chain dotted)."""

COLUMNS = (5, 8, 10, 15, 20, 50, 100, 1000)
"""NFE columns of the table; a row's NFE goes to the nearest one (a 2-NFE-per-step solver
has odd NFEs: 7, 9, 19, ...) and its cell then shows the actual NFE in brackets."""


def _column(nfe: int) -> int:
    return min(COLUMNS, key=lambda c: abs(np.log(c) - np.log(nfe)))


def table(rows: list[dict], metric: str) -> tuple[str, dict]:
    """The markdown table of one sweep and its {family: [(nfe, value)]} lines."""
    values = collections.defaultdict(list)
    for row in rows:
        values[(_family(row), row["nfe"])].append(row[metric])
    lines = collections.defaultdict(list)
    cells = {}
    for (family, nfe), vs in values.items():
        lines[family].append((nfe, float(np.mean(vs))))
        cells[(family, _column(nfe))] = (nfe, float(np.mean(vs)))
    columns = sorted({column for _, column in cells})
    best = {c: min(v for (f, col), (n, v) in cells.items() if col == c) for c in columns}
    out = ["| sampler | " + " | ".join(f"NFE {c}" for c in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for family in sorted(lines, key=lambda f: (not f.startswith("chain"), f)):
        row = []
        for column in columns:
            if (family, column) not in cells:
                row.append("")
                continue
            nfe, v = cells[(family, column)]
            text = f"{v:.2f}" + ("" if nfe == column else f" ({nfe})")
            row.append(f"**{text}**" if v == best[column] and len(lines) > 1 else text)
        out.append(f"| {family} | " + " | ".join(row) + " |")
    return "\n".join(out), lines


def plot(lines: dict, path: str, title: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    anchor = None
    colours = plt.get_cmap("tab20").colors
    for index, (family, points) in enumerate(sorted(lines.items())):
        points = sorted(points)
        if family == "chain ddpm" and len(points) == 1:
            anchor = points[0][1]
            continue
        nfes, vs = zip(*points)
        style = ":" if family.startswith("chain") else ("--" if family.split()[0] in STOCHASTIC else "-")
        ax.plot(nfes, vs, style, color=colours[index % len(colours)], marker="os^vD"[index % 5], markersize=3.5,
                label=family)
    if anchor is not None:
        ax.axhline(anchor, color="black", linewidth=1, label="chain ddpm, 1000 steps")
    ax.set(xscale="log", yscale="log", xlabel="NFE (network evaluations per sample)", ylabel=metric, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def side_by_side(pictures: list[tuple[str, str]], path: str) -> None:
    """The sample pictures ``(label, png)`` in one row, each titled with its label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pictures), figsize=(2.6 * len(pictures), 2.9), dpi=100, squeeze=False)
    for ax, (label, png) in zip(axes[0], pictures):
        ax.imshow(plt.imread(png), cmap="gray", interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sampler_sweep_seed*.jsonl files")
    parser.add_argument("--names", nargs="+", required=True, help="one name per sweep (a run may have several seeds: "
                        "give the same name)")
    parser.add_argument("--metric", default="fd_digits_train")
    parser.add_argument("--out", required=True)
    parser.add_argument("--pictures", nargs="*", default=[], help="NAME:LABEL=PNG: sample pictures shown side by side "
                        "under the sweep NAME (written as <out stem>_grids_<NAME>.png)")
    args = parser.parse_args(argv)
    by_name = collections.defaultdict(list)
    for path, name in zip(args.sweeps, args.names, strict=True):
        by_name[name].append(_load(path))
    stem = os.path.splitext(args.out)[0]
    parts = []
    for name, sweeps in by_name.items():
        rows = [row for sweep in sweeps for row in sweep]
        text, lines = table(sweeps[0], args.metric)  # one seed: every setting from the same x_T
        picture = f"{stem}_{name}.png"
        plot(lines, picture, f"{name}: {args.metric} against NFE", args.metric)
        pictures = [item.split(":", 1)[1].split("=", 1) for item in args.pictures if item.split(":", 1)[0] == name]
        grids = ""
        if pictures:
            side_by_side(pictures, f"{stem}_grids_{name}.png")
            grids = f"\n![{name}: samples]({os.path.basename(stem)}_grids_{name}.png)\n"
        parts.append(f"## {name}\n\n{len(sweeps[0])} settings of the first sweep given (seed {sweeps[0][0]['seed']}, "
                     f"every setting from the same x_T); {args.metric}, lower is better; "
                     f"the best of each NFE column in bold.\n\n{text}\n\n![{name}]({os.path.basename(picture)})\n{grids}")
        if len(sweeps) > 1:
            spread = collections.defaultdict(list)
            for row in rows:
                spread[(_family(row), row["nfe"])].append(row[args.metric])
            repeated = {k: v for k, v in spread.items() if len(v) > 1}
            if repeated:
                lines_out = ["| sampler | NFE | values by seed | spread (max - min) |", "|---|---|---|---|"]
                for (family, nfe), vs in sorted(repeated.items()):
                    lines_out.append(f"| {family} | {nfe} | {', '.join(f'{v:.2f}' for v in vs)} | {max(vs) - min(vs):.2f} |")
                parts.append("Seeds (different x_T and noise):\n\n" + "\n".join(lines_out) + "\n")
    with open(args.out, "w") as f:
        f.write("# Sample quality against NFE (generated by scripts/sampler_report.py)\n\n" + "\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
