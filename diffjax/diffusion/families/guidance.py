"""Guidance of any family's sampler, in one place: classifier-free guidance of a conditional
network (Ho & Salimans 2021, eq. 6: ``samplers.classifier_free_guidance`` on the network) and
classifier guidance by a noise-conditional classifier (Dhariwal & Nichol 2021: Algorithm 2 on a
Gaussian family's data prediction, ``guidance.classifier_guided_x0``; Algorithms 1 and 2 on the
discrete chain's steps). The guidance weight and the classifier's scale and params are traced
arguments of the compiled sampler; what is static is whether each kind is on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from diffjax.diffusion.guidance import classifier_guided_x0
from diffjax.diffusion.noisy_classifier import ClassifierLogProb, chain_grad_fn, process_grad_fn
from diffjax.diffusion.samplers import classifier_free_guidance

__all__ = ["Guidance"]


@dataclasses.dataclass(frozen=True)
class Guidance:
    """How a sampler is guided and what its network is told.

    Attributes:
      conditional: the network takes labels (a class-conditional model).
      null_cond: the null labels [B] of classifier-free guidance, or None (off).
      classifier_log_prob: ``log_prob(params, x_vp, log_snr, labels)`` of the guiding classifier
        (``noisy_classifier.classifier_log_prob``), or None (off).
    """

    conditional: bool = False
    null_cond: jax.Array | None = None
    classifier_log_prob: ClassifierLogProb | None = None

    def model_cond(self, labels: jax.Array | None) -> jax.Array | None:
        """What the network is given: the labels of a conditional model, else None."""
        return labels if self.conditional else None

    def network(self, network, guidance_weight):
        """The network, guided with the traced weight w when classifier-free guidance is on."""
        if self.null_cond is None:
            return network
        return classifier_free_guidance(network, guidance_weight, self.null_cond)

    def data_prediction(self, denoise_x0, process, labels, classifier_args: tuple[Any, Any] | None):
        """The (finished) data prediction shifted by Algorithm 2 toward ``labels`` when classifier
        guidance is on; ``classifier_args`` = (classifier params, scale s)."""
        if self.classifier_log_prob is None:
            return denoise_x0
        classifier_params, scale = classifier_args
        grad_fn = process_grad_fn(self.classifier_log_prob, classifier_params, labels, process)
        return classifier_guided_x0(denoise_x0, grad_fn, scale, process)

    def chain_arguments(self, chain, labels, classifier_args) -> dict[str, Any]:
        """``samplers.sample``'s classifier-guidance arguments on a (respaced) chain."""
        if self.classifier_log_prob is None:
            return {}
        classifier_params, scale = classifier_args
        return dict(classifier_grad=chain_grad_fn(self.classifier_log_prob, classifier_params, labels, chain),
                    classifier_scale=scale)
