"""VDM's bound of one trained model at several numbers of steps T (and T = infinity), same draws.

    python scripts/elbo_steps.py --experiment digits_vdm:fixed --workdir runs/digits_vdm/fixed \
        --steps "0 1000 100 10" --draws 256

For every T of ``--steps`` (0: the continuous-time L_inf) the bound of the EMA params over the
evaluation split (``evaluation.elbo``: prior + reconstruction + diffusion loss, bits/dim) with
``--draws`` low-discrepancy times per example; every T uses the same seed, so the same
(s, eps, z_0) draws, the T-step ones discretising s to i/T (VDM eq. 13 vs 17): the differences
between T's are paired per example, and their standard errors (printed) are those of the paired
differences. Works for any Gaussian model (discrete ones on their continuous view). Output: one
JSON line per T on stdout and in ``<workdir>/eval/elbo_steps.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from diffjax.evaluation.elbo import elbo_of_params
from diffjax.run.restore import restore_experiment
from diffjax.runtime.mesh import make_mesh


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", default="0 1000 100 10", help="space-separated T's; 0 is T = infinity")
    parser.add_argument("--draws", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    mesh = make_mesh()
    _, recipe, params = restore_experiment(args.experiment, args.workdir, mesh)
    lines, reference = [], None
    for steps in (int(s) for s in args.steps.split()):
        result = elbo_of_params(recipe, params, mesh, recipe.eval_batches(), draws=args.draws, seed=args.seed,
                                num_steps=steps or None)
        total = result.per_example["total"]
        line = {"num_steps": steps or None, **result.to_json()}
        if reference is None:
            reference = total
        else:  # paired with the first T of the list, example by example
            difference = total - reference
            line["minus_first"] = float(np.mean(difference))
            line["minus_first_stderr"] = float(np.std(difference, ddof=1) / math.sqrt(len(difference)))
        lines.append(line)
        print(json.dumps(line), flush=True)
    os.makedirs(os.path.join(args.workdir, "eval"), exist_ok=True)
    with open(os.path.join(args.workdir, "eval", "elbo_steps.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
