"""Soft Filter Pruning (He et al., IJCAI 2018): zero the weakest filters after every epoch, let them regrow.

At construction (``mask_at_init=True``, as the official code does before epoch 0) and at every
``epoch_end()``: per group, the ``floor(prune_ratio * size)`` channels with the smallest L2 norm of
the producer kernels are zeroed. Training then continues with them free to grow back; momentum
buffers and BN are not touched (intended by the paper). ``step()`` does nothing.

``prune_ratio`` is the pruned fraction (the official ``--rate`` is the kept fraction: rate 0.7 =
prune_ratio 0.3). At least one channel per group is kept.

``scope``: ``"kernels"`` (paper: conv/linear weights only; a zeroed filter followed by BN then
outputs beta, see methods.md section 11) or ``"producers"`` [design]: also zero bias and BN
gamma/beta, so the channel outputs exactly 0 and is removed without bias folding.

Importance: the current L2 norm of the producer kernels (0 for the zeroed channels).
"""

from __future__ import annotations

import math

import torch

from compressor.train.groups import ParamSlice, TorchGroup
from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, check_range, l2, lowest


class SoftFilterBase(Regularizer):
    """Shared machinery: per-epoch selection of the weakest filters and their scaling."""

    def __init__(self, model, example_input=None, *, prune_ratio: float | dict[int, float] = 0.3,
                 scope: str = "kernels", mask_at_init: bool = True, **kw) -> None:
        if scope not in ("kernels", "producers"):
            raise ValueError("scope must be 'kernels' or 'producers'")
        check_range("prune_ratio", prune_ratio, low=0.0, high=1.0, high_open=True)
        self.prune_ratio, self.scope = prune_ratio, scope
        super().__init__(model, example_input, **kw)
        self.selected: dict[int, torch.Tensor] = {}
        if mask_at_init:
            self.apply(epoch=0)

    # schedule hooks for the subclasses
    def ratio_at(self, g: TorchGroup, epoch: int) -> float:
        return self.per_group(self.prune_ratio, g)

    def factor_at(self, epoch: int) -> float:
        return 0.0

    def scaled_slices(self, g: TorchGroup) -> list[ParamSlice]:
        if self.scope == "kernels":
            return g.producer_kernels
        return g.channel_slices(trainable=True)

    def count(self, g: TorchGroup, epoch: int) -> int:
        return min(int(math.floor(self.ratio_at(g, epoch) * g.size + 1e-9)), g.size - 1)

    @torch.no_grad()
    def apply(self, epoch: int) -> None:
        """Select the weakest channels of every group and multiply them by the epoch's factor."""
        factor = self.factor_at(epoch)
        for g in self.groups:
            chosen = lowest(l2(g, g.producer_kernels), self.count(g, epoch))
            self.selected[g.id] = chosen
            scale = torch.where(chosen, torch.tensor(factor, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
            for sl in self.scaled_slices(g):
                sl.scale_channels(g.size, scale)

    def epoch_end(self) -> None:
        super().epoch_end()
        self.apply(self.epochs)

    def importance(self) -> dict[int, torch.Tensor]:
        return {g.id: l2(g, g.producer_kernels) for g in self.groups}

    def _extra_state(self) -> dict:
        return {"selected": {str(k): v.clone() for k, v in self.selected.items()}}

    def _load_extra_state(self, extra: dict) -> None:
        self.selected = {int(k): v.clone() for k, v in extra["selected"].items()}


@register("sfp")
class SoftFilterPruning(SoftFilterBase):
    """SFP: hard zero of the weakest ``prune_ratio`` filters after each epoch; they may regrow."""
