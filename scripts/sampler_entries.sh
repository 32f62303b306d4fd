# The sampler lists of docs/results_samplers.md (source this file; bash).
# An entry is a respacing of the discrete chain ("1000", "100") or SOLVER:K[:GRID] (runtime/sampling.py).
_entries() { local solver=$1; shift; for k in "$@"; do printf "%s:%s " "$solver" "$k"; done; }
K1="4 7 9 14 19 49"   # 1 NFE per step, + 1 final denoising: NFE 5 8 10 15 20 50
K2="2 3 4 7 9 24"     # 2 NFE per step: NFE 5 7 9 15 19 49
K1_SHORT="4 9 19 49"
K2_SHORT="2 4 9 24"
CHAIN="1000 100 50 20 10"
ALL_SOLVERS_1="euler ddim dpmpp_2m dpmpp_3m unipc_2 unipc_3 euler_ancestral dpmpp_2m_sde ddpm"
ALL_SOLVERS_2="heun edm_stochastic pc"

ENTRIES_DEFAULT="$CHAIN"
for s in $ALL_SOLVERS_1; do ENTRIES_DEFAULT+=" $(_entries $s $K1)"; done
for s in $ALL_SOLVERS_2; do ENTRIES_DEFAULT+=" $(_entries $s $K2)"; done
ENTRIES_DEFAULT+=" dpmpp_2m:9:karras dpmpp_2m:9:uniform_t dpmpp_2m:9:quadratic dpmpp_2m:9:discrete_even"
ENTRIES_DEFAULT+=" heun:4:karras heun:4:uniform_t dpmpp_2m:99 ddim:99 unipc_3:99"

ENTRIES_HYBRID="$CHAIN"
for s in $ALL_SOLVERS_1; do ENTRIES_HYBRID+=" $(_entries $s $K1_SHORT)"; done
for s in $ALL_SOLVERS_2; do ENTRIES_HYBRID+=" $(_entries $s $K2_SHORT)"; done
ENTRIES_HYBRID+=" heun:4:karras dpmpp_2m:9:karras dpmpp_2m:9:uniform_t dpmpp_2m:99 dpmpp_2m:19:karras"
ENTRIES_HYBRID+=" dpmpp_2m:9:discrete_even unipc_3:9:karras dpmpp_2m_sde:19:karras"

ENTRIES_SEED1_DEFAULT="100 dpmpp_2m:9 dpmpp_2m:19 unipc_3:9 heun:4:karras ddim:9 euler_ancestral:19 1000"
ENTRIES_SEED1_DEFAULT+=" dpmpp_2m_sde:19 edm_stochastic:9 dpmpp_2m:9:karras"
ENTRIES_SEED1_HYBRID="100 dpmpp_2m:9:karras dpmpp_2m_sde:19"
