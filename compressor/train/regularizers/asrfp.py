"""Asymptotic SRFP, ASRFP (Cai et al., ICPR 2020): SRFP with an asymptotically rising pruning rate.

Rate schedule [recalled from ASFP (He et al. 2019) - VERIFY]: ``P_t = a*exp(-k t) + b`` with
``P_0 = 0``, ``P_{T/4} = 3P/4``, ``P_T = P``. Writing ``x = exp(-k T/4)`` the conditions give
``1 + x + x^2 + x^3 = 4/3`` (solved once by bisection, x ~ 0.2516) and
``P_t = b * (1 - x^(4t/T))`` with ``b = 3P / (4 (1 - x))``. The scaling factor follows SRFP
(``alpha_t = alpha0 * (1 - t/T)``), so the final epoch ends with ``floor(P * size)`` exact zeros.
"""

from __future__ import annotations

from compressor.train.groups import TorchGroup
from compressor.train.regularizers import register
from compressor.train.regularizers.srfp import SRFP


def _solve_x() -> float:
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 1 + mid + mid**2 + mid**3 < 4.0 / 3.0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


_X = _solve_x()


@register("asrfp")
class ASRFP(SRFP):
    """SRFP whose pruned fraction rises from 0 to ``prune_ratio`` (3/4 of it after a quarter)."""

    def ratio_at(self, g: TorchGroup, epoch: int) -> float:
        p = self.per_group(self.prune_ratio, g)
        t = min(max(epoch, 0), self.total_epochs)
        b = 3.0 * p / (4.0 * (1.0 - _X))
        return min(p, b * (1.0 - _X ** (4.0 * t / self.total_epochs)))
