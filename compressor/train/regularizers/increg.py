"""IncReg (Wang et al., 2018/2019): rank-based incremental L2 penalties, pruning at a ceiling.

Basic single-stage version of the official ``Reg_Row`` scheme 1 (methods.md 4), per selected group
(a group plays the role of a layer; its channels are the filters; the penalty acts on the group's
producer kernels). Every ``step()``:

1. score each unpruned channel by the L1 norm of its producer kernels; instantaneous rank r (pruned
   channels first), historical average rank ``h <- ((n-1) h + r) / n``;
2. rank the unpruned channels by h ascending: j = 0 is the least important;
3. with ``N_p`` = channels still to prune (``ceil(ratio*size) - n_pruned``),
   ``alpha = ln(2/u)/N_p``, ``N_c = -ln(u)/alpha``,
   ``Delta(j) = A exp(-alpha j)`` for j < N_c else ``2uA - A exp(-alpha (2 N_c - j))``
   (Delta(0) = A, Delta(N_p) = 0, negative beyond: those channels are relieved);
4. ``lambda <- max(lambda + Delta(j), 0)``; a channel whose lambda reaches ``ceiling`` is pruned for
   good: masked, its kernels zeroed (``zero_at_ceiling=True``, the paper) or, with
   ``zero_at_ceiling=False``, kept at ``lambda = ceiling`` so the penalty drives it to 0 gradually;
5. ``grad += lambda * w`` on the producer kernels (the optimizer's ordinary weight decay stays on).

Defaults from the official solver files: ``unit`` A = 2.5e-4 (= the pruning-phase weight decay),
``ceiling`` = 2.5 (1e4 A), ``u`` = 0.25, lr 5e-4 constant: at least ceiling/A = 1e4 steps before the
first channel is pruned. At least one channel per group is kept. The multi-stage JSTSP schedule is
not implemented. Importance: 1 + the historical average L1 rank (higher = keep), pruned channels
0. Masked channels are re-zeroed after every optimizer step (momentum would revive them).
"""

from __future__ import annotations

import math

import torch

from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, check_range, l1, zero_channels


@register("increg")
class IncReg(Regularizer):
    """Incremental, rank-driven per-channel L2 penalty; channels at the ceiling are pruned."""

    def __init__(self, model, example_input=None, *, prune_ratio: float | dict[int, float] = 0.5,
                 unit: float = 2.5e-4, ceiling: float = 2.5, u: float = 0.25, zero_at_ceiling: bool = True,
                 **kw) -> None:
        check_range("u", u, low=0.0, high=1.0, low_open=True, high_open=True)
        check_range("prune_ratio", prune_ratio, low=0.0, high=1.0, high_open=True)
        check_range("unit", unit, low=0.0, low_open=True)
        check_range("ceiling", ceiling, low=0.0, low_open=True)
        self.prune_ratio, self.unit, self.ceiling, self.u = prune_ratio, float(unit), float(ceiling), float(u)
        self.zero_at_ceiling = bool(zero_at_ceiling)
        super().__init__(model, example_input, **kw)
        self.lam = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in self.groups}
        self.hist_rank = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in self.groups}
        self.pruned = {g.id: torch.zeros(g.size, dtype=torch.bool) for g in self.groups}
        self.target = {g.id: min(g.size - 1, math.ceil(self.per_group(prune_ratio, g) * g.size - 1e-9))
                       for g in self.groups}

    def increment(self, j: torch.Tensor, n_p: int) -> torch.Tensor:
        """The centre-symmetric exponential Delta(j) for ``n_p`` channels still to prune."""
        a = self.unit
        alpha = math.log(2.0 / self.u) / n_p
        n_c = -math.log(self.u) / alpha
        j = j.double()
        return torch.where(j < n_c, a * torch.exp(-alpha * j), 2 * self.u * a - a * torch.exp(-alpha * (2 * n_c - j)))

    def _step(self) -> None:
        n = self.steps
        for g in self.groups:
            gid, pruned = g.id, self.pruned[g.id]
            n_pruned = int(pruned.sum())
            n_p = self.target[gid] - n_pruned
            if n_p > 0:
                score = l1(g, g.producer_kernels)
                score[pruned] = -1.0  # already-pruned channels rank first
                rank = torch.empty(g.size, dtype=torch.float64)
                rank[torch.argsort(score, stable=True)] = torch.arange(g.size, dtype=torch.float64)
                self.hist_rank[gid] = ((n - 1) * self.hist_rank[gid] + rank) / n
                alive = torch.nonzero(~pruned).flatten()
                order = alive[torch.argsort(self.hist_rank[gid][alive], stable=True)]
                j = torch.empty(g.size, dtype=torch.float64)
                j[order] = torch.arange(order.numel(), dtype=torch.float64)
                delta = self.increment(j, n_p)
                lam = self.lam[gid]
                lam[~pruned] = torch.clamp(lam[~pruned] + delta[~pruned], min=0.0)
                hit = (~pruned) & (lam >= self.ceiling)
                if int(hit.sum()) > n_p:  # never prune more than the target in one step
                    cand = torch.nonzero(hit).flatten()
                    keep_hit = cand[torch.argsort(self.hist_rank[gid][cand], stable=True)[:n_p]]
                    hit = torch.zeros_like(hit)
                    hit[keep_hit] = True
                lam[hit] = self.ceiling
                pruned |= hit
            if self.zero_at_ceiling and bool(pruned.any()):
                zero_channels(g, g.producer_kernels, pruned)
            coef = self.lam[gid]
            for s in g.producer_kernels:
                grad = s.grad_rows(g.size)
                if grad is not None:
                    theta = s.rows(g.size)
                    s.write_grad_rows(g.size, grad + coef.to(theta).reshape(-1, 1) * theta)

    def after_optimizer_step(self) -> None:
        if not self.zero_at_ceiling:
            return
        for g in self.groups:
            if bool(self.pruned[g.id].any()):
                zero_channels(g, g.producer_kernels, self.pruned[g.id], grads=False)

    @property
    def done(self) -> bool:
        return all(int(self.pruned[g.id].sum()) >= self.target[g.id] for g in self.groups)

    def importance(self) -> dict[int, torch.Tensor]:
        self.finalize()
        out = {}
        for g in self.groups:
            if self.steps == 0:
                score = l1(g, g.producer_kernels)
            else:
                score = self.hist_rank[g.id] + 1.0  # rank 0 = smallest L1 = least important
            score[self.pruned[g.id]] = 0.0
            out[g.id] = score
        return out

    def _extra_state(self) -> dict:
        return {k: {str(gid): v.clone() for gid, v in getattr(self, k).items()}
                for k in ("lam", "hist_rank", "pruned")}

    def _load_extra_state(self, extra: dict) -> None:
        for k in ("lam", "hist_rank", "pruned"):
            setattr(self, k, {int(gid): v.clone() for gid, v in extra[k].items()})
