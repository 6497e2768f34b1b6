"""SofteR Filter Pruning, SRFP (Cai et al., ICPR 2020): scale the weakest filters by a decaying factor.

No official code exists; the schedule is [design, VERIFY against the paper]: after epoch t of
``epochs`` (t = 1..T), the ``floor(prune_ratio * size)`` lowest-L2 filters of each group are
multiplied by ``alpha_t = alpha0 * (1 - t/T)``; at t = T the factor is 0, so the last epoch ends
with a hard zero exactly like SFP. Scaling by alpha after an update equals an extra weight-decay step
of strength (1 - alpha_t)/lr on those filters, which is why the paper calls it incremental
regularization. Default ``alpha0 = 1.0`` (so the first epochs are gentle). Selection is recomputed
each epoch, so filters can swap. ``scope`` as in SFP. Importance: current L2 norm.
"""

from __future__ import annotations

from compressor.train.regularizers import register
from compressor.train.regularizers.sfp import SoftFilterBase


@register("srfp")
class SRFP(SoftFilterBase):
    """SFP with a monotonically decreasing scaling factor instead of a hard zero."""

    def __init__(self, model, example_input=None, *, epochs: int, alpha0: float = 1.0, **kw) -> None:
        if epochs < 1:
            raise ValueError("epochs must be >= 1")
        if not 0.0 <= alpha0 <= 1.0:
            raise ValueError("alpha0 must lie in [0, 1]")
        self.total_epochs, self.alpha0 = int(epochs), float(alpha0)
        kw.setdefault("mask_at_init", False)
        super().__init__(model, example_input, **kw)

    def factor_at(self, epoch: int) -> float:
        return max(0.0, self.alpha0 * (1.0 - epoch / self.total_epochs))
