"""Budgets instead of a uniform ratio: find the plan that meets a MACs, params or measured-latency
target while removing the least important channels.

MACs/params targets search the pruning ratio (uniform, or global with --global) by bisection;
each candidate plan is costed exactly from its new shapes without building a model. A latency
target starts from the MACs fraction that the target suggests and refines it by measuring the
whole pruned model on the provider until the measurement is within the tolerance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from compressor.analysis.groups import Analysis
from compressor.errors import UsageError
from compressor.metrics import count
from compressor.planning.plan import PlanOptions, PruningPlan, make_plan
from compressor.surgery.context import SurgeryContext

MAX_RATIO = 0.99


def plan_cost(analysis: Analysis, keep: dict[int, list[int]]) -> tuple[int, int]:
    """(MACs, params) of the model that ``keep`` would produce."""
    ctx = SurgeryContext(analysis, keep, analysis.index.model, 0)
    macs, params, _ = count(analysis.index, ctx.new_shape)
    return macs, params


@dataclass
class BudgetResult:
    plan: PruningPlan
    kind: str
    target: float
    achieved: float
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "achieved": self.achieved, "steps": self.steps}


def _plan_at(analysis, scores, opts: PlanOptions, ratio: float) -> PruningPlan:
    return make_plan(analysis, scores, dataclasses.replace(opts, ratio=ratio))


def plan_for_fraction(analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions, kind: str,
                      fraction: float, iterations: int = 24) -> BudgetResult:
    """The least pruning whose MACs (kind='macs') or params (kind='params') are <= fraction of the
    original. Raises UsageError when even the most aggressive plan cannot reach it."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--target-{kind} must be in (0, 1], got {fraction}")
    pick = 0 if kind == "macs" else 1
    base = plan_cost(analysis, {})[pick]
    goal = fraction * base
    steps: list[dict] = []

    def value(ratio: float) -> tuple[PruningPlan, float]:
        plan = _plan_at(analysis, scores, opts, ratio)
        v = plan_cost(analysis, plan.keep)[pick] if plan.keep else base
        steps.append({"ratio": round(ratio, 5), kind: v / base})
        return plan, v

    if base <= goal:
        plan, v = value(0.0)
        return BudgetResult(plan, kind, fraction, 1.0, steps)
    best_plan, best_v = value(MAX_RATIO)
    if best_v > goal:
        raise UsageError(
            f"--target-{kind} {fraction:g} is unreachable: pruning every prunable group as far as allowed "
            f"keeps {best_v / base:.3f} of the {kind} (min-channels {opts.min_channels}, round-to {opts.round_to})")
    lo, hi = 0.0, MAX_RATIO
    for _ in range(iterations):
        mid = (lo + hi) / 2
        plan, v = value(mid)
        if v <= goal:
            hi, best_plan, best_v = mid, plan, v
        else:
            lo = mid
        if hi - lo < 1e-4:
            break
    return BudgetResult(best_plan, kind, fraction, best_v / base, steps)


def plan_for_latency(analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions, target_ms: float,
                     measure: Callable[[PruningPlan], float], base_ms: float, tolerance: float = 0.05,
                     max_steps: int = 8) -> BudgetResult:
    """Refine a MACs fraction until the measured latency of the pruned model is within
    ``tolerance`` of ``target_ms``. ``measure(plan)`` returns the pruned model's latency (ms)."""
    if target_ms <= 0:
        raise UsageError(f"--target-latency must be positive, got {target_ms}")
    if target_ms >= base_ms * (1 - tolerance):
        raise UsageError(f"--target-latency {target_ms:g} ms is not below the model's measured "
                         f"{base_ms:.3g} ms: nothing to prune")
    steps: list[dict] = []
    fraction = min(1.0, target_ms / base_ms)
    lo_f, hi_f = 0.0, 1.0  # fraction bracket: lo too slow? (we track by measurement)
    best: tuple[float, PruningPlan, float] | None = None
    floor = None
    for _ in range(max_steps):
        try:
            res = plan_for_fraction(analysis, scores, opts, "macs", fraction)
        except UsageError:
            res = None
        if res is None:
            if floor is None:
                floor = _plan_at(analysis, scores, opts, MAX_RATIO)
            plan, achieved = floor, plan_cost(analysis, floor.keep)[0] / max(plan_cost(analysis, {})[0], 1)
        else:
            plan, achieved = res.plan, res.achieved
        ms = measure(plan)
        steps.append({"macs_fraction": round(achieved, 4), "latency_ms": round(ms, 4)})
        err = abs(ms - target_ms) / target_ms
        if best is None or err < best[0]:
            best = (err, plan, ms)
        if err <= tolerance:
            break
        if ms > target_ms:
            hi_f = min(hi_f, achieved)
            if res is None:
                raise UsageError(
                    f"--target-latency {target_ms:g} ms is unreachable: the most pruned model measured "
                    f"{ms:.3g} ms (dense {base_ms:.3g} ms)")
        else:
            lo_f = max(lo_f, achieved)
        # latency is roughly affine in MACs: scale the fraction, stay inside the bracket
        new = fraction * target_ms / ms
        if not (lo_f < new < hi_f):
            new = (lo_f + hi_f) / 2
        fraction = float(np.clip(new, 1e-4, 1.0))
    err, plan, ms = best
    if err > tolerance:
        raise UsageError(f"--target-latency {target_ms:g} ms: the closest measured plan ran {ms:.3g} ms "
                         f"({err:.1%} off, tolerance {tolerance:.0%}); nothing written")
    return BudgetResult(plan, "latency", target_ms, ms, steps)
