"""The interleaved loop, driven by fake run functions and a fake clock (no onnxruntime)."""

from __future__ import annotations

import gc
from collections import Counter

import pytest

from compressor.bench.runner import (
    StopRule,
    measure_blocks,
    measure_interleaved,
    round_order,
    warm_up,
)
from compressor.bench.stats import speedup_spread


class FakeClock:
    """A clock that only moves when a fake model 'runs'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_models(clock: FakeClock, costs_s: dict[str, float], log: list[str], drift_s: float = 0.0):
    """Run functions that log their name and advance the clock by their cost (+ global drift)."""
    calls = Counter()

    def make(name: str):
        def run() -> None:
            calls["total"] += 1
            log.append(name)
            clock.now += costs_s[name] + drift_s * calls["total"]

        return run

    return [make(name) for name in costs_s]


def test_round_order_rotates():
    """Round r starts with model r mod n and keeps the cyclic order."""
    assert [round_order(2, r) for r in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]], "A B / B A"
    assert [round_order(3, r) for r in range(3)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1]], "rotation"
    assert round_order(0, 5) == [], "no models, no order"


def test_interleaving_alternates_who_goes_first():
    """Two models: the executed order is A B B A A B B A ... (never A always first)."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 0.002, "B": 0.001}, log)
    measure_interleaved(fns, StopRule.make(runs=4), warmup=0, timer=clock)
    assert log == ["A", "B", "B", "A", "A", "B", "B", "A"], f"got {log}"


def test_each_model_takes_each_position_equally_often():
    """Three models over 6 rounds: every model is first, second and third exactly twice."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 0.001, "B": 0.001, "C": 0.001}, log)
    measure_interleaved(fns, StopRule.make(runs=6), warmup=0, timer=clock)
    rounds = [log[i:i + 3] for i in range(0, len(log), 3)]
    for position in range(3):
        counts = Counter(r[position] for r in rounds)
        assert counts == {"A": 2, "B": 2, "C": 2}, f"position {position}: {counts}"


def test_times_are_per_model_per_round_in_ms():
    """With exact fake costs the recorded times are those costs in ms, one per round."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 0.004, "B": 0.001}, log)
    times = measure_interleaved(fns, StopRule.make(runs=5), warmup=0, timer=clock)
    assert [len(t) for t in times] == [5, 5], f"5 rounds each, got {[len(t) for t in times]}"
    assert times[0] == pytest.approx([4.0] * 5) and times[1] == pytest.approx([1.0] * 5), times
    assert speedup_spread(times[0], times[1]).median == pytest.approx(4.0), "A is 4x slower"


def test_warmup_runs_are_untimed_and_interleaved():
    """warmup=3 runs each model 3 times (rotated) before timing, and records nothing."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 0.001, "B": 0.001}, log)
    warm_up(fns, 3)
    assert log == ["A", "B", "B", "A", "A", "B"], f"got {log}"
    log.clear()
    times = measure_interleaved(fns, StopRule.make(runs=2), warmup=3, timer=clock)
    assert len(log) == 10 and [len(t) for t in times] == [2, 2], "6 warm-up calls + 4 timed"


def test_min_time_stops_when_every_model_ran_long_enough():
    """min_time=0.1 s with costs 10 ms and 20 ms: the faster model needs 10 rounds."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 0.010, "B": 0.020}, log)
    times = measure_interleaved(fns, StopRule.make(min_time=0.1, min_runs=1), timer=clock)
    assert len(times[0]) == 10, f"A reaches 100 ms after 10 rounds, got {len(times[0])}"


def test_min_time_respects_min_runs():
    """A slow model still gets min_runs rounds even if min_time is long passed."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 1.0}, log)
    times = measure_interleaved(fns, StopRule.make(min_time=0.001, min_runs=7), timer=clock)
    assert len(times[0]) == 7, f"expected the 7-run floor, got {len(times[0])}"


def test_alternation_cancels_linear_drift_for_identical_models():
    """Identical models under a steadily slowing clock: the median per-round ratio is ~1."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 0.001, "B": 0.001}, log, drift_s=0.00001)
    times = measure_interleaved(fns, StopRule.make(runs=50), timer=clock)
    median = speedup_spread(times[0], times[1]).median
    assert median == pytest.approx(1.0, abs=0.01), f"drift should cancel, median ratio {median}"


def test_progress_callback_reaches_completion():
    """on_round sees every round and a final fraction of 1."""
    clock, log, seen = FakeClock(), [], []
    fns = fake_models(clock, {"A": 0.001}, log)
    measure_interleaved(fns, StopRule.make(runs=4), timer=clock,
                        on_round=lambda r, f: seen.append((r, f)))
    assert [r for r, _ in seen] == [1, 2, 3, 4] and seen[-1][1] == 1.0, f"got {seen}"


def test_gc_is_restored_after_measuring():
    """The collector is paused while timing and enabled again afterwards, even on error."""
    assert gc.isenabled(), "precondition"

    def boom() -> None:
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        measure_interleaved([boom], StopRule.make(runs=1))
    assert gc.isenabled(), "gc must be re-enabled after a failure"


@pytest.mark.parametrize("kwargs", [{"runs": 1, "min_time": 1.0}, {"runs": 0}, {"min_time": -1}])
def test_stop_rule_rejects_bad_choices(kwargs):
    """runs and min_time together, runs < 1, min_time <= 0: ValueError."""
    with pytest.raises(ValueError):
        StopRule.make(**kwargs)


def test_default_stop_rule_is_one_second_and_ten_runs():
    """Neither runs nor min_time: at least 1 s per model and 10 rounds."""
    rule = StopRule.make()
    assert (rule.min_time_s, rule.min_runs, rule.runs) == (1.0, 10, None), f"got {rule}"


# --------------------------------------------------------------------------- blocks


def test_blocks_run_each_model_back_to_back_after_a_pause_and_an_untimed_run():
    """Round r: pause, one untimed run, then >= block_s and >= min_block_runs timed runs per model,
    models in the rotated order."""
    clock, log, pauses = FakeClock(), [], []
    a, b, block = 2.0 ** -7, 2.0 ** -9, 2.0 ** -6  # exact in binary: no rounding at the edges
    fns = fake_models(clock, {"A": a, "B": b}, log)
    out = measure_blocks(fns, StopRule.make(runs=1), block_s=block, settle_s=0.05, timer=clock,
                         sleep=pauses.append, min_rounds=2, min_block_runs=3)
    # A: 1 untimed + 3 timed (2 would reach the block time, 3 is the floor); B: 1 untimed + 8.
    assert log == ["A"] * 4 + ["B"] * 9 + ["B"] * 9 + ["A"] * 4, f"got {log}"
    assert pauses == [0.05] * 4, "a pause before every block"
    assert [len(r) for r in out.runs_ms] == [6, 16], "the untimed runs are not recorded"
    assert out.block_medians_ms[0] == pytest.approx([a * 1e3] * 2), out.block_medians_ms
    assert out.block_medians_ms[1] == pytest.approx([b * 1e3] * 2), out.block_medians_ms


def test_block_medians_pair_rounds_and_cancel_drift():
    """Identical models under linear drift, in blocks: per-round ratios of block medians ~1."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 0.001, "B": 0.001}, log, drift_s=0.000001)
    out = measure_blocks(fns, StopRule.make(runs=200), block_s=0.005, settle_s=0.0, timer=clock,
                         sleep=lambda s: None)
    assert len(out.block_medians_ms[0]) == len(out.block_medians_ms[1]) >= 5, "paired rounds"
    median = speedup_spread(out.block_medians_ms[0], out.block_medians_ms[1]).median
    assert median == pytest.approx(1.0, abs=0.02), f"drift should cancel, median ratio {median}"


def test_blocks_stop_on_each_models_runs_and_a_round_floor():
    """runs=N means at least N timed runs per model; at least min_rounds rounds regardless."""
    clock, log = FakeClock(), []
    fns = fake_models(clock, {"A": 0.001, "B": 0.004}, log)
    out = measure_blocks(fns, StopRule.make(runs=30), block_s=0.004, settle_s=0.0, timer=clock,
                         sleep=lambda s: None, min_rounds=2, min_block_runs=3)
    assert min(len(r) for r in out.runs_ms) >= 30, [len(r) for r in out.runs_ms]
    out = measure_blocks(fns, StopRule.make(runs=1), block_s=0.001, settle_s=0.0, timer=clock,
                         sleep=lambda s: None, min_rounds=5)
    assert len(out.block_medians_ms[0]) == 5, "the round floor"


@pytest.mark.parametrize("kwargs", [{"block_s": 0.0}, {"settle_s": -1.0}])
def test_blocks_reject_bad_lengths(kwargs):
    with pytest.raises(ValueError):
        measure_blocks([lambda: None], StopRule.make(runs=1), **kwargs)
