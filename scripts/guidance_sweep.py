"""The fidelity-diversity trade-off of guidance on the digits, one JSON line per setting, resumable.

    python scripts/guidance_sweep.py --cond runs/digits_cond --uncond runs/digits \
        --classifier runs/digits_classifier --out runs/guidance --seed 0

Settings (each ``--num_samples`` samples, the labels 0, 1, ..., 9 cycling, from the EMA params,
one sampler ``--entry``; every setting of a seed starts from the same x_T):

* ``cfg``: classifier-free guidance of the conditional model (experiments/digits_cond.py) at the
  weights ``--weights`` (w = 0: the conditional model unguided);
* ``classifier_uncond``: classifier guidance of the unconditional default model
  (experiments/digits_ddpm.py) by the noise-conditional classifier (experiments/digits_classifier.py)
  at the scales ``--scales`` (s = 0: the unconditional model, whose samples ignore the labels);
* ``classifier_cond``: the same classifier guiding the conditional model (w = 0) at ``--scales``.

Each setting's row: FD-digits against the training set (``fd_digits_train``; the data's quality
metric, ``run.scorers``), the accuracy of the requested labels under the separate digits feature
classifier (``evaluation.digits_features``, 97% on the test digits), the mean probability it gives
the requested label, its mean confidence (max probability), the histogram of the classes it
predicts, the classifier score (exp E KL(p(y|x) || p(y))), the seconds spent, and the first 100
samples (``<out>/samples_<method>_<scale>_seed<seed>.npy``) for the grids. One compiled sampler per
method serves all its scales (the scale is a traced argument). Rows are appended to
``<out>/guidance_seed<seed>.jsonl``; a rerun skips the settings already there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

from diffjax.evaluation import digits_features
from diffjax.run.restore import restore_classifier, restore_experiment
from diffjax.run.scorers import sample_scorer
from diffjax.runtime.mesh import make_mesh
from diffjax.runtime.sampling import SamplerChoice, make_sampler

NUM_CLASSES = 10


def label_metrics(net: digits_features.DigitsFeatureNet, samples: np.ndarray, labels: np.ndarray) -> dict:
    """Fidelity to the requested labels under the feature classifier."""
    probabilities = net.probabilities(digits_features.quantize(samples))
    predicted = probabilities.argmax(axis=1)
    correct = (predicted == labels).astype(np.float64)
    return {
        "accuracy": float(correct.mean()),
        "accuracy_stderr": float(correct.std(ddof=1) / np.sqrt(len(correct))),
        "requested_probability": float(probabilities[np.arange(len(labels)), labels].mean()),
        "accuracy_per_class": [float(correct[labels == k].mean()) for k in range(NUM_CLASSES)],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cond", required=True, help="workdir of experiments/digits_cond.py")
    parser.add_argument("--uncond", required=True, help="workdir of experiments/digits_ddpm.py")
    parser.add_argument("--classifier", required=True, help="workdir of experiments/digits_classifier.py")
    parser.add_argument("--out", required=True, help="folder of the results")
    parser.add_argument("--entry", default="ddim50", help="the sampler: a respacing of the chain or SOLVER:K[:GRID]")
    parser.add_argument("--method", default="ddim", choices=("ddim", "ddpm"),
                        help="the chain's step for a respacing entry: ddim (eta 0; Algorithm 2) or ddpm (ancestral; "
                             "classifier guidance by Algorithm 1)")
    parser.add_argument("--weights", default="0 0.5 1 2 4")
    parser.add_argument("--scales", default="0 1 2 5 10")
    parser.add_argument("--methods", default="cfg classifier_uncond classifier_cond")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    mesh = make_mesh()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"guidance_seed{args.seed}.jsonl")
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            done = {(row["method"], row["scale"]) for row in map(json.loads, f) if row}
    classifier = restore_classifier(args.classifier, mesh)
    net = digits_features.load_digits_classifier()
    labels = np.arange(args.num_samples) % NUM_CLASSES
    key = jax.random.PRNGKey(args.seed)
    for method in args.methods.split():
        experiment, workdir = ("digits_ddpm", args.uncond) if method == "classifier_uncond" else ("digits_cond", args.cond)
        scales = [float(v) for v in (args.weights if method == "cfg" else args.scales).split()]
        todo = [s for s in scales if (method, s) not in done]
        if not todo:
            continue
        config, recipe, params = restore_experiment(experiment, workdir, mesh)
        scorer = sample_scorer(config, args.num_samples, None, mesh)
        base = dataclasses.replace(SamplerChoice.from_settings(config.sample, args.entry), method=args.method)
        if method == "cfg":
            draw = make_sampler(recipe, mesh, num_samples=args.num_samples,
                                choice=dataclasses.replace(base, guidance_weight=1.0))
        else:
            draw = make_sampler(recipe, mesh, num_samples=args.num_samples,
                                choice=dataclasses.replace(base, classifier_scale=1.0), classifier=classifier)
        for scale in todo:
            started = time.perf_counter()
            traced = {"guidance_weight": scale} if method == "cfg" else {"classifier_scale": scale}
            samples = draw(params, key, labels, **traced).astype(np.float32)
            seconds = time.perf_counter() - started
            row = {"method": method, "scale": scale, "entry": args.entry, "chain_step": args.method,
                   "nfe": recipe.family.nfe(base),
                   "num_samples": args.num_samples, "seed": args.seed, "seconds": seconds,
                   "model": workdir, "classifier": args.classifier if method != "cfg" else "",
                   **scorer.score(samples), **label_metrics(net, samples, labels)}
            np.save(os.path.join(args.out, f"samples_{method}_{scale:g}_seed{args.seed}.npy"), samples[:100])
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{method} {scale:g}: FD {row['fd_digits_train']:.2f}, accuracy {row['accuracy']:.3f}, "
                  f"confidence {row['mean_confidence']:.3f} ({seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
