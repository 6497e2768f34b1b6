"""Compare the latency of ONNX models (e.g. original vs pruned), interleaved, and print the table.

    python tools/bench_latency.py original.onnx pruned.onnx [--provider cpu] [--batch 1,8]
        [--input-shape x:1x3x224x224] [--runs 200 | --min-time 2] [--threads N] [--json]

A thin wrapper over `compressor.bench.benchmark`; `compress bench` offers the same and more.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from compressor.bench import benchmark
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from compressor.bench import benchmark

from compressor.bench.cli import parse_batches
from compressor.errors import CompressorError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="ONNX files; speedups are relative to the first")
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--batch", default=None, help="batch sizes, e.g. 1,8,32")
    parser.add_argument("--input-shape", action="append", default=[], metavar="[NAME:]1x3x224x224")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--runs", type=int, default=None)
    runs.add_argument("--min-time", type=float, default=None, metavar="S")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    try:
        result = benchmark(
            args.models, provider=args.provider, batches=parse_batches(args.batch),
            threads=args.threads, warmup=args.warmup, runs=args.runs, min_time=args.min_time,
            input_shapes=args.input_shape,
        )
    except CompressorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(result.json() if args.json else result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
