"""The summary table of docs/results_objectives.md from the runs' eval files.

    python scripts/objectives_report.py naive=runs/objectives/naive ddpm=runs/digits \
        vdm_fixed=runs/objectives/vdm_fixed ... --out docs/results_objectives_table.md

Per run (NAME=WORKDIR): the bounds in bits/dim that exist in its eval/ (the T-step bound of
``nll.json``; VDM's L_inf and L_1000, L_10 of ``elbo_steps.jsonl`` with the paired difference to
L_inf, else ``elbo.json``; the PF-ODE bound of ``ode_nll.json``), each with its standard error
over examples, and FD-digits from ``sampler_sweep_seed<S>.jsonl`` (1000 samples): the best row at
<= 10 and <= 20 NFE and the 100- and 1000-step ancestral rows, per seed. With ``--out``, also
``<out stem>.png``: the best FD at each NFE swept (seed 0) against NFE, one line per run. "-" where a number does not apply or
was not measured.
"""

from __future__ import annotations

import argparse
import json
import os


def _read(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def _bound(record, key="bpd", stderr="bpd_stderr") -> str:
    if not record:
        return "-"
    return f"{record[key]:.3f} ± {record[stderr]:.3f}"


def _t_step(record) -> str:
    """The T-step bound is exact in t (every term summed), so it has no Monte-Carlo error in t."""
    return f"{record['bpd']:.3f} (T = {record['timesteps']})" if record else "-"


def _best(rows, max_nfe: int) -> str:
    rows = [r for r in rows or [] if r["nfe"] <= max_nfe]
    if not rows:
        return "-"
    best = min(rows, key=lambda r: r["fd_digits_train"])
    return f"{best['fd_digits_train']:.2f} ({best['entry']}, {best['nfe']})"


def _ancestral(rows, steps: int) -> str:
    """The ``steps``-step ancestral sampler's FD: the chain's respacing or the ddpm solver (K + 1 NFE)."""
    names = (str(steps), f"ddpm:{steps - 1}:uniform_t", f"ddpm:{steps - 1}")
    for row in rows or []:
        if row["entry"] in names:
            return f"{row['fd_digits_train']:.2f}"
    return "-"


def summary(runs: dict[str, str]) -> str:
    out = ["| model | T-step bound | L_inf (VDM bound) | L_1000 - L_inf | L_10 - L_inf | PF-ODE (examples) | "
           "FD best <= 10 NFE, seed 0 / 1 | FD best <= 20 NFE, seed 0 / 1 | FD ancestral 100 steps, seed 0 / 1 | "
           "FD ancestral 1000 steps, seed 0 / 1 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, workdir in runs.items():
        ev = os.path.join(workdir, "eval")
        nll, ode = _read(os.path.join(ev, "nll.json")), _read(os.path.join(ev, "ode_nll.json"))
        steps = {row["num_steps"]: row for row in _read(os.path.join(ev, "elbo_steps.jsonl")) or []}
        infinite = steps.get(None) or _read(os.path.join(ev, "elbo.json"))
        gaps = []
        for T in (1000, 10):
            row = steps.get(T)
            gaps.append(f"{row['minus_first']:+.4f} ± {row['minus_first_stderr']:.4f}" if row and "minus_first" in row
                        else "-")
        sweeps = [_read(os.path.join(ev, f"sampler_sweep_seed{seed}.jsonl")) for seed in (0, 1)]
        ode_cell = f"{_bound(ode)} ({ode['num_examples']})" if ode else "-"
        out.append(
            f"| {name} | {_t_step(nll)} "
            f"| {_bound(infinite)} | {gaps[0]} | {gaps[1]} | {ode_cell} | "
            + " | ".join(" / ".join(f(rows) for rows in sweeps) for f in (lambda r: _best(r, 10), lambda r: _best(r, 20),
                                                                             lambda r: _ancestral(r, 100),
                                                                             lambda r: _ancestral(r, 1000))) + " |")
    return "\n".join(out) + "\n"


def plot_envelopes(runs: dict[str, str], path: str) -> None:
    """FD-digits (seed 0) against NFE: per run, the best sampler at each NFE swept, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4))
    for name, workdir in runs.items():
        rows = _read(os.path.join(workdir, "eval", "sampler_sweep_seed0.jsonl")) or []
        best: dict[int, float] = {}
        for row in rows:
            best[row["nfe"]] = min(best.get(row["nfe"], float("inf")), row["fd_digits_train"])
        if best:
            nfes = sorted(best)
            axes.plot(nfes, [best[n] for n in nfes], marker="o", label=name)
    axes.set(xscale="log", yscale="log", xlabel="NFE", ylabel="FD-digits (best sampler at that NFE, seed 0)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=WORKDIR")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.runs)
    text = summary(runs)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        plot_envelopes(runs, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    main()
