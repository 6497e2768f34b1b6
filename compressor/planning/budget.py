"""Budgets instead of a uniform ratio: find the plan that meets a MACs, params or measured-latency
target while removing the least important channels.

MACs/params targets search the pruning ratio (uniform, or global with --global) by bisection;
each candidate plan is costed exactly from its new shapes without building a model. A global plan
then takes back, a rounding step at a time, the channels that still fit under the budget.

A latency target in ms is read against the dense model's latency measured by the caller in the
same process (the reference): the search looks for the plan whose latency *ratio* to the dense
model, timed interleaved with it, is within the tolerance of target / reference, and confirms it
with a second measurement. Ratios of interleaved runs survive the load drift of a shared machine;
absolute milliseconds measured seconds apart do not.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from compressor.analysis.groups import Analysis
from compressor.bench.ratio import RatioSample
from compressor.errors import UsageError
from compressor.metrics import count
from compressor.planning.plan import (PlanOptions, PruningPlan, channel_multiplier, make_plan, rounded_keep,
                                      normalised_scores, plan_for_widths)
from compressor.surgery.context import SurgeryContext

MAX_RATIO = 0.99


def plan_cost(analysis: Analysis, keep: dict[int, list[int]]) -> tuple[int, int]:
    """(MACs, params) of the model that ``keep`` would produce."""
    ctx = SurgeryContext(analysis, keep, analysis.index.model, 0)
    removed = {gid for gid, kept in keep.items() if len(kept) == 0}
    gone: set[str] = set()
    added = 0
    if removed:  # groups removed whole take layers with them (surgery/drop.py)
        from compressor.surgery.drop import removal_effect

        eff = removal_effect(analysis, removed)
        gone, added = eff.gone, eff.added
    macs, params, _ = count(analysis.index, ctx.new_shape, gone)
    params += added
    return macs, params


@dataclass
class BudgetResult:
    plan: PruningPlan
    kind: str
    target: float
    achieved: float
    steps: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # latency: reference, ratio, confirmation

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "achieved": self.achieved, **self.details,
                "steps": self.steps}


def _plan_at(analysis, scores, opts: PlanOptions, ratio: float) -> PruningPlan:
    return make_plan(analysis, scores, dataclasses.replace(opts, ratio=ratio))


def plan_for_fraction(analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions, kind: str,
                      fraction: float, iterations: int = 24) -> BudgetResult:
    """The least pruning whose MACs (kind='macs') or params (kind='params') are <= fraction of the
    original (for a global ranking, with the slack under it given back: _give_back). Raises
    UsageError when even the most aggressive plan cannot reach it."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--target-{kind} must be in (0, 1], got {fraction}")
    pick = 0 if kind == "macs" else 1
    base = plan_cost(analysis, {})[pick]
    if base <= 0:
        raise UsageError(f"--target-{kind}: the model has no {'MACs' if kind == 'macs' else 'parameters'} to keep a fraction of (MACs and parameters "
                         "are counted on its Conv, ConvTranspose, Gemm and MatMul layers); use --ratio")
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
    if best_v > goal and not analysis.prunable:
        raise UsageError(f"--target-{kind} {fraction:g} is unreachable: no channel group of this model can be pruned "
                         f"(`compress inspect` says what blocks each)")
    if best_v > goal:
        raise UsageError(
            f"--target-{kind} {fraction:g} is unreachable: pruning every prunable group as far as allowed "
            f"keeps {best_v / base:.5g} of the {kind} (min-channels {opts.min_channels}, round-to {opts.round_to})")
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
    given_back = 0
    if opts.global_ranking and best_v < goal:
        best_plan, best_v, given_back = _give_back(analysis, scores, opts, best_plan, best_v, goal, pick)
    res = BudgetResult(best_plan, kind, fraction, best_v / base, steps)
    if given_back:
        res.details["given_back"] = given_back
    return res


GIVE_BACK_EVALUATIONS = 1000


def _give_back(analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions, plan: PruningPlan,
               cost: int, goal: float, pick: int) -> tuple[PruningPlan, int, int]:
    """Fill the slack a global plan leaves under its budget. The global ranking's cost moves in
    jumps (one channel of a residual trunk, or one rounding step of a narrow group, changes many
    layers): the least ratio that meets the budget can land far below it (a 0.5 MACs target at
    0.33). Channels come back one rounding step at a time, the step whose channels rank highest on
    the global scale first, as long as the plan stays within the budget; a step that does not fit
    retires its group (restoring channels only makes every other step dearer). Returns the plan,
    its cost and the number of channels given back."""
    order = {g.id: np.argsort(-scores[g.id], kind="stable") for g in analysis.prunable}
    width = {g.id: len(g.kept) for g in plan.groups if g.id in order}
    norm = {g.id: np.sort(normalised_scores(scores[g.id]))[::-1] for g in analysis.prunable}
    mult = {g.id: channel_multiplier(g) for g in analysis.prunable}
    sizes = {g.id: g.size for g in analysis.prunable}

    def next_width(gid: int) -> int:
        return rounded_keep(sizes[gid], width[gid] + 1, opts, mult[gid])

    def keep_of(w: dict[int, int]) -> dict[int, list[int]]:
        return {gid: sorted(int(i) for i in order[gid][:n]) for gid, n in w.items() if n < sizes[gid]}

    heap = []
    for gid in order:
        nxt = next_width(gid)
        if nxt > width[gid]:
            heapq.heappush(heap, (-float(norm[gid][width[gid]:nxt].mean()), gid, nxt))
    start = dict(width)
    evaluations = 0
    while heap and evaluations < GIVE_BACK_EVALUATIONS:
        _, gid, nxt = heapq.heappop(heap)
        trial = {**width, gid: nxt}
        evaluations += 1
        v = plan_cost(analysis, keep_of(trial))[pick]
        if v > goal:
            continue
        width, cost = trial, v
        nxt = next_width(gid)
        if nxt > width[gid]:
            heapq.heappush(heap, (-float(norm[gid][width[gid]:nxt].mean()), gid, nxt))
    given = sum(width[g] - start[g] for g in width)
    if not given:
        return plan, cost, 0
    return plan_for_widths(analysis, scores, plan.options, width), cost, given


# --------------------------------------------------------------------------- latency targets


class LatencyTargetError(UsageError):
    """A latency target that was not met (unreachable, or not found within the measuring budget).
    ``budget`` holds what the search measured, for tools and tests; nothing is written."""

    def __init__(self, message: str, budget: dict):
        super().__init__(message)
        self.budget = budget


@dataclass
class LatencySearch:
    """How the latency search measures and when it gives up (see ``plan_for_latency``)."""

    tolerance: float = 0.05
    max_measurements: int = 16  # search and confirmation measurements together
    time_budget_s: float = 300.0
    aim: float = 0.5  # trigger a confirmation when within aim * tolerance (tolerance in the last third)
    drift: float = 0.10  # a measurement's dense runs this far from the reference: read the reference again
    max_rereads: int = 2


@dataclass
class _Point:
    """One plan the search measured; repeated measurements of the same plan are pooled.
    ``macs_fraction``: the knob's value for the plan (its MACs fraction, or the latency table's
    predicted fraction)."""

    macs_fraction: float
    plan: PruningPlan
    sample: RatioSample
    measurements: int = 1
    confirmation: RatioSample | None = None  # the last confirmation measurement, if any


class MacsKnob:
    """The latency search's knob without a latency table: the MACs fraction, each value planned
    with the options' strategy (uniform ratio, or the global ranking) bisected to those MACs."""

    name = "macs_fraction"

    def __init__(self, analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions):
        self.analysis, self.scores, self.opts = analysis, scores, opts
        self._planned: dict[float, tuple[PruningPlan, float]] = {}

    def floor(self) -> tuple[PruningPlan, float]:
        plan = _plan_at(self.analysis, self.scores, self.opts, MAX_RATIO)
        base = max(plan_cost(self.analysis, {})[0], 1)
        return plan, plan_cost(self.analysis, plan.keep)[0] / base

    def at(self, fraction: float) -> tuple[PruningPlan, float]:
        if fraction not in self._planned:
            res = plan_for_fraction(self.analysis, self.scores, self.opts, "macs", fraction)
            self._planned[fraction] = res.plan, res.achieved
        return self._planned[fraction]

    def details(self) -> dict:
        return {"allocation": "uniform" if not self.opts.global_ranking else "global"}


def _plan_key(plan: PruningPlan) -> tuple:
    """Plans with the same widths run alike: key by kept channel counts."""
    return tuple(sorted((gid, len(kept)) for gid, kept in plan.keep.items()))


def monotone_fit(xs: list[float], ys: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares non-decreasing fit of ys over increasing xs (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [weighted mean, weight, count]
    for y, w in zip(ys, weights):
        blocks.append([y, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            y2, w2, n2 = blocks.pop()
            y1, w1, n1 = blocks.pop()
            blocks.append([(y1 * w1 + y2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    fit: list[float] = []
    for y, _, n in blocks:
        fit += [y] * n
    return fit


def next_fraction(points: list[tuple[float, float, float]], target: float, floor: float) -> float:
    """The MACs fraction at which a monotone fit of the measured (fraction, ratio, weight) points
    reaches the target ratio. The dense model, (1, 1), is an exact point.

    Between measured points the fit is interpolated linearly. Below the smallest one it is
    extrapolated along the secant of the two smallest pruned points of the fit, but never more
    than twice as far as scaling the fraction in proportion to the ratio; proportionally with one
    pruned point or a flat secant (a plan slower than the dense model pools with (1, 1): then its
    measured ratio is used). Pruned models pay per-op costs the dense one does not (odd widths miss
    ORT's blocked CPU kernels), so the line to (1, 1) is a poor guide below the first point.
    """
    pts = sorted(p for p in points if p[0] < 1.0) + [(1.0, 1.0, 1e9)]
    xs = [p[0] for p in pts]
    fit = monotone_fit(xs, [p[1] for p in pts], [p[2] for p in pts])
    i = next(k for k, y in enumerate(fit) if y >= target)  # fit[-1] == 1 > target
    if i == 0:
        x0, y0 = xs[0], max(fit[0], pts[0][1])
        proportional = x0 * target / y0
        j = next((k for k in range(1, len(xs) - 1) if fit[k] > fit[0]), None)  # not the (1, 1) anchor
        slope = (fit[j] - fit[0]) / (xs[j] - x0) if j is not None else 0.0
        f = x0 - (fit[0] - target) / slope if slope > 1e-6 and fit[0] < 1.0 else proportional
        f = max(f, proportional / 2)
    else:
        xa, ya, xb, yb = xs[i - 1], fit[i - 1], xs[i], fit[i]
        f = xa + (target - ya) * (xb - xa) / (yb - ya) if yb > ya else (xa + xb) / 2
    return float(min(1.0, max(floor, f)))


def plan_for_latency(analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions, target_ms: float,
                     measure: Callable[[PruningPlan, bool], RatioSample], reference_ms: float,
                     search: LatencySearch | None = None, clock: Callable[[], float] = time.monotonic,
                     knob=None, reread_reference: Callable[[], float] | None = None,
                     label: str | None = None) -> BudgetResult:
    """The plan whose measured latency ratio to the dense model is within the tolerance of
    ``target_ms / reference_ms``, confirmed by a second measurement.

    ``reference_ms`` is the dense model's latency measured by the caller; the target is read
    against it, so the search aims at a fixed ratio (a reference that followed the machine's
    load run by run would move the target under it). One exception: when a measurement's own
    dense runs are more than ``search.drift`` off the reference, the reference is read again
    (``reread_reference``, at most ``search.max_rereads`` times), and if that reading confirms the
    shift the target is read against it from then on. The ratios measured so far stay valid (both
    models ran in the same state); only the ratio aimed at moves. This keeps one slow (or fast)
    stretch of the machine during the first reading from defining the whole search
    (``budget.rereads`` lists each reading). ``measure(plan, confirm)`` times the pruned model interleaved with the dense one
    and returns the per-round ratios pruned / dense (``confirm`` asks for the longer, more precise
    measurement). ``knob`` turns a fraction into a plan: MacsKnob (the default) plans at a MACs
    fraction; planning.allocate.TableKnob at a fraction of the latency its table predicts. The
    search keeps every (knob value, ratio) pair, pools repeated measurements
    of the same widths, and picks the next knob value from a monotone fit of all of them. A plan
    measured within ``aim * tolerance`` of the target (within the tolerance in the last third of
    the budget) is measured again; it is accepted when that confirmation and the pooled ratio are
    both within the tolerance. Raises LatencyTargetError (a UsageError: exit 2, nothing written)
    when the most pruned plan allowed is measured slower than the target, or when no plan was
    confirmed within ``max_measurements`` / ``time_budget_s``. ``label``: how messages name the
    target (default ``--target-latency MS ms``; the caller names a ``--target-speedup``).
    """
    search = search or LatencySearch()
    tol = search.tolerance
    label = label or f"--target-latency {target_ms:g} ms"
    if target_ms <= 0:
        raise UsageError(f"--target-latency must be positive, got {target_ms}")
    if reference_ms <= 0:
        raise UsageError(f"the dense model's latency measured {reference_ms} ms; cannot read a target against it")
    target = target_ms / reference_ms
    first_reference = reference_ms
    if _dense_meets(target, tol):
        raise UsageError(f"the dense model, {reference_ms:.4g} ms measured here, already meets {label} within the "
                         f"tolerance of {_pct(tol)} (target ratio {target:.3f}): nothing to prune")
    rereads: list[dict] = []
    knob = knob or MacsKnob(analysis, scores, opts)
    base = max(plan_cost(analysis, {})[0], 1)
    floor_plan, floor_f = knob.floor()
    if not floor_plan.keep:
        raise UsageError(f"{label} is unreachable: no group can be pruned")
    floor_macs = plan_cost(analysis, floor_plan.keep)[0] / base
    floor_key = _plan_key(floor_plan)
    points: dict[tuple, _Point] = {}
    steps: list[dict] = []
    start = clock()

    held_after: int | None = None  # the measurement after which the knob held a plan's removals

    def details() -> dict:
        out = {"reference_ms": reference_ms, "target_ratio": target, "tolerance": tol, **knob.details()}
        if held_after is not None:
            out["held_removals_after"] = held_after
        if rereads:
            out.update({"reference_first_ms": first_reference, "rereads": rereads})
        return out

    def check_drift(sample: RatioSample) -> None:
        """Read the reference again when this measurement's dense runs left it; re-aim if confirmed."""
        nonlocal reference_ms, target
        if reread_reference is None or not sample.reference_ms or len(rereads) >= search.max_rereads:
            return
        dense_now = float(np.median(sample.reference_ms))
        if abs(dense_now / reference_ms - 1) <= search.drift:
            return
        fresh = float(reread_reference())
        moved = abs(fresh / reference_ms - 1) > search.drift
        rereads.append({"after_measurement": measured, "dense_in_measurement_ms": round(dense_now, 4),
                        "reference_was_ms": round(reference_ms, 4), "reread_ms": round(fresh, 4),
                        "target_ratio_was": round(target, 5), "reanchored": moved})
        if moved:
            reference_ms, target = fresh, target_ms / fresh
            if _dense_meets(target, tol):
                raise LatencyTargetError(
                    f"the dense model, {fresh:.4g} ms as measured again during the search (first "
                    f"{first_reference:.4g} ms; the machine's speed changed), already meets {label} within "
                    f"{_pct(tol)}: nothing written", {**details(), "steps": steps})

    macs_of: dict[tuple, float] = {}

    def log_step(plan: PruningPlan, fraction: float, sample: RatioSample, role: str) -> None:
        key = _plan_key(plan)
        if key not in macs_of:
            macs_of[key] = plan_cost(analysis, plan.keep)[0] / base
        knob_value = {} if knob.name == "macs_fraction" else {knob.name: round(fraction, 4)}
        steps.append({"macs_fraction": round(macs_of[key], 4), **knob_value,
                      "latency_ms": round(reference_ms * sample.median, 4), "role": role, **sample.to_dict(),
                      **({"held_removals": True} if getattr(knob, "held", None) is not None else {})})

    def plan_near(fraction: float) -> tuple[PruningPlan, float]:
        if fraction <= floor_f:
            return floor_plan, floor_f
        return knob.at(fraction)

    def off(ratio: float) -> float:
        return ratio / target - 1

    fraction = float(min(1.0, max(floor_f, target)))  # first guess: latency proportional to MACs
    measured = 0
    while measured < search.max_measurements and clock() - start < search.time_budget_s:
        plan, achieved = plan_near(fraction)
        key = _plan_key(plan)
        sample = measure(plan, False)
        measured += 1
        log_step(plan, achieved, sample, "search")
        check_drift(sample)
        point = points.get(key)
        if point is None:
            point = points[key] = _Point(achieved, plan, sample)
        else:
            point.sample, point.measurements = point.sample.pooled(sample), point.measurements + 1
        # aim near the target first; accept the edge of the tolerance late or for a plan measured again
        late = measured >= search.max_measurements * 2 / 3 or point.measurements >= 2
        band = tol if late else search.aim * tol
        if abs(off(point.sample.median)) <= band and measured < search.max_measurements:
            confirmation = measure(plan, True)
            measured += 1
            log_step(plan, achieved, confirmation, "confirm")
            check_drift(confirmation)
            point.sample, point.measurements = point.sample.pooled(confirmation), point.measurements + 1
            point.confirmation = confirmation
            if abs(off(confirmation.median)) <= tol and abs(off(point.sample.median)) <= tol:
                return BudgetResult(plan, "latency", target_ms, reference_ms * confirmation.median, steps, {
                    **details(), "ratio": confirmation.median, "ratio_interval": list(confirmation.interval),
                    "macs_fraction": plan_cost(analysis, plan.keep)[0] / base,
                    **({} if knob.name == "macs_fraction" else {knob.name: achieved}),
                    "confirmation": confirmation.to_dict(),
                    "pooled": point.sample.to_dict(), "measurements": measured,
                    "seconds": round(clock() - start, 2)})
        if key == floor_key and off(point.sample.median) > tol and (
                point.measurements >= 2 or off(point.sample.interval[0]) > tol):
            raise LatencyTargetError(
                f"{label} (ratio {target:.3f} to the dense model's {reference_ms:.4g} ms "
                f"measured here) is unreachable: the most pruned plan allowed (MACs "
                f"{floor_macs:.3f} of the dense model, min-channels {opts.min_channels}, round-to {opts.round_to}) "
                f"measured {point.sample.median:.3f}x the dense model's {reference_ms:.4g} ms = "
                f"{reference_ms * point.sample.median:.4g} ms; nothing written", {**details(), "steps": steps})
        fit_points = [(p.macs_fraction, p.sample.median, p.sample.rounds) for p in points.values()]
        fraction = next_fraction(fit_points, target, floor_f)
        revisit = points.get(_plan_key(plan_near(fraction)[0]))
        if revisit is not None and revisit.measurements >= 2:
            # measured twice and not accepted: try the widths between it and its neighbour instead
            fraction = _step_past(revisit, list(points.values()), target, floor_f)
            again = points.get(_plan_key(plan_near(fraction)[0]))
            if again is not None and again.measurements >= 2:
                # the fit points between adjacent plans. Latency is not monotone in MACs at odd widths
                # (ORT's blocked CPU kernels), so untried plans nearby may land closer: try those
                closest = min(points.values(), key=lambda p: abs(off(p.sample.median)))
                toward = -1.0 if closest.sample.median > target else 1.0
                scan = [closest.macs_fraction * (1 + sign * toward * 0.02 * k) for k in range(1, 7) for sign in (1, -1)]
                fraction = next((f for f in scan if floor_f <= f < 1.0 and _plan_key(plan_near(f)[0]) not in points),
                                None)
                hold = getattr(knob, "hold_removals", None)
                if fraction is None and hold is not None and hold(closest.plan):
                    # the plans jump across the target where a removal comes or goes: keep the closest
                    # plan's removals and search the widths around it
                    held_after = measured
                    guess = closest.macs_fraction * target / closest.sample.median
                    fraction = next((f for f in [guess, *scan]
                                     if floor_f <= f < 1.0 and _plan_key(plan_near(f)[0]) not in points), None)
                if fraction is None:
                    exhausted = True
                    break
    else:
        exhausted = False
    closest = min(points.values(), key=lambda p: abs(off(p.sample.median)))
    why = "no untried plans near the target" if exhausted else "the measuring budget ran out"
    c = closest.confirmation
    refused = (f", refused by its confirmation at {c.median:.3f}x ({off(c.median):+.1%})"
               if c is not None and abs(off(c.median)) > tol else "")
    raise LatencyTargetError(
        f"{label} (ratio {target:.3f} to the dense model's {reference_ms:.4g} ms "
        f"measured here) was not met within {_pct(tol)} after {measured} measurements "
        f"({clock() - start:.0f} s; {why}): the closest plan "
        f"(MACs {plan_cost(analysis, closest.plan.keep)[0] / base:.3f}) measured "
        f"{closest.sample.median:.3f}x = {reference_ms * closest.sample.median:.4g} ms "
        f"({off(closest.sample.median):+.1%}) over its {closest.measurements} measurements{refused}; nothing written",
        {**details(), "steps": steps})


def _dense_meets(target: float, tol: float) -> bool:
    """Does the dense model itself (ratio 1) meet the target ratio within the tolerance, as the
    search judges a plan (``|ratio / target - 1| <= tol``)?"""
    return 1.0 / target - 1.0 <= tol


def _pct(tol: float) -> str:
    return f"{tol * 100:.3g}%"


def _step_past(point: _Point, points: list[_Point], target: float, floor: float) -> float:
    """A fraction between a plan measured repeatedly without success and its measured neighbour
    on the side of the target (so the search tries other widths instead of re-measuring it)."""
    x = point.macs_fraction
    if point.sample.median > target:  # too slow: prune more
        lower = [p.macs_fraction for p in points if p.macs_fraction < x]
        return (x + max(lower, default=floor)) / 2
    higher = [p.macs_fraction for p in points if p.macs_fraction > x]
    return (x + min(higher, default=1.0)) / 2
