"""Magnitude (L1/L2 over every member of a group), BatchNorm scale and random importance."""

from __future__ import annotations

from typing import Callable

import numpy as np

from compressor.analysis.context import CONSUMER, PARAM, PRODUCER
from compressor.analysis.groups import Analysis, Group, Member

WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
NORM_OPS = ("BatchNormalization", "InstanceNormalization")


def member_values(analysis: Analysis, group: Group, m: Member) -> np.ndarray:
    """The member's slice as a float64 [channels, inner * rest] array of its own.

    Sliced before the conversion: only the group's part of the tensor is copied, once in its own
    dtype (when the channel axis is not the leading one) and once to float64."""
    arr = np.moveaxis(np.asarray(analysis.index.const(m.tensor)), m.axis, 0)
    block = arr[m.offset: m.offset + group.size * m.inner]
    return block.reshape(group.size, -1).astype(np.float64)


def _is_weight(m: Member) -> bool:
    return m.role in (PRODUCER, CONSUMER) and m.op_type in WEIGHT_OPS and m.slot in (0, 1)


def _is_norm_scale(m: Member) -> bool:
    return m.role == PARAM and m.op_type in NORM_OPS and m.slot == 1


def magnitude(p: int) -> Callable[[Analysis, Group], np.ndarray]:
    def score(analysis: Analysis, group: Group) -> np.ndarray:
        total = np.zeros(group.size)
        for m in group.members:
            if _is_weight(m) or _is_norm_scale(m):
                v = member_values(analysis, group, m)  # a fresh array: powers are taken in place
                if p == 2:
                    np.square(v, out=v)
                else:
                    np.abs(v, out=v)
                    if p != 1:
                        np.power(v, p, out=v)
                total += v.sum(axis=1)
        return total ** (1.0 / p)

    return score


def bn_scale(analysis: Analysis, group: Group) -> np.ndarray:
    scales = [np.abs(member_values(analysis, group, m)).sum(axis=1) for m in group.members if _is_norm_scale(m)]
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
