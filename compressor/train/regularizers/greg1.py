"""GReg-1 (Wang et al., ICLR 2021): fix the pruned set by magnitude, then grow its L2 penalty.

The pruned set (lowest mean |w| per group) is picked once, at construction; then every
``update_interval`` steps lambda[pruned] += ``delta`` while kept channels have lambda 0, until the
ceiling or the magnitude-ratio test stops it (see ``_greg`` for the phase machine). Importance: the
mean |w| at the pick.
"""

from __future__ import annotations

from compressor.train.regularizers import register
from compressor.train.regularizers._greg import GRegBase


@register("greg1")
class GReg1(GRegBase):
    """Growing L2 penalty on a magnitude-picked set of channels."""

    kept_lambda = 0.0

    def __init__(self, model, example_input=None, **kw) -> None:
        super().__init__(model, example_input, **kw)
        self.pick()
