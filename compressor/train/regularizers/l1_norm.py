"""L1-norm filter importance (Li et al., ICLR 2017): no regularizer, only a score.

Score of channel c = sum over the group's producer conv/linear weights of sum |W[c]|. For a
coupled (residual) group the producers' L1 norms are summed [design; Li'17 prunes only
block-internal layers, where a group has one producer]. ``step()`` does nothing.
"""

from __future__ import annotations

import torch

from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, l1


@register("l1")
class L1Norm(Regularizer):
    """Importance only: sum of absolute producer kernel weights per channel."""

    def importance(self) -> dict[int, torch.Tensor]:
        return {g.id: l1(g, g.producer_kernels) for g in self.groups}
