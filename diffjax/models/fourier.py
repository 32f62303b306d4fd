"""VDM's Fourier-feature network input (Kingma et al. 2021, appendix): a wrapper around any denoiser.

``FourierInput(network)`` calls ``network`` on [x, sin(2^n pi x), cos(2^n pi x)] for n = 7, 8
(``diffusion.vdm.fourier_features``), concatenated on the channel axis, so the network's first
layer sees C (1 + 2 N) channels. With data on the 8-bit grid (spacing 2/255) 2^7 pi x moves by about
pi between neighbouring values, so these features let the network resolve the least significant
bits, which VDM needs for likelihoods close to the data's discreteness. Set by
``config.model.fourier_features``; the wrapped network's params sit under ``network``.
"""

from __future__ import annotations

from diffjax.diffusion import vdm
from diffjax.models.wrapper import NetworkWrapper

__all__ = ["FourierInput"]


class FourierInput(NetworkWrapper):
    """``network([x, fourier_features(x)], t, labels, train=)``.

    Attributes:
      network: the denoiser (``UNet``, ``MLPDenoiser``).
      n_min, n_max: the frequencies 2^n pi, n = n_min..n_max (VDM: 7, 8).
    """

    n_min: int = 7
    n_max: int = 8

    def __call__(self, x, t, labels=None, train: bool = False):
        return self.network(vdm.fourier_features(x, self.n_min, self.n_max), t, labels, train=train)
