"""Magnitude (L1/L2 over every member of a group), BatchNorm scale and random importance."""

from __future__ import annotations

from typing import Callable

import numpy as np

from compressor.analysis.context import CONSUMER, PARAM, PRODUCER
from compressor.analysis.groups import Analysis, Group, Member

WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
NORM_OPS = ("BatchNormalization", "InstanceNormalization")


def member_values(analysis: Analysis, group: Group, m: Member) -> np.ndarray:
    """The member's slice as [channels, inner * rest] in the tensor's own dtype: a view of the
    tensor where its layout allows (read it, never write it), else a copy of the slice only."""
    arr = np.moveaxis(np.asarray(analysis.index.const(m.tensor)), m.axis, 0)
    block = arr[m.offset: m.offset + group.size * m.inner]
    return block.reshape(group.size, -1)


def _abs_powers(values: np.ndarray, p: int) -> np.ndarray:
    """|values| ** p as a new float64 array. Converting inside the ufunc is exact (float32
    squares fit a float64), so the numbers are those of converting first, minus one pass."""
    if p == 2:
        return np.square(values, dtype=np.float64)
    out = np.abs(values, dtype=np.float64)
    if p != 1:
        np.power(out, p, out=out)
    return out


def _is_weight(m: Member) -> bool:
    return m.role in (PRODUCER, CONSUMER) and m.op_type in WEIGHT_OPS and m.slot in (0, 1)


def _is_norm_scale(m: Member) -> bool:
    return m.role == PARAM and m.op_type in NORM_OPS and m.slot == 1


def magnitude(p: int) -> Callable[[Analysis, Group], np.ndarray]:
    def score(analysis: Analysis, group: Group) -> np.ndarray:
        total = np.zeros(group.size)
        for m in group.members:
            if _is_weight(m) or _is_norm_scale(m):
                total += _abs_powers(member_values(analysis, group, m), p).sum(axis=1)
        return total ** (1.0 / p)

    return score


def bn_scale(analysis: Analysis, group: Group) -> np.ndarray:
    scales = [_abs_powers(member_values(analysis, group, m), 1).sum(axis=1) for m in group.members if _is_norm_scale(m)]
    if not scales:
        return magnitude(2)(analysis, group)
    return np.mean(scales, axis=0)


def random_scores(seed: int = 0) -> Callable[[Analysis, Group], np.ndarray]:
    def score(analysis: Analysis, group: Group) -> np.ndarray:
        return np.random.default_rng(seed + group.id).random(group.size)

    return score


CRITERIA: dict[str, Callable[..., Callable[[Analysis, Group], np.ndarray]]] = {
    "l1": lambda **_: magnitude(1),
    "l2": lambda **_: magnitude(2),
    "bn": lambda **_: bn_scale,
    "random": lambda seed=0, **_: random_scores(seed),
}


def score_groups(analysis: Analysis, criterion: str = "l2", seed: int = 0) -> dict[int, np.ndarray]:
    """Scores for every prunable group."""
    fn = CRITERIA[criterion](seed=seed)
    return {g.id: np.asarray(fn(analysis, g), dtype=np.float64) for g in analysis.prunable}
