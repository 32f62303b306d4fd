"""Runs a few data-parallel train steps and saves the results (used by test_parallel.py).

    python tests/support/parallel_worker.py OUT.npz [--devices N] [--process_id I --num_processes P --port PORT]

With --devices N the step runs on a mesh of the first N local devices; with
--num_processes the processes join with jax.distributed on 127.0.0.1.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=0)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import jax

    from diffjax.runtime import mesh as parallel

    if args.num_processes > 1:
        parallel.initialize_distributed(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
    import numpy as np

    from diffjax.train.loop import make_init_fn
    from diffjax.train.optim import make_optimizer
    from diffjax.train.step import make_train_step
    from tests.support.train_utils import flat_params, toy_config, toy_recipe

    config = toy_config(batch_size=32)
    recipe = toy_recipe(config)
    devices = jax.devices()[: args.devices] if args.devices else None
    mesh = parallel.make_mesh(devices)
    optimizer = make_optimizer(config.train)
    init = jax.jit(make_init_fn(recipe, optimizer), out_shardings=parallel.replicated_sharding(mesh))
    state = init(jax.random.PRNGKey(0))
    step_fn = make_train_step(recipe, optimizer, config.train.ema_decay, mesh)
    batches = recipe.train_batches(0)
    losses = []
    for _ in range(args.steps):
        state, metrics = step_fn(state, parallel.global_batch(mesh, next(batches)))
        losses.append(float(metrics["loss"]))
    params = flat_params(jax.device_get(state.params))
    ema = flat_params(jax.device_get(state.ema_params))
    if jax.process_index() == 0:
        np.savez(args.out, losses=np.asarray(losses), params=params, ema=ema, devices=len(mesh.devices.ravel()))
    print("done", jax.process_index(), losses)


if __name__ == "__main__":
    main()
