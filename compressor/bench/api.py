"""Public entry points: `benchmark` (N models x batch sizes) and `compare_latency` (before/after).

Both measure all models interleaved in one process (see runner.py) on seeded random inputs,
and report the provider each model actually ran on.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import onnx
import onnxruntime as ort

from compressor.bench.inputs import (
    ShapeSpecs,
    format_shape,
    graph_inputs,
    natural_batch,
    parse_input_shapes,
    random_feeds,
    shapes_for_batch,
)
from compressor.bench.report import BenchResult, ModelResult
from compressor.bench.runner import (
    DEFAULT_BLOCK_S,
    StopRule,
    Timer,
    measure_blocks,
    measure_interleaved,
)
from compressor.bench.session import (
    default_threads,
    make_run_fn,
    make_session,
    provider_key,
)
from compressor.bench.source import load_source
from compressor.bench.stats import latency_stats, speedup_spread
from compressor.errors import UsageError

ModelArg = str | os.PathLike | onnx.ModelProto
Log = Callable[[str], None]


def stderr_line(message: str) -> None:
    """Default log: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def _as_specs(input_shapes: Iterable[str] | Mapping | None) -> ShapeSpecs:
    if input_shapes is None:
        return {}
    if isinstance(input_shapes, Mapping):
        return {name: tuple(int(d) for d in shape) for name, shape in input_shapes.items()}
    if isinstance(input_shapes, str):
        return parse_input_shapes([input_shapes])
    return parse_input_shapes(list(input_shapes))


def _as_batches(
    batches: int | Sequence[int] | None, specs: Sequence[ShapeSpecs], models: Sequence[onnx.ModelProto]
) -> tuple[list[int], bool]:
    """(batch sizes, whether the user chose them); None -> what the specs or the models imply
    (``specs[i]``: the shapes that apply to ``models[i]``), the same for all, else 1."""
    if batches is None:
        implied = {b for m, sp in zip(models, specs) if (b := natural_batch(m, sp)) is not None}
        if len(implied) > 1:
            raise UsageError(f"the models imply different batch sizes {sorted(implied)} (a fixed batch, or "
                             "--input-shape); pass --batch")
        one = implied.pop() if implied else None
        return [one or 1], any(specs) and one is not None
    if isinstance(batches, int):
        batches = [batches]
    chosen = []
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise UsageError(f"batch sizes must be positive integers, got {b!r}")
        if b not in chosen:
            chosen.append(b)
    if not chosen:
        raise UsageError("no batch size given; pass --batch 1 (or a list like 1,8,32)")
    return chosen, True


class _Progress:
    """A tqdm bar on stderr, in percent; silent when disabled or when stderr is not a terminal."""

    def __init__(self, desc: str, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=100, desc=desc, file=sys.stderr, disable=None, leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}",
            )
        self._shown = 0

    def __call__(self, rounds: int, fraction: float) -> None:
        if self._bar is None:
            return
        target = int(fraction * 100)
        if target > self._shown:
            self._bar.update(target - self._shown)
            self._shown = target

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def benchmark(
    models: Sequence[ModelArg],
    provider: str = "cpu",
    batches: int | Sequence[int] | None = None,
    threads: int | None = None,
    warmup: int = 10,
    runs: int | None = None,
    min_time: float | None = None,
    input_shapes: Iterable[str] | Mapping[str | None, Sequence[int]] | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    strict_provider: bool = False,
    device_id: int = 0,
    log: Log | None = stderr_line,
    timer: Timer = time.perf_counter,
    spinning: bool = False,
    interleave: str | None = None,
    block_time: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BenchResult:
    """Measure the latency of each model at each batch size, models interleaved round by round.

    models: paths or onnx.ModelProto (in memory, < 2 GB). provider: 'cpu' | 'cuda' | 'tensorrt';
    a provider that cannot be created falls back (one line to `log`) unless `strict_provider`.
    batches: batch sizes; None = dim 0 of `input_shapes` if given, else the first model's fixed
    batch, else 1. runs / min_time: a fixed number of rounds, or rounds until every model ran
    `min_time` seconds (default: 1 s and at least 10 rounds). input_shapes: `--input-shape`
    strings or {name or None: shape}. seed: of the random inputs (the same for every model).
    spinning: keep onnxruntime's thread spinning on (its default, and most deployments').
    interleave: 'run' (models alternate run by run; the default with spinning off) or 'block'
    (each model runs back to back for `block_time` seconds, default 0.25, after a short pause;
    ratios from the blocks' medians; `runs` is then a minimum; the default with spinning on, and
    the only choice for several models with spinning on: spinning sessions alternating run by run
    slow each other down). In blocks each model runs back to back, as when it is served alone.
    Raises UsageError (exit 2) for bad models, shapes or options.
    """
    if not models:
        raise UsageError("no model given; pass at least one .onnx file")
    try:
        stop = StopRule.make(runs=runs, min_time=min_time)
    except ValueError as exc:
        message = str(exc).replace("runs", "--runs").replace("min_time", "--min-time")
        raise UsageError(message) from exc
    if warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {warmup}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if interleave is None:
        interleave = "block" if spinning else "run"
    if interleave not in ("run", "block"):
        raise UsageError(f"--interleave must be 'run' or 'block', got {interleave!r}")
    if spinning and interleave == "run" and len(models) > 1:
        raise UsageError("--spinning with --interleave run: sessions whose threads spin slow each "
                         "other down when they alternate run by run; use --interleave block")
    if block_time is not None:
        if interleave != "block":
            raise UsageError("--block-time applies only with --interleave block (or --spinning)")
        if not 0 < block_time < math.inf:
            raise UsageError(f"--block-time must be a positive number of seconds, got {block_time}")
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {seed}")
    block_s = float(block_time) if block_time is not None else DEFAULT_BLOCK_S
    provider_key(provider)  # validate before loading anything
    specs = _as_specs(input_shapes)
    sources = [load_source(m, i) for i, m in enumerate(models)]

    # Every shape first, so a usage mistake is reported before any session is built. Models
    # compared side by side may name their inputs differently: a named shape applies to the
    # models that have that input, and must fit one of them at least.
    own = [{k: v for k, v in specs.items()
            if k is None or len(sources) == 1 or k in {vi.name for vi in graph_inputs(s.signature)}}
           for s in sources]
    unused = [k for k in specs if k is not None and not any(k in o for o in own)]
    if unused:
        raise UsageError(f"--input-shape names {unused[0]!r}, which is not an input of any of the models")
    batch_sizes, batch_chosen = _as_batches(batches, own, [s.signature for s in sources])
    plan: dict[tuple[int, int], tuple[dict, list[str]]] = {}
    for i, source in enumerate(sources):
        for b in batch_sizes:
            try:
                plan[i, b] = shapes_for_batch(source.signature, own[i], b)
            except UsageError as exc:
                prefix = f"{source.name}: " if len(sources) > 1 else ""
                raise type(exc)(f"{prefix}{exc}") from exc
    batch_defaulted = any("(batch" in line for _, used in plan.values() for line in used)
    if log and not batch_chosen and batch_defaulted:
        log(f"note: dynamic batch dims set to {batch_sizes[0]} (pass --batch to choose)")

    warnings: list[str] = []
    sessions = []
    for source in sources:
        session, used, warning = make_session(
            source, provider, threads, device_id=device_id, strict=strict_provider,
            spinning=spinning,
        )
        sessions.append((session, used))
        if warning and warning not in warnings:
            warnings.append(warning)
            if log:
                log(f"warning: {warning}")

    result = BenchResult(
        provider_requested=provider_key(provider),
        threads=int(threads) if threads else default_threads(),
        onnxruntime=ort.__version__,
        warnings=warnings,
        spinning=bool(spinning),
        block_time_s=block_s if interleave == "block" else None,
    )
    for b in batch_sizes:
        run_fns = []
        for i, (source, (session, used)) in enumerate(zip(sources, sessions)):
            shapes, _ = plan[i, b]
            feeds = random_feeds(source.signature, shapes, seed=seed)
            run = make_run_fn(session, feeds, used, device_id=device_id)
            _check_runs(run, source.name, shapes)
            run_fns.append(run)
        bar = _Progress(f"batch {b}", progress)
        try:
            if interleave == "block":
                blocks = measure_blocks(run_fns, stop, warmup=warmup, block_s=block_s,
                                        timer=timer, sleep=sleep, on_round=bar)
                times, paired = blocks.runs_ms, blocks.block_medians_ms
            else:
                times = measure_interleaved(run_fns, stop, warmup=warmup, timer=timer,
                                            on_round=bar)
                paired = times
        finally:
            bar.close()
        for i, (source, (_, used)) in enumerate(zip(sources, sessions)):
            shapes, defaults_used = plan[i, b]
            result.results.append(
                ModelResult(
                    model=source.name,
                    provider=used,
                    batch=b,
                    input_shapes=shapes,
                    stats=latency_stats(times[i], batch=b),
                    ratio_to_first=speedup_spread(paired[0], paired[i]) if i > 0 else None,
                    defaults_used=tuple(defaults_used),
                )
            )
    return result


def _check_runs(run: Callable[[], None], name: str, shapes: Mapping[str, Sequence[int]]) -> None:
    """Run once untimed, turning an onnxruntime failure into a one-line UsageError."""
    try:
        run()
    except Exception as exc:  # onnxruntime raises its own exception types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 240:
            reason = reason[:237] + "..."
        given = ", ".join(f"{k}:{format_shape(v)}" for k, v in shapes.items())
        raise UsageError(
            f"onnxruntime failed to run {name} with inputs {given}: {reason} "
            "(check --input-shape; integer inputs are drawn from [0, 10) and booleans at random, which "
            "a model indexing a smaller table cannot take)"
        ) from exc


def compare_latency(
    before: ModelArg,
    after: ModelArg,
    provider: str = "cpu",
    input_shapes: Iterable[str] | Mapping[str | None, Sequence[int]] | None = None,
    batch: int | None = None,
    threads: int | None = None,
    warmup: int = 10,
    runs: int | None = None,
    min_time: float | None = None,
    progress: bool = False,
    *,
    seed: int = 0,
    strict_provider: bool = False,
    log: Log | None = stderr_line,
    spinning: bool = False,
    interleave: str | None = None,
) -> dict:
    """Latency of `after` against `before`, measured interleaved on the same random inputs.

    Returns {"provider", "before_ms", "after_ms", "speedup", "speedup_p10", "speedup_p90",
    "batch", "runs"}: latencies are medians (ms); speedup = before / after per round, its median
    and 10th/90th percentiles; provider is the one `after` actually ran on. `spinning`,
    `interleave`: see `benchmark` (both echoed in the result).
    """
    result = benchmark(
        [before, after], provider=provider, batches=None if batch is None else [batch],
        threads=threads, warmup=warmup, runs=runs, min_time=min_time, input_shapes=input_shapes,
        progress=progress, seed=seed, strict_provider=strict_provider, log=log,
        spinning=spinning, interleave=interleave,
    )
    first, second = result.results
    spread = second.ratio_to_first
    assert spread is not None
    return {
        "provider": second.provider,
        "before_ms": first.stats.p50_ms,
        "after_ms": second.stats.p50_ms,
        "speedup": spread.median,
        "speedup_p10": spread.p10,
        "speedup_p90": spread.p90,
        "batch": second.batch,
        "runs": second.stats.runs,
        "spinning": bool(spinning),
        "interleave": result.interleave,
    }
