"""Latency statistics against numpy, and the per-round ratio spread."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.bench.stats import latency_stats, per_round_ratios, ratio_spread, speedup_spread

SAMPLES = [3.0, 1.0, 2.0, 5.0, 4.0, 10.0, 2.5, 2.0, 3.5, 1.5]


def test_stats_match_numpy_on_known_samples():
    """mean, std (ddof=1), min, p50/p90/p99 (linear) equal numpy's; throughput = B*1000/mean."""
    s = latency_stats(SAMPLES, batch=4)
    x = np.array(SAMPLES)
    expected = {
        "mean_ms": x.mean(), "std_ms": x.std(ddof=1), "min_ms": x.min(),
        "p50_ms": np.percentile(x, 50), "p90_ms": np.percentile(x, 90),
        "p99_ms": np.percentile(x, 99), "throughput": 4 * 1000 / x.mean(),
    }
    for key, value in expected.items():
        assert getattr(s, key) == pytest.approx(value, rel=1e-12), f"{key}: expected {value}"
    assert s.runs == 10, f"runs should count the samples, got {s.runs}"


def test_stats_hand_computed_values():
    """On 1..5 ms: mean 3, p50 3, p90 4.6, min 1, 1000/3 samples/s at batch 1."""
    s = latency_stats([5, 1, 4, 2, 3])
    assert (s.mean_ms, s.p50_ms, s.min_ms) == (3.0, 3.0, 1.0), f"got {s}"
    assert s.p90_ms == pytest.approx(4.6), f"p90 of 1..5 interpolates to 4.6, got {s.p90_ms}"
    assert s.throughput == pytest.approx(1000 / 3), f"got {s.throughput}"


def test_single_run_has_zero_std():
    """One sample: std is 0 (not NaN), every percentile is the sample."""
    s = latency_stats([2.5])
    assert s.std_ms == 0.0 and s.p99_ms == 2.5 and s.runs == 1, f"got {s}"


def test_stats_reject_empty_and_bad_batch():
    """No samples or a non-positive batch is a programming error (ValueError)."""
    with pytest.raises(ValueError):
        latency_stats([])
    with pytest.raises(ValueError):
        latency_stats([1.0], batch=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1e4), min_size=1, max_size=50))
def test_stats_are_ordered(samples):
    """min <= p50 <= p90 <= p99 and min <= mean for any samples."""
    s = latency_stats(samples)
    eps = 1e-9 * max(samples)
    assert s.min_ms <= s.p50_ms + eps <= s.p90_ms + 2 * eps <= s.p99_ms + 3 * eps, f"{s}"
    assert s.min_ms <= s.mean_ms + eps, f"{s}"


def test_ratio_spread_is_taken_round_by_round():
    """ratios are first[i]/other[i]; median, p10, p90 are numpy's percentiles of those."""
    first = [2.0, 4.0, 6.0, 8.0, 10.0]
    other = [1.0, 1.0, 3.0, 4.0, 4.0]
    ratios = np.array(first) / np.array(other)  # 2, 4, 2, 2, 2.5
    spread = ratio_spread(first, other)
    assert np.allclose(per_round_ratios(first, other), ratios), "element-wise ratios"
    assert spread.median == pytest.approx(np.median(ratios)), f"median: got {spread.median}"
    assert spread.p10 == pytest.approx(np.percentile(ratios, 10)), f"p10: got {spread.p10}"
    assert spread.p90 == pytest.approx(np.percentile(ratios, 90)), f"p90: got {spread.p90}"


def test_paired_ratio_cancels_common_drift():
    """If both models slow down alike over time, the per-round ratio stays exact (2.0)."""
    drift = np.linspace(1.0, 3.0, 40)  # everything gets 3x slower during the run
    spread = speedup_spread(2.0 * drift, 1.0 * drift)
    assert spread.median == pytest.approx(2.0) and spread.p10 == pytest.approx(2.0), (
        f"drift common to both models must cancel, got {spread}"
    )
    naive = np.mean(2.0 * drift[:20]) / np.mean(1.0 * drift[20:])  # if measured one after another
    assert not math.isclose(naive, 2.0, rel_tol=0.1), "sanity: unpaired means would be biased"


def test_ratio_spread_rejects_mismatched_series():
    """Series of different lengths, empty series or a zero time are errors."""
    for first, other in (([1.0, 2.0], [1.0]), ([], []), ([1.0], [0.0])):
        with pytest.raises(ValueError):
            ratio_spread(first, other)
