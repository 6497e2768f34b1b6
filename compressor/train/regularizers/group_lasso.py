"""Group lasso / structured sparsity learning (Wen et al., NeurIPS 2016) over full channel groups.

Penalty ``lam * sum_g ||w_g||_2`` where ``w_g`` concatenates every trainable slice that disappears
with channel g: producer kernels and biases, BN gamma/beta, per-channel params and the consumers'
input slices (the "full group" of DepGraph; methods.md 8b).

- ``proximal=True`` (default): block soft-threshold after each optimizer step,
  ``w_g <- w_g * max(0, 1 - lr*lam/||w_g||)``, which gives exact zeros. The lr is that of the
  group's first trainable producer (the threshold must be one number per group).
- ``proximal=False``: ``grad += lam * w_g / ||w_g||`` in ``step()`` (subgradient; no exact zeros).

A zeroed group has zero kernel, bias, gamma and beta, so the channel outputs exactly 0 and its
removal needs no bias folding. Importance: ``||w_g||_2``.
"""

from __future__ import annotations

import torch

from compressor.train.groups import TorchGroup
from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, check_range


@register("group_lasso")
class GroupLasso(Regularizer):
    """L2,1 penalty over full coupled groups, proximal by default (exact zeros)."""

    def __init__(self, model, example_input=None, *, lam: float = 1e-4, proximal: bool = True,
                 eps: float = 1e-12, **kw) -> None:
        check_range("lam", lam, low=0.0)
        check_range("eps", eps, low=0.0, low_open=True)
        self.lam, self.proximal, self.eps = float(lam), bool(proximal), float(eps)
        super().__init__(model, example_input, **kw)

    def _norms(self, g: TorchGroup) -> torch.Tensor:
        sq = torch.zeros(g.size, dtype=torch.float64)
        for sl in g.trainable_slices:
            sq += sl.rows(g.size).double().square().sum(1).cpu()
        return sq.sqrt()

    def _step(self) -> None:
        if self.proximal:
            return
        for g in self.groups:
            norms = self._norms(g).clamp_min(self.eps)
            for sl in g.trainable_slices:
                grad = sl.grad_rows(g.size)
                if grad is not None:
                    w = sl.rows(g.size)
                    sl.write_grad_rows(g.size, grad + self.lam * w / norms.to(w).reshape(-1, 1))

    def after_optimizer_step(self) -> None:
        if not self.proximal:
            return
        for g in self.groups:
            lead = g.channel_slices(trainable=True) or g.trainable_slices
            thr = self.lr_of(lead[0].tensor) * self.lam
            norms = self._norms(g)
            factor = torch.clamp(1.0 - thr / norms.clamp_min(self.eps), min=0.0)
            factor[norms <= self.eps] = 0.0
            for sl in g.trainable_slices:
                sl.scale_channels(g.size, factor)

    def importance(self) -> dict[int, torch.Tensor]:
        self.finalize()
        return {g.id: self._norms(g) for g in self.groups}
