"""The interleaved measurement loop: several models timed round by round in one process.

Round r runs every model once, in the order rotated by r (A B, B A, A B, ... for two models;
A B C, B C A, C A B, ... for three), so that each model takes each position equally often and
slow drift (CPU frequency, heat, neighbours) hits all models alike. Times of one round are kept
together so ratios can be taken round by round. Time and the run functions are injected, so the
loop is deterministic under test.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

RunFn = Callable[[], None]
Timer = Callable[[], float]  # seconds, monotonic

DEFAULT_MIN_TIME_S = 1.0
DEFAULT_MIN_RUNS = 10
MAX_ROUNDS = 1_000_000


def round_order(n_models: int, round_index: int) -> list[int]:
    """Model indices in the order they run in round `round_index` (a rotation by the round)."""
    if n_models <= 0:
        return []
    shift = round_index % n_models
    return [(shift + k) % n_models for k in range(n_models)]


@dataclass(frozen=True)
class StopRule:
    """When to stop: after exactly `runs` rounds, or once every model has run `min_time_s`."""

    runs: int | None = None
    min_time_s: float | None = None
    min_runs: int = DEFAULT_MIN_RUNS
    max_runs: int = MAX_ROUNDS

    @classmethod
    def make(
        cls, runs: int | None = None, min_time: float | None = None, min_runs: int | None = None
    ) -> StopRule:
        """Validate the user's choice; neither given -> at least 1 s and 10 runs per model."""
        if runs is not None and min_time is not None:
            raise ValueError("give either runs or min_time, not both")
        if runs is not None:
            if runs < 1:
                raise ValueError(f"runs must be at least 1, got {runs}")
            return cls(runs=int(runs))
        if min_time is not None and not 0 < min_time < math.inf:
            raise ValueError(f"min_time must be a positive number of seconds, got {min_time}")
        return cls(
            min_time_s=float(min_time if min_time is not None else DEFAULT_MIN_TIME_S),
            min_runs=DEFAULT_MIN_RUNS if min_runs is None else max(1, int(min_runs)),
        )

    def done(self, rounds: int, totals_s: Sequence[float]) -> bool:
        if self.runs is not None:
            return rounds >= self.runs
        if rounds >= self.max_runs:
            return True
        return rounds >= self.min_runs and min(totals_s) >= (self.min_time_s or 0.0)

    def progress(self, rounds: int, totals_s: Sequence[float]) -> float:
        """Fraction done in [0, 1], for a progress bar."""
        if self.runs is not None:
            return min(1.0, rounds / self.runs)
        by_time = min(totals_s) / self.min_time_s if self.min_time_s else 1.0
        by_runs = rounds / self.min_runs if self.min_runs else 1.0
        return max(0.0, min(1.0, by_time, by_runs))


def warm_up(run_fns: Sequence[RunFn], warmup: int) -> None:
    """Run every model `warmup` times, interleaved like the measurement."""
    for r in range(max(0, warmup)):
        for index in round_order(len(run_fns), r):
            run_fns[index]()


@contextmanager
def _gc_paused(pause: bool) -> Iterator[None]:
    """The garbage collector off while timing (as timeit does), restored afterwards, even on error."""
    was_enabled = gc.isenabled()
    if pause:
        gc.collect()
        gc.disable()
    try:
        yield
    finally:
        if pause and was_enabled:
            gc.enable()


def measure_interleaved(
    run_fns: Sequence[RunFn],
    stop: StopRule,
    warmup: int = 0,
    timer: Timer = time.perf_counter,
    on_round: Callable[[int, float], None] | None = None,
    pause_gc: bool = True,
) -> list[list[float]]:
    """Time the run functions round by round; returns per-model lists of ms, one entry per round.

    `on_round(rounds_done, fraction_done)` is called after every round (progress bars).
    The garbage collector is paused while timing (as timeit does) and restored afterwards.
    """
    if not run_fns:
        return []
    warm_up(run_fns, warmup)
    n = len(run_fns)
    times_ms: list[list[float]] = [[] for _ in range(n)]
    totals_s = [0.0] * n
    with _gc_paused(pause_gc):
        rounds = 0
        while not stop.done(rounds, totals_s):
            for index in round_order(n, rounds):
                start = timer()
                run_fns[index]()
                elapsed = timer() - start
                times_ms[index].append(elapsed * 1000.0)
                totals_s[index] += elapsed
            rounds += 1
            if on_round is not None:
                on_round(rounds, stop.progress(rounds, totals_s))
    return times_ms


DEFAULT_BLOCK_S = 0.25
DEFAULT_SETTLE_S = 0.02
MIN_BLOCK_ROUNDS = 5
MIN_BLOCK_RUNS = 3


@dataclass
class BlockTimes:
    """What `measure_blocks` measured: every run's time, and each block's median, per model."""

    runs_ms: list[list[float]]
    block_medians_ms: list[list[float]]  # one entry per round, paired across models


def measure_blocks(
    run_fns: Sequence[RunFn],
    stop: StopRule,
    warmup: int = 0,
    block_s: float = DEFAULT_BLOCK_S,
    settle_s: float = DEFAULT_SETTLE_S,
    timer: Timer = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    on_round: Callable[[int, float], None] | None = None,
    pause_gc: bool = True,
    min_rounds: int = MIN_BLOCK_ROUNDS,
    min_block_runs: int = MIN_BLOCK_RUNS,
) -> BlockTimes:
    """Time the models in blocks: round r runs each model (order rotated by r) back to back for
    `block_s` seconds and at least `min_block_runs` runs, after a `settle_s` pause and one untimed
    run (the first run after a pause wakes the threads and refills the caches).

    For sessions whose thread pools spin (onnxruntime's default): a spinning pool keeps its cores
    busy for a moment after a run, so models alternating run by run slow each other down. In a
    block a model runs as it would alone, the pause lets the previous model's pool go idle, and
    the blocks of one round are still close enough in time for their medians to be paired into
    per-round ratios. The stop rule counts a model's runs (not rounds); at least `min_rounds`
    rounds are run so that the ratios have a spread.
    """
    if block_s <= 0:
        raise ValueError(f"block time must be positive, got {block_s}")
    if settle_s < 0:
        raise ValueError(f"settle time must be 0 or more, got {settle_s}")
    n = len(run_fns)
    if not n:
        return BlockTimes([], [])
    warm_up(run_fns, warmup)
    runs_ms: list[list[float]] = [[] for _ in range(n)]
    medians: list[list[float]] = [[] for _ in range(n)]
    totals_s = [0.0] * n
    with _gc_paused(pause_gc):
        rounds = 0
        while True:
            fewest = min(len(r) for r in runs_ms)
            if rounds >= min_rounds and stop.done(fewest, totals_s):
                break
            if rounds >= stop.max_runs:
                break
            for index in round_order(n, rounds):
                if settle_s:
                    sleep(settle_s)
                run_fns[index]()  # untimed: wakes the pool after the pause
                block: list[float] = []
                spent = 0.0
                while len(block) < min_block_runs or spent < block_s:
                    start = timer()
                    run_fns[index]()
                    elapsed = timer() - start
                    block.append(elapsed * 1000.0)
                    spent += elapsed
                runs_ms[index].extend(block)
                medians[index].append(statistics.median(block))
                totals_s[index] += spent
            rounds += 1
            if on_round is not None:
                fewest = min(len(r) for r in runs_ms)
                fraction = min(stop.progress(fewest, totals_s), rounds / max(1, min_rounds))
                on_round(rounds, fraction)
    return BlockTimes(runs_ms, medians)
