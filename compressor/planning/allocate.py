"""Latency-aware allocation: per-group widths that meet a predicted latency while losing the least
importance.

Greedy on a latency table (bench/layers.py): every group offers its next step of channels (its
least important ones, one channel multiple at a time); the step with the smallest importance lost
per millisecond saved is taken, until the table predicts the budget. Importance is each channel's
score over its group's mean, as in the global ranking, so groups compare on one scale. Removing
channels that save no time (a layer whose kernel runs as fast at the narrower width, or a group
that only feeds cheap layers) is what this avoids: a uniform ratio cuts those too.

The step that reaches the budget is the cheapest one that reaches it alone, not necessarily the
best ratio (a knapsack greedy's usual last-item fix: a coarse step would overshoot the budget).

Costs: by default each channel's score over its group's mean; with a :class:`Sensitivity`
(importance/sensitivity.py), the measured output change as a group loses its channels, which
compares groups directly.

No group loses more than ``max_group_ratio`` of its channels (never fewer than min-channels), so a
layer whose channels are cheap to remove is not emptied to pay for the others. With
``PlanOptions.drop_layers`` every group also offers, from any width, the step to none at all,
where surgery/drop.py can remove it whole (a residual branch, a DenseNet layer). Its cost is the
whole group's importance (or its sensitivity with every channel removed, or its MACs); what it
saves is every layer and rest node that leaves the graph with it, less the constant ``Add`` nodes
it leaves behind (surgery/absorb.py), at what the table timed one at that place.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np

from compressor.analysis.groups import Analysis
from compressor.bench.layers import LatencyTable, _value
from compressor.importance.sensitivity import Sensitivity
from compressor.planning.plan import (
    GroupDecision,
    PlanOptions,
    PruningPlan,
    channel_multiplier,
    channel_step,
    normalised_scores,
    signature,
)

#: The most of a group's channels the latency allocation removes.
MAX_GROUP_RATIO = 0.75
#: Predicted fractions of the dense cost (latency, or MACs) where ``--reprobe`` measures the groups'
#: sensitivities again, on the plan the allocation has reached there.
PIVOTS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
#: A removal (--drop-layers) that would save more than this many times what is left to save is
#: skipped: a whole block can be several percent of the model's latency, and the latency search
#: needs plans between "with it" and "without it" to land within its tolerance.
OVERSHOOT = 1.5


def fewest_kept(size: int, min_channels: int = 1, max_group_ratio: float = MAX_GROUP_RATIO) -> int:
    """The fewest channels the allocation keeps of a dimension of ``size`` (before rounding): the
    floor of a group, and where a cost table's grid starts."""
    return max(min_channels, 1, int(math.ceil(size * (1 - max_group_ratio))))


class Allocator:
    """Plans for predicted latency budgets on one table (the per-group data is built once)."""

    def __init__(self, analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions, table: LatencyTable,
                 max_group_ratio: float = MAX_GROUP_RATIO, sensitivity: Sensitivity | None = None,
                 macs: LatencyTable | None = None,
                 reprobe: Callable[[dict[int, int]], Sensitivity] | None = None, pivots=PIVOTS):
        self.analysis, self.opts, self.table = analysis, opts, table
        self.sensitivity = sensitivity
        if reprobe is not None and sensitivity is None:
            raise ValueError("re-probing needs the sensitivity cost")
        self.reprobe, self.pivots = reprobe, tuple(sorted(pivots, reverse=True))
        self._pivots: dict[float, tuple[dict[int, int], Sensitivity]] = {}  # pivot -> (its widths, re-probed there)
        self.macs = macs  # a cost_table in MACs: a step then costs the MACs it removes
        if macs is not None and sensitivity is not None:
            raise ValueError("one allocation cost: sensitivity or MACs")
        self.max_group_ratio = max_group_ratio
        self.groups = analysis.prunable
        self.order: dict[int, np.ndarray] = {}  # channel indices, most important first
        self.cum: dict[int, np.ndarray] = {}  # cum[g][k]: normalised importance of the k least important
        self.step: dict[int, int] = {}
        self.floor: dict[int, int] = {}
        for g in self.groups:
            self.order[g.id] = np.argsort(-np.asarray(scores[g.id], dtype=np.float64), kind="stable")
            self.cum[g.id] = np.concatenate([[0.0], np.cumsum(np.sort(normalised_scores(scores[g.id])))])
            st = self.step[g.id] = channel_step(opts.round_to, channel_multiplier(g))
            least = fewest_kept(g.size, opts.min_channels, max_group_ratio)
            self.floor[g.id] = min(g.size, int(math.ceil(least / st) * st))
        self.touch: dict[int, list[int]] = {g.id: [] for g in self.groups}
        for i, lyr in enumerate(table.layers):
            for gid in set(lyr.cin[1]) | set(lyr.cout[1]):
                if gid in self.touch:
                    self.touch[gid].append(i)
        self.dense = {g.id: g.size for g in self.groups}
        self._effects: dict[frozenset, tuple[str | None, frozenset, dict]] = {}
        self._held = False  # widths_for with a fixed removal set: no removal steps
        self.dense_ms = table.predict(self.dense)
        if macs is not None:
            if [lyr.node for lyr in macs.layers] != [lyr.node for lyr in table.layers]:
                raise ValueError("the MACs table must have the latency table's layers")
            self.macs_dense = max(macs.predict(self.dense), 1.0)

    def _next(self, gid: int, width: int) -> int | None:
        st = self.step[gid]
        nxt = (width - 1) // st * st
        return nxt if nxt >= self.floor[gid] and nxt < width else None

    def _steps(self, gid: int, widths: dict[int, int]) -> list[int]:
        """The widths group ``gid`` can go to next: one channel step narrower, and with
        ``drop_layers`` none at all (from any width: a layer worth removing need not be worth
        narrowing first)."""
        out = []
        nxt = self._next(gid, widths[gid])
        if nxt is not None:
            out.append(nxt)
        if self.opts.drop_layers and not self._held and widths[gid] > 0 and self.removable(gid, widths):
            out.append(0)
        return out

    def _effect(self, removed: frozenset) -> tuple:
        """Removing ``removed`` whole: (why not, or None; the table layers it takes out; per table
        (latency, MACs) the elements of the rest nodes it takes out; the constant Adds it leaves, as
        (dense shape, elements) of the tensors they write)."""
        if removed not in self._effects:
            from compressor.bench.layers import sum_linear, tensor_elements
            from compressor.surgery.drop import removal_effect

            eff = removal_effect(self.analysis, set(removed))
            layers = frozenset(i for i, lyr in enumerate(self.table.layers) if lyr.node in eff.gone)
            rest = {}
            for t in (self.table, self.macs):
                if t is not None:
                    rest[id(t)] = sum_linear(lin for label, lin in t.rest_nodes if label in eff.gone)
            index = self.analysis.index
            left = [(index.shape(name), lin) for name in eff.left
                    if (lin := tensor_elements(self.analysis, name)) is not None]
            self._effects[removed] = (eff.why, layers, rest, left)
        return self._effects[removed]

    def _removed(self, widths: dict[int, int]) -> frozenset:
        """The groups ``widths`` removes whole (none without ``drop_layers``)."""
        return frozenset(g for g, w in widths.items() if w == 0) if self.opts.drop_layers else frozenset()

    def _gone(self, widths: dict[int, int]) -> frozenset:
        """The table layers that the groups ``widths`` removes whole take out of the graph."""
        removed = self._removed(widths)
        return self._effect(removed)[1] if removed else frozenset()

    def _rest(self, widths: dict[int, int], t: LatencyTable) -> float:
        """The table's rest at ``widths``, without the nodes removed groups take out and with the
        constant Adds they leave (each a kernel where the dense model fused a residual sum)."""
        removed = self._removed(widths)
        if not removed:
            return t.rest(widths)
        _, _, rest, left = self._effect(removed)
        return t.rest(widths, rest[id(t)]) + sum(
            t.leftover_ms(shape, _value(lin, widths), _value(lin, self.dense)) for shape, lin in left)

    def removable(self, gid: int, widths: dict[int, int]) -> bool:
        """Can group ``gid`` be removed whole, beside the groups ``widths`` already removes?"""
        if self._effect(frozenset([gid]))[0] is not None:
            return False
        return self._effect(self._removed(widths) | {gid})[0] is None

    def predict(self, widths: dict[int, int], table: LatencyTable | None = None) -> float:
        """The table's latency (cost) at ``widths``, without the layers removed groups take out."""
        t = table or self.table
        gone = self._gone(widths)
        return sum(t.layer_ms(lyr, *lyr.channels(widths)) for i, lyr in enumerate(t.layers)
                   if i not in gone) + self._rest(widths, t)

    def _layers_ms(self, gid: int, widths: dict[int, int], table: LatencyTable | None = None) -> float:
        t = table or self.table
        gone = self._gone(widths)
        return sum(t.layer_ms(t.layers[i], *t.layers[i].channels(widths)) for i in self.touch[gid] if i not in gone)

    def _saving(self, gid: int, widths: dict[int, int], nxt: int, table: LatencyTable | None = None) -> float:
        t = table or self.table
        trial = dict(widths)
        trial[gid] = nxt
        if nxt == 0:  # a removal takes layers out that need not touch the group (what only they fed)
            return self.predict(widths, t) - self.predict(trial, t)
        before = self._layers_ms(gid, widths, t) + self._rest(widths, t)
        return before - (self._layers_ms(gid, trial, t) + self._rest(trial, t))

    def _cost(self, gid: int, widths: dict[int, int], nxt: int) -> float:
        """What taking group ``gid`` from ``widths[gid]`` to ``nxt`` channels costs."""
        size, width = len(self.order[gid]), widths[gid]
        if self.macs is not None:  # the MACs the step removes, at the current widths of the neighbours
            return max(self._saving(gid, widths, nxt, self.macs), 0.0) / self.macs_dense
        if self.sensitivity is not None:
            sens = self.sensitivity
            return sens.at(gid, (size - nxt) / size) - sens.at(gid, (size - width) / size)
        return float(self.cum[gid][size - nxt] - self.cum[gid][size - width])

    def widths_for(self, fraction: float, removed: frozenset | None = None) -> tuple[dict[int, int], float]:
        """Widths predicted to run at ``fraction`` of the dense model's predicted latency (or the
        floor, if that is as far as the allocation goes), and their predicted fraction.

        ``removed``: start with these groups removed whole and remove no other (narrowing only):
        the plans around one removal set, which the latency search asks for when the plans the
        free allocation gives jump past its target (planning/budget.py)."""
        self._held = removed is not None
        try:
            if self.reprobe is not None and removed is None:
                return self._staged(fraction)
            return self._widths_for(fraction, removed or frozenset())
        finally:
            self._held = False

    def _staged(self, fraction: float) -> tuple[dict[int, int], float]:
        """With ``reprobe``: allocate down to each pivot above ``fraction`` in turn, re-measure the
        sensitivities on the plan reached there (every group's cost from where it was left), and go
        on from it with them. The pivots' plans and probes are kept: every later fraction starts
        from them. (Plans around held removals, ``widths_for``'s ``removed``, start from the dense
        model on the dense sensitivity.)"""
        dense_sens = self.sensitivity
        widths: dict[int, int] | None = None
        sens = dense_sens
        try:
            for p in self.pivots:
                if p <= fraction:
                    break
                if p not in self._pivots:
                    self.sensitivity = sens
                    reached, _ = self._widths_for(p, frozenset(), widths)
                    same = next((v for w, v in self._pivots.values() if w == reached), None)
                    self._pivots[p] = (reached, same if same is not None else self.reprobe(reached))
                widths, sens = self._pivots[p]
            self.sensitivity = sens
            return self._widths_for(fraction, frozenset(), widths)
        finally:
            self.sensitivity = dense_sens

    def reprobed(self) -> list[dict]:
        """What re-probing measured: per pivot used so far, the output change of its plan."""
        return [{"at_fraction": p, "output_change": float(f"{s.base_change:.4g}"), "seconds": round(s.seconds, 2),
                 "groups_probed": len(s.raw)} for p, (_, s) in sorted(self._pivots.items(), reverse=True)]

    def _widths_for(self, fraction: float, removed: frozenset,
                    start: dict[int, int] | None = None) -> tuple[dict[int, int], float]:
        widths = dict(self.dense if start is None else start)
        for gid in removed:
            widths[gid] = 0
        budget = fraction * self.dense_ms
        total = self.predict(widths) if removed or start is not None else self.dense_ms
        heap: list[tuple[float, int, int, int]] = []  # (cost per ms, group, width at push, next width)

        def push(gid: int) -> None:
            for nxt in self._steps(gid, widths):
                saving = self._saving(gid, widths, nxt)
                cost = self._cost(gid, widths, nxt)
                heapq.heappush(heap, (cost / max(saving, 1e-9), gid, widths[gid], nxt))

        for g in self.groups:
            push(g.id)
        while heap and total > budget:
            prio, gid, at, nxt = heapq.heappop(heap)
            if at != widths[gid]:
                continue  # stale entry
            if nxt == 0 and not self.removable(gid, widths):
                continue  # a removal the groups removed since then rule out
            saving = self._saving(gid, widths, nxt)
            fresh = self._cost(gid, widths, nxt) / max(saving, 1e-9)
            if heap and fresh > heap[0][0] * (1 + 1e-9) and fresh > prio * (1 + 1e-9):
                heapq.heappush(heap, (fresh, gid, widths[gid], nxt))  # its neighbours shrank: re-rank
                continue
            if nxt == 0 and saving > OVERSHOOT * (total - budget):
                continue  # a removal far past the budget: narrower steps fill the gap instead (see below)
            if saving >= total - budget:
                # the last step: the cheapest step that alone reaches the budget may cost less than
                # the best-ratio one, which can overshoot by a whole coarse step (16 -> 8 channels)
                gid, nxt, saving = self._closing_step(widths, total - budget, gid, nxt, saving)
            widths[gid] = nxt
            total -= saving
            push(gid)
        if total <= budget:
            self._fill(widths, budget - total)
        return widths, self.predict(widths) / self.dense_ms

    def _fill(self, widths: dict[int, int], slack: float) -> None:
        """Give back, in ``widths``, the channel steps that fit in the ``slack`` left below the
        budget, the most cost regained per unit of it first. The greedy's last step can overshoot
        the budget by a whole coarse step, or a removal by a whole layer; without this, every budget
        in that gap got the same plan, and a latency search found no plan between (convnext_tiny:
        nothing from 0.246 to 0.262 of the dense latency). Removed groups stay removed."""
        while slack > 0:
            best = None
            for g in self.groups:
                w = widths[g.id]
                if w == 0 or w == self.dense[g.id]:
                    continue
                up = min(self.dense[g.id], (w // self.step[g.id] + 1) * self.step[g.id])
                trial = dict(widths)
                trial[g.id] = up
                added = self._saving(g.id, trial, w)  # what going back down from ``up`` would save
                if added > slack:
                    continue
                regained = self._cost(g.id, trial, w)
                prio = regained / max(added, 1e-9)
                if regained > 0 and (best is None or prio > best[0]):
                    best = (prio, g.id, up, added)
            if best is None:
                return
            _, gid, up, added = best
            widths[gid] = up
            slack -= max(added, 0.0)

    def _closing_step(self, widths: dict[int, int], gap: float, gid: int, nxt: int,
                      saving: float) -> tuple[int, int, float]:
        best = (self._cost(gid, widths, nxt), gid, nxt, saving)
        for g in self.groups:
            for n in self._steps(g.id, widths):
                if (g.id, n) == (gid, nxt):
                    continue
                s = self._saving(g.id, widths, n)
                if s >= gap and not (n == 0 and s > OVERSHOOT * gap):
                    c = self._cost(g.id, widths, n)
                    if c < best[0]:
                        best = (c, g.id, n, s)
        return best[1], best[2], best[3]

    def plan(self, widths: dict[int, int]) -> PruningPlan:
        decisions = []
        for g in self.analysis.groups:
            if g.id in widths and widths[g.id] < g.size:
                kept = sorted(int(i) for i in self.order[g.id][: widths[g.id]])
            else:
                kept = list(range(g.size))
            decisions.append(GroupDecision(g.id, g.size, kept, signature(g)))
        return PruningPlan(self.opts, decisions)

    def plan_for(self, fraction: float, removed: frozenset | None = None) -> tuple[PruningPlan, float]:
        widths, achieved = self.widths_for(fraction, removed)
        return self.plan(widths), achieved

class TableKnob:
    """The latency search's knob with a latency table: a fraction of the dense model's predicted
    latency, planned by the Allocator (see planning/budget.py, plan_for_latency)."""

    name = "predicted_fraction"

    def __init__(self, allocator: Allocator):
        self.allocator = allocator
        self._planned: dict[tuple, tuple[PruningPlan, float]] = {}
        self.held: frozenset | None = None  # hold_removals

    def floor(self) -> tuple[PruningPlan, float]:
        return self.at(0.0)

    def at(self, fraction: float) -> tuple[PruningPlan, float]:
        key = (fraction, self.held)
        if key not in self._planned:
            self._planned[key] = self.allocator.plan_for(fraction, self.held)
        return self._planned[key]

    def hold_removals(self, plan: PruningPlan) -> bool:
        """Plan from now on with ``plan``'s removed groups removed and no other (narrowing only).
        A removal changes the predicted latency in one jump, and the table's error on the removed
        layers can make that jump much larger in measured latency: convnext_tiny's plans at
        predicted 0.243 and 0.2545 measured 0.245 and 0.269, with nothing between. Holding the
        removals of the plan measured closest gives the widths between. False when there is
        nothing to hold (no --drop-layers, already held, or a plan that removes nothing)."""
        removed = frozenset(g.id for g in plan.groups if not g.kept)
        if not self.allocator.opts.drop_layers or self.held is not None or not removed:
            return False
        self.held = removed
        return True

    def details(self) -> dict:
        a = self.allocator
        cost = "macs" if a.macs is not None else "sensitivity" if a.sensitivity else "importance"
        out = {"allocation": "latency-table", "allocation_cost": cost,
               "max_group_ratio": a.max_group_ratio, "latency_table": a.table.summary()}
        if self.held is not None:
            out["held_removals"] = len(self.held)
        if a.sensitivity is not None:
            out["sensitivity"] = a.sensitivity.summary()
        if a.reprobe is not None:
            out["reprobed"] = a.reprobed()
        return out


def importance_kept(analysis: Analysis, scores: dict[int, np.ndarray], plan: PruningPlan) -> float:
    """The share of the prunable channels' importance a plan keeps, each channel's score taken over
    its group's mean (the scale the allocation and the global ranking compare groups on)."""
    kept = total = 0.0
    decisions = {d.id: d for d in plan.groups}
    for g in analysis.prunable:
        norm = normalised_scores(scores[g.id])
        total += float(norm.sum())
        d = decisions.get(g.id)
        kept += float(norm[d.kept].sum()) if d is not None else float(norm.sum())
    return kept / total if total else 1.0


# --------------------------------------------------------------------------- MACs and params budgets

_COUNT_INDEX = {"macs": 0, "params": 1}
_FLAG = {"macs": "--target-macs", "params": "--target-params"}


def cost_table(analysis: Analysis, opset: int, step: int, floor, kind: str = "macs") -> LatencyTable:
    """A cost table in MACs or parameters instead of milliseconds: the latency table's layers and
    grid, each probe costed by its exact count (MACs are bilinear in the channel counts and a
    layer's weights too, so the interpolation is exact); what the layers leave of the model's count
    is the rest, scaled with the activations (an approximation the budget loop corrects)."""
    from compressor.bench.layers import measure_table
    from compressor.ir.graph import GraphIndex
    from compressor.ir.shapes import resolve_inputs
    from compressor.metrics import count
    from compressor.planning.budget import plan_cost

    at = _COUNT_INDEX[kind]

    def cost(model) -> float:
        return float(count(GraphIndex(model, resolve_inputs(model, {})))[at])

    return measure_table(analysis, opset, cost, float(plan_cost(analysis, {})[at]), step, floor)


def macs_table(analysis: Analysis, opset: int, step: int, floor) -> LatencyTable:
    """:func:`cost_table` in MACs."""
    return cost_table(analysis, opset, step, floor, "macs")


def plan_for_allocated(analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions, kind: str,
                       fraction: float, sensitivity: Sensitivity, opset: int,
                       max_group_ratio: float = MAX_GROUP_RATIO,
                       reprobe: Callable[[dict[int, int]], Sensitivity] | None = None):
    """``--target-macs F --sensitivity`` / ``--target-params F --sensitivity``: per-group widths that
    keep at most ``fraction`` of the MACs (params), allocated by the Allocator on :func:`cost_table`
    with sensitivity costs (output change per MAC or parameter saved). Returns a BudgetResult;
    raises UsageError when the floor keeps more."""
    from compressor.errors import UsageError
    from compressor.planning.budget import BudgetResult, plan_cost

    flag = _FLAG[kind]
    at = _COUNT_INDEX[kind]
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"{flag} must be in (0, 1], got {fraction}")
    table = cost_table(analysis, opset, opts.round_to, lambda n: fewest_kept(n, opts.min_channels, max_group_ratio),
                       kind)
    alloc = Allocator(analysis, scores, opts, table, max_group_ratio=max_group_ratio, sensitivity=sensitivity,
                      reprobe=reprobe)
    if plan_cost(analysis, {})[at] <= 0:
        raise UsageError(f"{flag}: the model has no {'MACs' if kind == 'macs' else 'parameters'} to keep a fraction of (MACs and parameters are counted "
                         "on its Conv, ConvTranspose, Gemm and MatMul layers); use --ratio")
    base = max(plan_cost(analysis, {})[at], 1)
    goal = fraction * base
    steps = []
    details = {"allocation": f"{kind}-table", "allocation_cost": "sensitivity", "max_group_ratio": max_group_ratio,
               "sensitivity": sensitivity.summary()}
    f = fraction
    for _ in range(12):
        plan, predicted = alloc.plan_for(f)
        v = plan_cost(analysis, plan.keep)[at] if plan.keep else base
        steps.append({"predicted_fraction": round(f, 5), kind: v / base})
        if v <= goal:
            if reprobe is not None:
                details["reprobed"] = alloc.reprobed()
            return BudgetResult(plan, kind, fraction, v / base, steps, details)
        if f <= 0.0:
            break
        f = max(0.0, f * goal / v - 1e-6)  # the rest's activation scaling is approximate: tighten
    if opts.drop_layers:
        raise UsageError(f"{flag} {fraction:g} is unreachable with the sensitivity allocation: with every group "
                         f"that can go whole removed and the others losing at most {max_group_ratio:.0%} of their "
                         f"channels, {v / base:.5g} of the {kind} stays (min-channels {opts.min_channels}, round-to "
                         f"{opts.round_to}; `compress inspect` shows which groups can go whole)")
    raise UsageError(f"{flag} {fraction:g} is unreachable with the sensitivity allocation: no group loses "
                     f"more than {max_group_ratio:.0%} of its channels, which keeps {v / base:.5g} of the {kind} "
                     f"(min-channels {opts.min_channels}, round-to {opts.round_to}; try --no-sensitivity, or "
                     "--drop-layers to let groups go whole)")

