"""Shared state machine of GReg-1 and GReg-2 (Wang et al., ICLR 2021): growing L2 penalties.

Per selected group (a group plays the role of a layer, its channels are the filters), one penalty
``lambda[c]`` per channel, applied in ``step()`` as ``grad += lambda[c] * w[c]`` on the group's
producer conv/linear kernels (BN is not penalised; the optimizer's weight decay stays on). Every
``update_interval`` steps (K_u) the penalties are updated by the phase machine:

- ``pick`` (GReg-2 only): uniform growth of every lambda by ``delta_pick`` up to ``pick_ceiling``;
- ``grow``: lambda[pruned] += ``delta``; kept channels get ``kept_lambda`` (0 for GReg-1,
  ``recover`` = -1e-4 for GReg-2). A group stops growing when its lambda reaches ``ceiling``; all
  stop when every group's magnitude ratio (EMA 0.9 of mean|w_kept| / mean|w_pruned|) reaches
  ``mag_ratio_limit``;
- ``stabilize``: lambdas fixed for ``stabilize_steps`` steps;
- ``done``: lambdas stay fixed; prune physically and fine-tune.

Pruned count per group: ``min(ceil(prune_ratio * size), size - 1)``. Channel score: mean |w| over the
producer kernels. Defaults (official option.py): delta 1e-4, K_u 5 (ImageNet) / 10 (CIFAR scripts),
ceiling 1.0, mag_ratio_limit 1000, lr 1e-3 constant during the penalty phase.
"""

from __future__ import annotations

import math

import torch

from compressor.train.groups import TorchGroup
from compressor.train.regularizers.base import Regularizer, channel_count, check_range, l1, lowest

PHASES = ("pick", "grow", "stabilize", "done")


def _check_integer(name: str, value: int, *, low: int) -> None:
    """A step count: a whole number >= ``low`` (``int(value)`` would silently truncate 2.5)."""
    if isinstance(value, bool) or float(value) != int(value) or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class GRegBase(Regularizer):
    """Growing-regularization phase machine; subclasses decide how the pruned set is picked."""

    kept_lambda: float = 0.0

    def __init__(self, model, example_input=None, *, prune_ratio: float | dict[int, float] = 0.5,
                 delta: float = 1e-4, update_interval: int = 5, ceiling: float = 1.0,
                 mag_ratio_limit: float = 1000.0, stabilize_steps: int = 10000, **kw) -> None:
        check_range("prune_ratio", prune_ratio, low=0.0, high=1.0, high_open=True)
        check_range("delta", delta, low=0.0)
        _check_integer("update_interval", update_interval, low=1)
        check_range("ceiling", ceiling, low=0.0, low_open=True)
        check_range("mag_ratio_limit", mag_ratio_limit, low=0.0, low_open=True)
        _check_integer("stabilize_steps", stabilize_steps, low=0)
        self.prune_ratio, self.delta, self.update_interval = prune_ratio, float(delta), int(update_interval)
        self.ceiling, self.mag_ratio_limit, self.stabilize_steps = float(ceiling), float(mag_ratio_limit), int(stabilize_steps)
        super().__init__(model, example_input, **kw)
        self.lam = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in self.groups}
        self.pruned: dict[int, torch.Tensor] = {}
        self.pick_score: dict[int, torch.Tensor] = {}
        self.mag_ratio: dict[int, float] = {}
        self.stopped: dict[int, bool] = {g.id: False for g in self.groups}
        self.phase = "grow"
        self.stabilize_left = self.stabilize_steps

    def count(self, g: TorchGroup) -> int:
        return min(math.ceil(self.per_group(self.prune_ratio, g) * g.size - 1e-9), g.size - 1)

    def score(self, g: TorchGroup) -> torch.Tensor:
        kernels = g.producer_kernels
        return l1(g, kernels) / max(channel_count(g, kernels), 1)

    def pick(self) -> None:
        """Fix the pruned set of every group: the lowest mean |w| now."""
        for g in self.groups:
            s = self.score(g)
            self.pick_score[g.id] = s
            self.pruned[g.id] = lowest(s, self.count(g))

    @property
    def done(self) -> bool:
        return self.phase == "done"

    # ------------------------------------------------------------------ loop
    def _step(self) -> None:
        if self.phase == "stabilize":
            self.stabilize_left -= 1
            if self.stabilize_left <= 0:
                self.phase = "done"
        elif self.phase in ("pick", "grow") and self.steps % self.update_interval == 0:
            self.update_reg()
        for g in self.groups:
            coef = self.lam[g.id]
            for s in g.producer_kernels:
                grad = s.grad_rows(g.size)
                if grad is not None:
                    theta = s.rows(g.size)
                    s.write_grad_rows(g.size, grad + coef.to(theta).reshape(-1, 1) * theta)

    def update_reg(self) -> None:
        if self.phase == "pick":
            self.update_pick()
            return
        for g in self.groups:
            pruned, lam = self.pruned[g.id], self.lam[g.id]
            s = self.score(g)
            kept_mean, pruned_mean = float(s[~pruned].mean()), float(s[pruned].mean()) if bool(pruned.any()) else 0.0
            ratio = kept_mean / max(pruned_mean, 1e-30) if bool(pruned.any()) else math.inf
            prev = self.mag_ratio.get(g.id)
            self.mag_ratio[g.id] = ratio if prev is None or not math.isfinite(prev) else 0.9 * prev + 0.1 * ratio
            if self.stopped[g.id]:
                continue
            lam[pruned] += self.delta
            lam[~pruned] = self.kept_lambda
            if bool(pruned.any()) and float(lam[pruned].max()) >= self.ceiling:
                self.stopped[g.id] = True
        if all(r >= self.mag_ratio_limit for r in self.mag_ratio.values()):
            self.stopped = {gid: True for gid in self.stopped}
        if all(self.stopped.values()):
            self.phase = "stabilize" if self.stabilize_steps > 0 else "done"

    def update_pick(self) -> None:  # GReg-2 overrides
        raise NotImplementedError

    def importance(self) -> dict[int, torch.Tensor]:
        if self.pick_score:
            return {g.id: self.pick_score[g.id].clone() for g in self.groups}
        return {g.id: self.score(g) for g in self.groups}

    def _extra_state(self) -> dict:
        return {
            "lam": {str(k): v.clone() for k, v in self.lam.items()},
            "pruned": {str(k): v.clone() for k, v in self.pruned.items()},
            "pick_score": {str(k): v.clone() for k, v in self.pick_score.items()},
            "mag_ratio": {str(k): float(v) for k, v in self.mag_ratio.items()},
            "stopped": {str(k): bool(v) for k, v in self.stopped.items()},
            "phase": self.phase, "stabilize_left": self.stabilize_left,
        }

    def _load_extra_state(self, extra: dict) -> None:
        for key in ("lam", "pruned", "pick_score"):
            setattr(self, key, {int(k): v.clone() for k, v in extra[key].items()})
        self.mag_ratio = {int(k): float(v) for k, v in extra["mag_ratio"].items()}
        self.stopped = {int(k): bool(v) for k, v in extra["stopped"].items()}
        self.phase, self.stabilize_left = str(extra["phase"]), int(extra["stabilize_left"])
