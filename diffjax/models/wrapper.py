"""The base of modules that wrap a denoiser network (``FourierInput``, ``ScheduledDenoiser``)."""

from __future__ import annotations

import flax.linen as nn

__all__ = ["NetworkWrapper"]


class NetworkWrapper(nn.Module):
    """A module around ``network`` that reads like it where the rest of diffjax looks:
    ``num_classes`` (conditional or not) and ``dropout`` (whether training needs a dropout key).

    Attributes:
      network: the denoiser (``UNet``, ``MLPDenoiser``, or another wrapper).
    """

    network: nn.Module

    @property
    def num_classes(self):
        return getattr(self.network, "num_classes", None)

    @property
    def dropout(self):
        return getattr(self.network, "dropout", 0.0)
