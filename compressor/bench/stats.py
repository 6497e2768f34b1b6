"""Latency statistics of one model at one batch size, and the spread of a latency ratio.

Conventions: times in milliseconds; `std_ms` is the sample standard deviation (ddof=1, 0 for a
single run); percentiles interpolate linearly (numpy's default); throughput is samples per second
at the mean latency (batch * 1000 / mean_ms), which is what a loop of back-to-back calls achieves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated runs of one model at one batch size."""

    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # samples per second
    runs: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def latency_stats(samples_ms: Sequence[float], batch: int = 1) -> LatencyStats:
    """Statistics of per-run latencies (ms) for a batch of `batch` samples per run."""
    times = np.asarray(samples_ms, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError("latency_stats needs at least one run time")
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    mean = float(times.mean())
    p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
    return LatencyStats(
        mean_ms=mean,
        std_ms=float(times.std(ddof=1)) if times.size > 1 else 0.0,
        min_ms=float(times.min()),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        throughput=batch * 1000.0 / mean if mean > 0 else float("inf"),
        runs=int(times.size),
    )


@dataclass(frozen=True)
class RatioSpread:
    """Distribution of a per-round ratio: its median and 10th/90th percentiles."""

    median: float
    p10: float
    p90: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def per_round_ratios(numerator_ms: Sequence[float], denominator_ms: Sequence[float]) -> np.ndarray:
    """numerator[i] / denominator[i] for every round i (both timed in the same round)."""
    num = np.asarray(numerator_ms, dtype=np.float64)
    den = np.asarray(denominator_ms, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError(
            f"per-round ratios need two equally long, non-empty series, got {num.shape} and "
            f"{den.shape}"
        )
    if np.any(den <= 0):
        raise ValueError("per-round ratios need positive denominators (a run took no time?)")
    return num / den


def ratio_spread(numerator_ms: Sequence[float], denominator_ms: Sequence[float]) -> RatioSpread:
    """Median and p10-p90 of numerator/denominator computed round by round.

    Pairing the two runs of one round cancels slow drift (thermal, frequency, other processes)
    that would bias a ratio of two separately taken means.
    """
    ratios = per_round_ratios(numerator_ms, denominator_ms)
    p10, median, p90 = (float(v) for v in np.percentile(ratios, [10, 50, 90]))
    return RatioSpread(median=median, p10=p10, p90=p90)


def speedup_spread(first_ms: Sequence[float], other_ms: Sequence[float]) -> RatioSpread:
    """Speedup of `other` over `first` (first / other per round: > 1 means other is faster)."""
    return ratio_spread(first_ms, other_ms)
