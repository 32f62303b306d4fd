"""Sample quality against NFE for many samplers of one checkpoint, resumable, one line per sampler.

    python scripts/sampler_sweep.py --experiment digits_ddpm --workdir runs/digits \
        --entries "1000 100 dpmpp_2m:9 heun:4:karras" --num_samples 1000 --seed 0

Each entry (a respacing of the discrete chain, or SOLVER:K[:GRID], as ``config.eval.sample_steps``)
draws ``--num_samples`` samples from the EMA params, every entry from the same x_T (the key
of ``--seed``), scores them with the data's metric (FD-digits for digits) and appends a
JSON line to ``<workdir>/eval/sampler_sweep_seed<seed>.jsonl`` as soon as it is done; a
rerun skips the entries already there, so a killed sweep continues where it stopped. At the
end (and after every entry) the rows of the seed are also written as
``<workdir>/eval/sample_quality.json`` (the file ``python -m diffjax.run.compare`` reads; its
plot is quality against NFE, one line per sampler). Grids are written for the entries in
``--grids`` (``<workdir>/eval/sweep_<entry>.png``, the first 100 samples).

Options of the config are given as for launch.py after ``--``, e.g.
``-- --config.sample.solver_options.s_churn=10``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

from diffjax.run.config import validate
from diffjax.run.evaluate import quality_record, quality_row
from diffjax.run.experiments import build_recipe, load_experiment
from diffjax.run.restore import chosen_params, restore_train_state
from diffjax.run.scorers import sample_scorer
from diffjax.runtime.mesh import make_mesh
from diffjax.runtime.sampling import SamplerChoice, make_sampler


def _apply_overrides(config, overrides):
    for item in overrides:
        key, _, value = item.removeprefix("--config.").partition("=")
        *groups, name = key.split(".")
        node = config
        for group in groups:
            node = node[group]
        node[name] = type(node[name])(float(value) if isinstance(node[name], float) else value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="experiment name or path, with an optional :variant")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--entries", required=True, help="space-separated respacings and SOLVER:K[:GRID] entries")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grids", default="", help="entries whose first 100 samples are saved as a picture")
    args, overrides = parser.parse_known_args(argv)
    overrides = [o for o in overrides if o != "--"]

    experiment = load_experiment(args.experiment)
    variant = args.experiment.partition(":")[2] or None
    config = experiment.get_config(variant)
    _apply_overrides(config, overrides)
    config.eval.sample_steps = args.entries
    validate(config)
    recipe = build_recipe(experiment, config)
    mesh = make_mesh()
    scorer = sample_scorer(config, args.num_samples, None, mesh)
    state = restore_train_state(config, args.workdir, recipe, mesh)
    params, params_name = chosen_params(state, use_ema=True)
    eval_dir = os.path.join(args.workdir, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    path = os.path.join(eval_dir, f"sampler_sweep_seed{args.seed}.jsonl")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    done = {row["entry"] for row in rows}
    key = jax.random.PRNGKey(args.seed)
    for entry in args.entries.split():
        if entry in done:
            continue
        choice = SamplerChoice.from_settings(config.sample, entry)
        started = time.perf_counter()
        samples = make_sampler(recipe, mesh, num_samples=args.num_samples, choice=choice)(params, key)
        seconds = time.perf_counter() - started
        row = {"entry": entry, **quality_row(choice, recipe.family, scorer.score(samples), seconds), "seed": args.seed,
               "family": recipe.family.name}
        rows.append(row)
        done.add(entry)  # an entry listed twice runs once
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if entry in args.grids.split():
            recipe.save_samples(samples[:100], os.path.join(eval_dir, f"sweep_{entry.replace(':', '_')}.png"))
        print(f"{entry:28s} NFE {row['nfe']:5d}  {scorer.headline} {row[scorer.headline]:8.3f}  ({seconds:.0f} s)",
              flush=True)
        record = quality_record(int(state.step), params_name, scorer, config.sample, args.num_samples, recipe.family,
                                rows)
        with open(os.path.join(eval_dir, "sample_quality.json"), "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
