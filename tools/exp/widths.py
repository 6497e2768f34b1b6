"""Per-group channel counts for a MACs cut, and plans that keep the highest-scoring channels.

Two width policies over the prunable analysis groups (``trunk`` = a group with more than one
producer kernel, i.e. channels tied by residual adds; ``internal`` = one producer, e.g. a block's
first conv):

- ``uniform``: the same pruned fraction in every group, counts rounded up to ``round_to``; the
  fraction is the smallest one on a 1/128 grid whose exact MACs reach the target;
- ``internal``: prune only internal groups (trunk widths stay), same search; counts that are
  multiples of 16 run fastest with onnxruntime's AVX-512 NCHWc kernels.

Counts depend only on the architecture, so every method at one cut gets the same widths; the
method's scores only choose *which* channels stay.
"""

from __future__ import annotations

import math

import numpy as np

from compressor.analysis.context import PRODUCER
from compressor.analysis.groups import Analysis, Group
from compressor.planning.budget import plan_cost
from compressor.planning.plan import GroupDecision, PlanOptions, PruningPlan, signature

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def is_trunk(g: Group) -> bool:
    producers = {m.tensor for m in g.members if m.role == PRODUCER and m.op_type in WEIGHT_OPS and m.slot == 1}
    return len(producers) > 1


def counts_for(analysis: Analysis, frac: float, policy: str, round_to: int) -> dict[int, int]:
    out = {}
    for g in analysis.prunable:
        if policy == "internal" and is_trunk(g):
            out[g.id] = g.size
            continue
        keep = max(g.size - int(math.floor(frac * g.size)), 1)
        if round_to > 1:
            keep = int(math.ceil(keep / round_to) * round_to)
        out[g.id] = min(keep, g.size)
    return out


def plan_from_counts(analysis: Analysis, scores: dict[int, np.ndarray], counts: dict[int, int],
                     note: str = "") -> PruningPlan:
    decisions = []
    for g in analysis.groups:
        n = counts.get(g.id, g.size)
        if n < g.size:
            order = np.argsort(-np.asarray(scores[g.id], dtype=np.float64), kind="stable")[:n]
            kept = sorted(int(i) for i in order)
        else:
            kept = list(range(g.size))
        decisions.append(GroupDecision(g.id, g.size, kept, signature(g)))
    return PruningPlan(PlanOptions(ratio=0.0, importance=note or "custom"), decisions)


def counts_for_cut(analysis: Analysis, cut: float, policy: str = "uniform", round_to: int = 8) -> tuple[dict[int, int], float]:
    """Smallest pruned fraction whose MACs are <= 1/cut of the dense model's; (counts, fraction)."""
    dense = {g.id: list(range(g.size)) for g in analysis.prunable}
    macs0, _ = plan_cost(analysis, {})
    del dense
    for step in range(1, 128):
        frac = step / 128
        counts = counts_for(analysis, frac, policy, round_to)
        keep = {gid: list(range(n)) for gid, n in counts.items()}
        macs, _ = plan_cost(analysis, keep)
        if macs <= macs0 / cut + 1e-9:
            return counts, frac
    raise ValueError(f"no {policy} width schedule reaches a {cut}x MACs cut")
