"""What guidance costs: seconds per 1000 digits samples, unguided against classifier-free and classifier
guidance, each a compiled sampler of ``runtime.sampling.make_sampler``, measured in one run.

    python bench/bench_guidance.py [--num 1000] [--entry ddim50] [--reps 3]

The networks are the digits experiments' (the 0.7M UNet, unconditional and class-conditional, and the
0.3M noise-conditional classifier) with initial parameters (the cost does not depend on their values;
the classifier's zero-initialised head is replaced by a random one so its gradient is not trivially
zero). Prints, per sampler, the compile time, the best of ``--reps`` warm runs and the ratio to the
unguided sampler of the same run; the scale is a traced argument, so one compilation serves all scales.
Timings on a machine busy with other work are meaningless.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

from diffjax.models.classifier import NoisyClassifier
from diffjax.models.configs import get_preset
from diffjax.models.denoiser import init_params
from diffjax.run.experiments import build_recipe, load_experiment
from diffjax.runtime.mesh import make_mesh
from diffjax.runtime.sampling import GuidanceClassifier, SamplerChoice, make_sampler
from diffjax.runtime.xla_cpu import use_cpu_fusions


def _params(recipe, seed):
    return jax.jit(lambda key: init_params(recipe.model, key, recipe.input_shape))(jax.random.PRNGKey(seed))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--entry", default="ddim50")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    mesh = make_mesh()
    config = load_experiment("digits_ddpm").get_config()
    unconditional = build_recipe(load_experiment("digits_ddpm"), config)
    conditional = build_recipe(load_experiment("digits_cond"), load_experiment("digits_cond").get_config())
    preset = get_preset("digits_classifier")
    preset.pop("arch")
    model = NoisyClassifier(num_outputs=10, **preset)
    classifier_params = jax.jit(lambda key: init_params(model, key, (8, 8, 1)))(jax.random.PRNGKey(2))
    classifier_params["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(3), classifier_params["head"]["kernel"].shape)
    classifier = GuidanceClassifier(model=model, params=classifier_params, num_classes=10, input_shape=(8, 8, 1))
    base = SamplerChoice.from_settings(config.sample, args.entry)
    cases = [
        ("unguided (unconditional model)", unconditional, base, None),
        ("conditional model, unguided", conditional, base, None),
        ("classifier-free guidance (w = 2)", conditional, dataclasses.replace(base, guidance_weight=2.0), None),
        ("classifier guidance (s = 2), unconditional", unconditional, dataclasses.replace(base, classifier_scale=2.0),
         classifier),
    ]
    labels = np.arange(args.num) % 10
    key = jax.random.PRNGKey(0)
    reference = None
    print(f"{args.num} samples, {args.entry} ({unconditional.family.nfe(base)} NFE), "
          f"{jax.device_count()} {jax.default_backend()} device(s)")
    for name, recipe, choice, guide in cases:
        params = _params(recipe, 0)
        draw = make_sampler(recipe, mesh, num_samples=args.num, choice=choice, classifier=guide)
        started = time.perf_counter()
        draw(params, key, labels)
        first = time.perf_counter() - started
        times = []
        for rep in range(args.reps):
            started = time.perf_counter()
            draw(params, jax.random.fold_in(key, rep + 1), labels)
            times.append(time.perf_counter() - started)
        best = min(times)
        reference = reference or best
        print(f"{name:45s} compile+first {first:6.1f} s  warm {best:6.2f} s  ratio {best / reference:4.2f}", flush=True)


if __name__ == "__main__":
    use_cpu_fusions("")  # the digits experiments' XLA:CPU setting (runtime/xla_cpu.py)
    main()
