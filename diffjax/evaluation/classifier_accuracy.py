"""A noise-conditional classifier's accuracy on held-out data, per band of noise levels.

For each evaluation example and each of ``num_bands`` equal bands of the chain's steps
[0, T), a step t is drawn uniformly in the band, the example is noised by q(x_t | x_0) and
classified at t. A band's record: its steps and log-SNR range, the accuracy (arg-max class =
label) with its binomial standard error, the mean log-likelihood of the label (nats) and the
mean probability the classifier gives the label (``run.evaluate`` writes it to
``eval/classifier.json``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffjax.diffusion.continuous import noise_conditioning
from diffjax.diffusion.gaussian import q_sample
from diffjax.diffusion.noisy_classifier import chain_log_snr, label_log_prob
from diffjax.runtime.mesh import global_batch

__all__ = ["accuracy_by_band"]


def accuracy_by_band(recipe, params: Any, mesh: Mesh, batches, *, num_bands: int = 10, seed: int = 0,
                     draws: int = 1) -> dict[str, Any]:
    """The classifier's accuracy per band of steps over ``batches`` (the evaluation split).

    Args:
      recipe: a classifier experiment's recipe (``recipe.family`` a ``NoisyClassification``).
      params: the classifier's params (e.g. EMA), replicated over ``mesh``.
      mesh: the data mesh; each batch's size must divide over its devices.
      batches: iterable of ``{"image": [b, ...], "label": [b]}``.
      num_bands: equal bands of [0, T).
      seed: draws of t and noise (example i of batch j, band k, draw d: a fixed key).
      draws: noisy copies per example and band.

    Returns:
      ``{"bands": [{"t_min", "t_max", "log_snr_max", "log_snr_min", "accuracy", "accuracy_stderr",
      "log_likelihood", "probability", "count"}, ...], "accuracy", "num_examples", ...}``.
    """
    if recipe.family.draws_samples:
        raise TypeError(f"accuracy_by_band evaluates a noise-conditional classifier's recipe, not a "
                        f"{recipe.family.name} model's")
    schedule = recipe.family.schedule
    num_steps = schedule.num_timesteps
    edges = np.linspace(0, num_steps, num_bands + 1).round().astype(int)

    @jax.jit
    def score(params, images, labels, key):
        """[bands, draws, B] correct and log-likelihood."""
        def one(band, draw):
            band_key = jax.random.fold_in(jax.random.fold_in(key, band), draw)
            key_t, key_noise = jax.random.split(band_key)
            low, high = jnp.asarray(edges)[band], jnp.asarray(edges)[band + 1]
            t = jax.random.randint(key_t, labels.shape, low, high)
            x_t = q_sample(schedule, images, t, jax.random.normal(key_noise, images.shape, images.dtype))
            logits = recipe.model.apply({"params": params}, x_t, noise_conditioning(chain_log_snr(schedule, t)))
            correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
            return correct, label_log_prob(logits, labels)  # one forward pass for both

        bands, draw_index = jnp.meshgrid(jnp.arange(num_bands), jnp.arange(draws), indexing="ij")
        return jax.vmap(jax.vmap(one))(bands, draw_index)

    correct_parts, log_lik_parts = [], []
    root = jax.random.PRNGKey(seed)
    for index, batch in enumerate(batches):
        arrays = global_batch(mesh, {"image": np.asarray(batch["image"], np.float32),
                                     "label": np.asarray(batch["label"], np.int32)})
        correct, log_lik = score(params, arrays["image"], arrays["label"], jax.random.fold_in(root, index))
        correct_parts.append(np.asarray(correct))
        log_lik_parts.append(np.asarray(log_lik))
    if not correct_parts:
        raise ValueError("no evaluation examples")
    correct = np.concatenate(correct_parts, axis=-1)  # [bands, draws, N]
    log_lik = np.concatenate(log_lik_parts, axis=-1)
    count = correct.shape[1] * correct.shape[2]
    lam = np.asarray(chain_log_snr(schedule, jnp.asarray(edges[:-1])))
    lam_last = np.asarray(chain_log_snr(schedule, jnp.asarray(edges[1:] - 1)))
    bands = []
    for k in range(num_bands):
        accuracy = float(correct[k].mean())
        bands.append({
            "t_min": int(edges[k]), "t_max": int(edges[k + 1] - 1),
            "log_snr_max": float(lam[k]), "log_snr_min": float(lam_last[k]),
            "accuracy": accuracy, "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / count),
            "log_likelihood": float(log_lik[k].mean()), "probability": float(np.exp(log_lik[k]).mean()),
            "count": count,
        })
    return {
        "bands": bands,
        "accuracy": float(correct.mean()),
        "log_likelihood": float(log_lik.mean()),
        "num_examples": int(correct.shape[2]),
        "draws": draws,
        "seed": seed,
        "timesteps": num_steps,
    }

