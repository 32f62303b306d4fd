#!/usr/bin/env bash
# Improved DDPM's findings at small scale: train and evaluate the six digits_iddpm runs,
# then write the comparison table (docs/results_digits_table.md) and its plots.
#   bash scripts/reproduce_digits.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs/digits_iddpm}"
for objective in simple hybrid vlb; do
  for schedule in linear cosine; do
    variant="${objective}_${schedule}"
    python launch.py --config "experiments/digits_iddpm.py:${variant}" --workdir "${runs}/${variant}"
    python launch.py --config "experiments/digits_iddpm.py:${variant}" --workdir "${runs}/${variant}" --mode=eval
  done
done
python -m diffjax.run.compare "${runs}"/* --out docs/results_digits_table.md
