#!/usr/bin/env bash
# docs/results_objectives.md: train the four #14 models at the default digits budget, evaluate
# every bound that applies, and sweep FD-digits against NFE (1000 samples, seeds 0 and 1).
#   bash scripts/reproduce_objectives.sh [RUNS_DIR]
# The DDPM (L_simple) and improved-DDPM (L_hybrid, cosine) models are those of
# docs/results_samplers.md (runs/digits and runs/digits_iddpm/hybrid_cosine); their continuous
# bound is evaluated here too (RUNS_DIR/../digits, RUNS_DIR/../digits_iddpm/hybrid_cosine).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs/objectives}"
solver_entries="dpmpp_2m:4:uniform_log_snr dpmpp_2m:9:uniform_log_snr dpmpp_2m:19:uniform_log_snr \
dpmpp_2m:49:uniform_log_snr dpmpp_2m:9:karras heun:4:karras heun:9:karras heun:17:karras \
dpmpp_2m_sde:19:uniform_log_snr dpmpp_2m_sde:49:uniform_log_snr ddpm:99:uniform_t"
bounds="--config.eval.elbo=True --config.eval.ode_nll=True --config.eval.ode_num_examples=100"
for run in "digits_vdm.py:fixed vdm_fixed" "digits_vdm.py:learned vdm_learned" "digits_edm.py edm" "digits_naive.py naive"; do
  set -- $run
  experiment="${1%.py*}${1#*.py}"
  python launch.py --config "experiments/$1" --workdir "${runs}/$2"
  if [ "$2" = naive ]; then
    python launch.py --config "experiments/$1" --workdir "${runs}/$2" --mode=eval
    entries="10 20 50 100"
  else
    python launch.py --config "experiments/$1" --workdir "${runs}/$2" --mode=eval ${bounds}
    entries="${solver_entries}"
  fi
  for seed in 0 1; do
    python scripts/sampler_sweep.py --experiment "${experiment}" --workdir "${runs}/$2" --entries "${entries}" \
      --num_samples 1000 --seed "${seed}"
  done
done
python scripts/loss_variance.py --experiment digits_vdm:learned --workdir "${runs}/vdm_learned" --num_examples 500 --draws 16
python scripts/loss_variance.py --experiment digits_vdm:fixed --workdir "${runs}/vdm_fixed" --num_examples 500 --draws 16
# The two discrete models: their T-step bound, and now the continuous one (their PF-ODE bound is in
# docs/results_samplers.md's runs).
python launch.py --config experiments/digits_ddpm.py --workdir "${runs}/../digits" --mode=eval --config.eval.elbo=True
python launch.py --config experiments/digits_iddpm.py:hybrid_cosine --workdir "${runs}/../digits_iddpm/hybrid_cosine" \
  --mode=eval --config.eval.elbo=True
