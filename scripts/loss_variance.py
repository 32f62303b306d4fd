"""The variance of VDM's diffusion-loss estimate under the model's schedule and under the linear
schedule with the same ends, for one trained network (VDM section 5.2 / Figure 4).

    python scripts/loss_variance.py --experiment digits_vdm:learned --workdir runs/digits_vdm/learned \
        --num_examples 500 --draws 16

The continuous-time diffusion loss L_inf = 1/2 E_t[gamma'(t) ||eps - eps_hat(z_t; lambda_t)||^2]
of a network conditioned on the noise level (diffjax's networks are: ``continuous.
noise_conditioning``) depends on the schedule only through its ends (VDM eq. 17), so the same
network can be evaluated under any schedule with those ends: the expectations must agree (a
check), and the variances of the one-draw estimate say which schedule gives the less noisy
gradient. For each schedule the script draws ``--draws`` i.i.d. times t ~ U(0, 1) (not the
low-discrepancy batch, so that each draw is one independent estimate) and one eps per time for
each of the first ``--num_examples`` test examples, and prints the mean of the estimates (bits/dim)
with its standard error, and their variance with the standard error of the variance (from the
fourth central moment). The EMA params are used. Output: one JSON line per schedule on stdout and
in ``<workdir>/eval/loss_variance.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion import vdm
from diffjax.diffusion.continuous import ContinuousDiffusion
from diffjax.run.restore import restore_experiment
from diffjax.runtime.mesh import make_mesh


def _test_images(recipe, num_examples: int) -> np.ndarray:
    rows = []
    for batch in recipe.eval_batches():
        rows.append(np.asarray(batch["image"])[np.asarray(batch["mask"], bool)])
        if sum(len(r) for r in rows) >= num_examples:
            break
    return np.concatenate(rows)[:num_examples]


def _summary(values: np.ndarray) -> dict:
    n = values.size
    mean, var = float(values.mean()), float(values.var(ddof=1))
    fourth = float(np.mean((values - mean) ** 4))
    return {"mean": mean, "mean_se": math.sqrt(var / n), "variance": var,
            "variance_se": math.sqrt(max(fourth - var**2, 0.0) / n), "estimates": int(n)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_examples", type=int, default=500)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    _, recipe, params = restore_experiment(args.experiment, args.workdir, make_mesh())
    diffusion = recipe.family
    if not (isinstance(diffusion, ContinuousDiffusion) and diffusion.process == "vdm"):
        raise SystemExit("loss_variance.py needs a continuous model on the vdm process (experiments/digits_vdm.py)")
    x = jnp.asarray(_test_images(recipe, args.num_examples))
    own = diffusion.make_process(params)
    ends = np.asarray(own.gamma(jnp.array([0.0, 1.0])), np.float64)
    schedules = {"model's own": own.gamma,
                 f"linear, same ends ({ends[0]:.3f}, {ends[1]:.3f})": lambda t: vdm.linear_gamma(t, *ends)}

    def network(p, inputs, c_noise, cond):
        return recipe.model.apply({"params": p}, inputs, c_noise, cond)

    lines = []
    for name, gamma_fn in schedules.items():
        @jax.jit
        def one_draw(key):
            key_t, key_eps = jax.random.split(key)
            t = jax.random.uniform(key_t, (x.shape[0],))
            gamma_t, dgamma_dt = vdm.gamma_and_derivative(gamma_fn, t)
            eps = jax.random.normal(key_eps, x.shape)
            eps_hat = diffusion.eps_prediction(network, params, vdm.diffuse(x, gamma_t, eps), gamma_t)
            return vdm.continuous_diffusion_loss(eps, eps_hat, dgamma_dt)

        root = jax.random.PRNGKey(args.seed)  # the same (t, eps) draws for every schedule
        values = np.concatenate([np.asarray(one_draw(jax.random.fold_in(root, d))) for d in range(args.draws)])
        line = {"schedule": name, "examples": int(x.shape[0]), "draws": args.draws, **_summary(values.astype(np.float64))}
        lines.append(line)
        print(json.dumps(line), flush=True)
    eval_dir = os.path.join(args.workdir, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    with open(os.path.join(eval_dir, "loss_variance.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    _plot_schedules(schedules, os.path.join(eval_dir, "schedule.png"))


def _plot_schedules(schedules: dict, path: str) -> None:
    """gamma(t) of each schedule and gamma'(t) (the loss's weight on t), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = jnp.linspace(0.0, 1.0, 201)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, gamma_fn in schedules.items():
        gamma, dgamma = vdm.gamma_and_derivative(gamma_fn, t)
        left.plot(t, gamma, label=name)
        right.plot(t, dgamma, label=name)
    left.set(xlabel="t", ylabel="gamma(t) = -log SNR")
    right.set(xlabel="t", ylabel="gamma'(t)", yscale="log")
    left.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
