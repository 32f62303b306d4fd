#!/usr/bin/env bash
# docs/results_guidance.md: train the conditional digits model and the noise-conditional classifier,
# report the classifier's accuracy per noise band, and sweep both guidance methods (1000 samples per
# setting, seeds 0 and 1; DDIM 50 steps, and the 100-step ancestral chain for classifier guidance's
# Algorithm 1).
#   bash scripts/reproduce_guidance.sh [RUNS_DIR]
# The unconditional model is the default experiment's (RUNS_DIR/digits: experiments/digits_ddpm.py),
# trained here if it is missing. About 6 + 6 + 3 minutes of training and 70 minutes of sampling on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs}"
python launch.py --config experiments/digits_ddpm.py --workdir "${runs}/digits"
python launch.py --config experiments/digits_cond.py --workdir "${runs}/digits_cond"
python launch.py --config experiments/digits_classifier.py --workdir "${runs}/digits_classifier"
python launch.py --config experiments/digits_classifier.py --workdir "${runs}/digits_classifier" --mode=eval
models="--cond ${runs}/digits_cond --uncond ${runs}/digits --classifier ${runs}/digits_classifier"
for seed in 0 1; do
  python scripts/guidance_sweep.py ${models} --out "${runs}/guidance" --seed "${seed}"
done
python scripts/guidance_sweep.py ${models} --out "${runs}/guidance_ancestral" --entry 100 --method ddpm \
  --methods classifier_uncond --seed 0
python scripts/guidance_report.py "${runs}/guidance" --out docs/results_guidance_table.md
python scripts/guidance_report.py "${runs}/guidance_ancestral" --out docs/results_guidance_ancestral.md
