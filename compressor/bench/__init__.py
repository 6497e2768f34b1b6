"""Latency benchmarking of ONNX models with onnxruntime (the `compress bench` command).

inputs   the --input-shape grammar, concrete input shapes, seeded random feeds
session  provider resolution and fallback, session options, IO binding on the GPU
runner   the interleaved measurement loops (models alternate run by run, or in blocks)
stats    latency statistics and the spread of per-round ratios
report   results as data; table, JSON and CSV renderings
api      benchmark() and compare_latency()
cli      the click command `bench_command`
"""

from compressor.bench.api import benchmark, compare_latency
from compressor.bench.inputs import (
    format_shape,
    parse_input_shape,
    parse_input_shapes,
    random_feeds,
    resolve_input_shapes,
    shapes_for_batch,
)
from compressor.bench.report import BenchResult, ModelResult
from compressor.bench.runner import StopRule, measure_blocks, measure_interleaved, round_order
from compressor.bench.session import (
    ProviderUnavailableError,
    cuda_usable,
    make_run_fn,
    make_session,
    session_options,
)
from compressor.bench.stats import LatencyStats, RatioSpread, latency_stats, ratio_spread

__all__ = [
    "BenchResult",
    "LatencyStats",
    "ModelResult",
    "ProviderUnavailableError",
    "RatioSpread",
    "StopRule",
    "benchmark",
    "compare_latency",
    "cuda_usable",
    "format_shape",
    "latency_stats",
    "make_run_fn",
    "make_session",
    "measure_blocks",
    "measure_interleaved",
    "parse_input_shape",
    "parse_input_shapes",
    "random_feeds",
    "ratio_spread",
    "resolve_input_shapes",
    "round_order",
    "session_options",
    "shapes_for_batch",
]
