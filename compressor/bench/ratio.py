"""Latency of candidate models as a ratio to one reference model, timed interleaved with it.

`RatioMeter` times each candidate round by round against the reference (A B, B A, ... as in
runner.py, spinning off; or in rounds of blocks with spinning on) and returns the per-round
ratios candidate / reference: slow drift of
the machine hits both runs of a round alike and cancels in the ratio. A measurement runs in chunks
of rounds over one or more pairs of fresh sessions until the median ratio is known to a requested
relative precision (a distribution-free 95% interval of the median, see `median_interval`) or a
time cap is reached. The --target-latency search (planning/budget.py) works on these ratios;
`RatioSample` is plain data so the search can be tested with a fake meter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Z95 = 1.96


def median_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(low, median, high): the median and its distribution-free confidence interval.

    The interval runs between the order statistics n/2 -+ z*sqrt(n)/2 (the binomial interval of
    the median; 95% for z = 1.96), clamped to the sample. It needs no assumption about the shape
    of the distribution, so a few slow rounds (a neighbour's burst) widen it only as much as they
    make the median uncertain.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    median = float(np.median(x))
    half = z * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return float(x[lo]), median, float(x[hi])


@dataclass
class RatioSample:
    """Per-round ratios candidate / reference of one or more interleaved measurements."""

    ratios: list[float]
    reference_ms: list[float] = field(default_factory=list)
    candidate_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rounds(self) -> int:
        return len(self.ratios)

    @property
    def median(self) -> float:
        return median_interval(self.ratios)[1]

    @property
    def interval(self) -> tuple[float, float]:
        lo, _, hi = median_interval(self.ratios)
        return lo, hi

    @property
    def rel_halfwidth(self) -> float:
        """Half the width of the median's 95% interval, relative to the median."""
        lo, med, hi = median_interval(self.ratios)
        return (hi - lo) / (2 * med) if med > 0 else math.inf

    def pooled(self, other: RatioSample) -> RatioSample:
        """Both measurements as one sample (the same plan measured twice)."""
        return RatioSample(self.ratios + other.ratios, self.reference_ms + other.reference_ms,
                           self.candidate_ms + other.candidate_ms, self.seconds + other.seconds)

    def to_dict(self) -> dict:
        lo, med, hi = median_interval(self.ratios)
        return {
            "ratio": round(med, 5),
            "ratio_interval": [round(lo, 5), round(hi, 5)],
            "rounds": self.rounds,
            "reference_p50_ms": round(float(np.median(self.reference_ms)), 4) if self.reference_ms else None,
            "candidate_p50_ms": round(float(np.median(self.candidate_ms)), 4) if self.candidate_ms else None,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class RatioPrecision:
    """When a ratio measurement stops: once the median's interval is within `rel_halfwidth` of it
    (after at least `min_rounds` rounds, `min_time_s` seconds and `sessions` session pairs), or
    after `max_time_s`. A session pair runs about `min_time_s / sessions` seconds before the next
    pair is built, so a long measurement also spans several sessions."""

    rel_halfwidth: float = 0.02
    min_rounds: int = 10
    min_time_s: float = 1.0
    max_time_s: float = 8.0
    chunk: int = 4
    sessions: int = 1

    def done(self, sample: RatioSample, elapsed_s: float, sessions_done: int = 1) -> bool:
        if elapsed_s >= self.max_time_s:
            return True
        if sample.rounds < self.min_rounds or elapsed_s < self.min_time_s or sessions_done < self.sessions:
            return False
        return sample.rel_halfwidth <= self.rel_halfwidth


class RatioMeter:
    """Times candidate models interleaved against one reference model.

    Every measurement builds fresh sessions for both models, and a measurement with
    ``RatioPrecision.sessions > 1`` builds several pairs and pools their rounds. The ratio of two
    sessions depends on the sessions themselves by a few percent (where their buffers land in
    memory): two pairs measured back to back in one process disagreed by 5-7% on a 5-ms pruned
    mobilenet_v2, while one pair re-measured agreed within 0.5%. Fresh pairs turn that bias into
    noise that pooling averages out, instead of one kept reference session biasing every reading.

    ``reference`` and candidates: paths or onnx.ModelProto. ``input_shapes``: `--input-shape`
    strings or {name: shape}; the batch is dim 0 of those shapes, else the model's own, else 1.
    The candidates must take the same inputs as the reference (a pruned copy does).

    ``spinning``: sessions keep onnxruntime's default thread spinning, and a measurement's rounds
    are blocks (runner.measure_blocks, ``block_s`` seconds per model) instead of single runs:
    spinning sessions alternating run by run slow each other down.
    """

    def __init__(self, reference, provider: str = "cpu", input_shapes: Iterable[str] | Mapping | None = None,
                 threads: int | None = None, warmup: int = 5, seed: int = 0,
                 timer: Callable[[], float] = time.perf_counter,
                 log: Callable[[str], None] | None = None, spinning: bool = False, block_s: float = 0.25):
        from compressor.bench.api import _as_specs
        from compressor.bench.inputs import natural_batch, random_feeds, shapes_for_batch
        from compressor.bench.session import default_threads
        from compressor.bench.source import load_source

        self.provider, self.warmup, self.timer, self._log = provider, warmup, timer, log
        self.spinning, self.block_s = bool(spinning), float(block_s)
        self._reference = reference
        self._scratch = None  # a temporary folder for measure_fresh's files
        self.threads = int(threads) if threads else default_threads()
        self._source = load_source(reference)
        specs = _as_specs(input_shapes)
        self.batch = natural_batch(self._source.signature, specs) or 1
        self.shapes, _ = shapes_for_batch(self._source.signature, specs, self.batch)
        self.feeds = random_feeds(self._source.signature, self.shapes, seed=seed)
        self.provider_used: str | None = None
        self._warm = False
        self.reference_history: list[float] = []  # every timed run of the reference (ms), alone or interleaved

    def _run_fn(self, source):
        """A session for ``source`` and its run function (checked once)."""
        from compressor.bench.api import _check_runs
        from compressor.bench.session import make_run_fn, make_session

        session, used, warning = make_session(source, self.provider, self.threads, spinning=self.spinning)
        if self.provider_used is None:
            self.provider_used = used
            if warning and self._log:
                self._log(f"warning: {warning}")
        run = make_run_fn(session, self.feeds, used)
        _check_runs(run, source.name, self.shapes)
        return run

    def _warm_up(self, run, min_time_s: float = 0.5) -> None:
        """The first runs in a process read slow: the first session runs `warmup` times and 0.5 s."""
        if not self._warm:
            start, runs = time.monotonic(), 0
            while runs < max(1, self.warmup) or time.monotonic() - start < min_time_s:
                run()
                runs += 1
            self._warm = True

    def reference_ms(self, min_time_s: float = 2.0, min_rounds: int = 10) -> list[float]:
        """Times (ms) of the reference alone, after its warm-up, for at least ``min_time_s``."""
        from compressor.bench.runner import StopRule, measure_interleaved

        run = self._run_fn(self._source)
        self._warm_up(run)
        stop = StopRule.make(min_time=min_time_s, min_runs=min_rounds)
        times = measure_interleaved([run], stop, warmup=self.warmup, timer=self.timer)[0]
        self.reference_history += times
        return times

    def measure_fresh(self, candidate, processes: int = 3, min_time_s: float = 6.0) -> RatioSample:
        """candidate / reference measured in fresh processes (see :func:`fresh_process_ratio`);
        models given as protos are written to a temporary folder first (the reference once)."""
        import tempfile
        from pathlib import Path

        from compressor.ir.model_io import save_model

        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="compress-ratio-")
        folder = Path(self._scratch.name)

        def path_of(model, name: str) -> str:
            if isinstance(model, (str, Path)):
                return str(model)
            out = folder / name
            if name != "reference.onnx" or not out.exists():
                save_model(model, out)
            return str(out)

        shapes = [f"{k}:{'x'.join(map(str, v))}" for k, v in self.shapes.items()]
        return fresh_process_ratio(path_of(self._reference, "reference.onnx"), path_of(candidate, "candidate.onnx"),
                                   provider=self.provider, threads=self.threads, input_shapes=shapes,
                                   processes=processes, min_time_s=min_time_s, spinning=self.spinning)

    def close(self) -> None:
        """Remove measure_fresh's temporary files."""
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def measure(self, candidate, precision: RatioPrecision = RatioPrecision()) -> RatioSample:
        """Per-round ratios candidate / reference, over fresh session pairs, until ``precision``
        says stop."""
        from compressor.bench.runner import StopRule, measure_blocks, measure_interleaved
        from compressor.bench.source import load_source

        if precision.chunk < 2 or precision.chunk % 2:
            raise ValueError(f"chunk must be even (each model first as often), got {precision.chunk}")
        source = load_source(candidate, 1)
        slice_s = max(1.5, precision.min_time_s / max(1, precision.sessions))
        start = time.monotonic()
        sample = RatioSample([])
        sessions = 0
        while True:
            reference, run = self._run_fn(self._source), self._run_fn(source)
            self._warm_up(reference)
            sessions += 1
            pair_start, first = time.monotonic(), True
            while True:
                warmup = self.warmup if first else 0
                if self.spinning:  # rounds of blocks; a round's ratio is of its blocks' medians
                    blocks = measure_blocks([reference, run], StopRule.make(runs=1), warmup=warmup,
                                            block_s=self.block_s, timer=self.timer, min_rounds=precision.chunk)
                    ref, cand = blocks.block_medians_ms
                else:
                    ref, cand = measure_interleaved([reference, run], StopRule.make(runs=precision.chunk),
                                                    warmup=warmup, timer=self.timer)
                first = False
                sample.reference_ms += ref
                self.reference_history += ref
                sample.candidate_ms += cand
                sample.ratios += [c / r for c, r in zip(cand, ref)]
                sample.seconds = time.monotonic() - start
                if precision.done(sample, sample.seconds, sessions):
                    return sample
                if time.monotonic() - pair_start >= slice_s:
                    break  # the next pair of fresh sessions
            del reference, run


def fresh_process_ratio(reference_path: str, candidate_path: str, *, provider: str = "cpu", threads: int = 2,
                        input_shapes: Iterable[str] = (), processes: int = 3, min_time_s: float = 6.0,
                        runner: Callable[[list[str]], str] | None = None, spinning: bool = False) -> RatioSample:
    """candidate / reference timed by `compress bench` (interleaved) in ``processes`` fresh
    processes of ``min_time_s / processes`` seconds per model each; one ratio (the per-round
    median) per process.

    A ratio measured inside a long-lived process carries that process's state: on a 5-ms
    mobilenet_v2 the in-process confirmation read 1-4% faster than fresh processes, consistently
    (docs/benchmarks.md). A user's deployment runs the model in its own process, so this is the
    reading a plan is accepted on. ``runner`` (for tests) takes the command and returns its stdout.
    ``spinning``: ``compress bench --spinning`` (onnxruntime's default threading, models in blocks).
    """
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "compressor.cli", "bench", reference_path, candidate_path, "--provider", provider,
           "--threads", str(int(threads)), "--min-time", f"{min_time_s / processes:g}", "--warmup", "20",
           "--json", "-q"]
    if spinning:
        cmd.append("--spinning")
    for s in input_shapes:
        cmd += ["--input-shape", s]

    def run(c: list[str]) -> str:
        res = subprocess.run(c, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"compress bench failed: {res.stderr.strip()[-300:]}")
        return res.stdout

    ratios, ref_ms, cand_ms = [], [], []
    start = time.monotonic()
    for _ in range(processes):
        dense, cand = json.loads((runner or run)(cmd))["results"]
        ratios.append(1.0 / cand["ratio_to_first"]["median"])
        ref_ms.append(dense["p50_ms"])
        cand_ms.append(cand["p50_ms"])
    return RatioSample(ratios, ref_ms, cand_ms, time.monotonic() - start)
