"""Network slimming (Liu et al., ICCV 2017): L1 penalty on BatchNorm scales gamma.

Penalty ``s * sum |gamma|`` over the BN scales of every selected group.

- ``proximal=True`` (default) [design]: after each optimizer step,
  ``gamma <- sign(gamma) * max(|gamma| - lr * s, 0)``. This reaches exact zeros, which the
  paper's subgradient does not (there gamma only oscillates around 0).
- ``proximal=False``: the paper's ``gamma.grad += s * sign(gamma)`` in ``step()``.

Importance: ``|gamma_c|`` summed over the group's BNs (raw, so scores compare globally as in the
paper's single percentile). Paper defaults: s = 1e-4 (VGG), 1e-5 (ResNet-164, DenseNet-40), with the
optimizer's weight decay left on. Caveat (methods.md section 11): beta stays nonzero, so a pruned
channel outputs ReLU(beta); fold it or fine-tune.
"""

from __future__ import annotations

import torch

from compressor.train.groups import TorchGroup
from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, check_range


@register("slimming")
class NetworkSlimming(Regularizer):
    """L1 on BN gamma; proximal by default so channels reach exact zeros."""

    needs_kernels = False

    def __init__(self, model, example_input=None, *, s: float = 1e-4, proximal: bool = True, **kw) -> None:
        check_range("s", s, low=0.0)
        self.s, self.proximal = float(s), bool(proximal)
        super().__init__(model, example_input, **kw)

    def accepts(self, g: TorchGroup) -> bool:
        return super().accepts(g) and bool(g.channel_slices(("bn_weight",)))

    def _gammas(self, g: TorchGroup):
        return g.channel_slices(("bn_weight",), trainable=True)

    def _step(self) -> None:
        if self.proximal:
            return
        for g in self.groups:
            for sl in self._gammas(g):
                grad = sl.grad_rows(g.size)
                if grad is not None:
                    sl.write_grad_rows(g.size, grad + self.s * torch.sign(sl.rows(g.size)))

    def after_optimizer_step(self) -> None:
        if not self.proximal:
            return
        for g in self.groups:
            for sl in self._gammas(g):
                thr = self.lr_of(sl.tensor) * self.s
                w = sl.rows(g.size)
                sl.write_rows(g.size, torch.sign(w) * torch.clamp(w.abs() - thr, min=0.0))

    def importance(self) -> dict[int, torch.Tensor]:
        self.finalize()
        out = {}
        for g in self.groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            for sl in g.channel_slices(("bn_weight",)):
                total += sl.rows(g.size).double().abs().sum(1).cpu()
            out[g.id] = total
        return out
