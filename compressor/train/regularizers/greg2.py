"""GReg-2 (Wang et al., ICLR 2021): uniform growing penalty first, so magnitude becomes curvature-aware.

Phase ``pick``: every ``update_interval`` steps every channel's lambda += ``delta_pick`` (1e-5) until
it reaches ``pick_ceiling`` (1e-2). Under a growing uniform L2 penalty a weight settles near
``h/(h+lambda) * w0``: low-curvature directions shrink most, so the magnitude at that point is a
Hessian-aware score (OBD-like) without estimating the Hessian. Then the lowest mean |w| are picked
and the ``grow`` phase follows as in GReg-1, with kept channels at ``recover`` (-1e-4, a slight
anti-decay). Importance: the mean |w| at the pick.
"""

from __future__ import annotations

from compressor.train.regularizers import register
from compressor.train.regularizers._greg import GRegBase
from compressor.train.regularizers.base import check_range


@register("greg2")
class GReg2(GRegBase):
    """Uniform penalty growth, Hessian-aware pick, then GReg-1-style growth on the picked set."""

    def __init__(self, model, example_input=None, *, delta_pick: float = 1e-5, pick_ceiling: float = 1e-2,
                 recover: float = -1e-4, **kw) -> None:
        check_range("delta_pick", delta_pick, low=0.0, low_open=True)
        check_range("pick_ceiling", pick_ceiling, low=0.0, low_open=True)
        self.delta_pick, self.pick_ceiling, self.kept_lambda = float(delta_pick), float(pick_ceiling), float(recover)
        super().__init__(model, example_input, **kw)
        self.phase = "pick"

    def update_pick(self) -> None:
        for g in self.groups:
            self.lam[g.id] += self.delta_pick
        if all(float(self.lam[g.id].min()) >= self.pick_ceiling - 1e-12 for g in self.groups):
            self.pick()
            for g in self.groups:
                self.lam[g.id][~self.pruned[g.id]] = self.kept_lambda
            self.phase = "grow"
