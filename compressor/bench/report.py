"""Benchmark results as data, and their renderings: a fixed-width table, JSON and CSV.

JSON schema (`BenchResult.to_dict()`):
    {"provider_requested": "cpu", "threads": 2, "onnxruntime": "1.31.1", "warnings": [...],
     "spinning": false, "interleave": "run" or "block", "block_time_s": null or seconds,
     "results": [{"model": path, "provider": provider actually used, "batch": B,
                  "input_shapes": {name: [dims]}, "mean_ms", "std_ms", "min_ms", "p50_ms",
                  "p90_ms", "p99_ms", "throughput", "runs",
                  "ratio_to_first": {"median", "p10", "p90"} or null}]}
`ratio_to_first` is the speedup over the first model at the same batch (first / this, per
interleaved round; with interleave "block", per round of blocks, from the blocks' medians); it is null
for the first model itself.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from compressor.bench.inputs import Shape, format_shape
from compressor.bench.session import short_provider_name
from compressor.bench.stats import LatencyStats, RatioSpread

CSV_COLUMNS = (
    "model", "provider", "batch", "input_shapes", "mean_ms", "std_ms", "min_ms", "p50_ms",
    "p90_ms", "p99_ms", "throughput", "runs", "ratio_median", "ratio_p10", "ratio_p90",
    "threads", "spinning", "interleave",
)


@dataclass(frozen=True)
class ModelResult:
    """One model at one batch size."""

    model: str
    provider: str
    batch: int
    input_shapes: dict[str, Shape]
    stats: LatencyStats
    ratio_to_first: RatioSpread | None = None
    defaults_used: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "provider": self.provider,
            "batch": self.batch,
            "input_shapes": {name: list(shape) for name, shape in self.input_shapes.items()},
            **self.stats.to_dict(),
            "ratio_to_first": self.ratio_to_first.to_dict() if self.ratio_to_first else None,
        }


@dataclass
class BenchResult:
    """Everything one `benchmark` call measured."""

    provider_requested: str
    threads: int
    onnxruntime: str
    results: list[ModelResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    spinning: bool = False
    block_time_s: float | None = None  # set when models were timed in blocks

    @property
    def interleave(self) -> str:
        """'block' when models ran in alternating blocks, 'run' when they alternated run by run."""
        return "block" if self.block_time_s is not None else "run"

    def to_dict(self) -> dict:
        return {
            "provider_requested": self.provider_requested,
            "results": [r.to_dict() for r in self.results],
            "threads": self.threads,
            "onnxruntime": self.onnxruntime,
            "warnings": list(self.warnings),
            "spinning": self.spinning,
            "interleave": self.interleave,
            "block_time_s": self.block_time_s,
        }

    def json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        return render_table(self)

    def csv(self) -> str:
        return render_csv(self)

    def for_batch(self, batch: int) -> list[ModelResult]:
        return [r for r in self.results if r.batch == batch]


# --------------------------------------------------------------------------- rendering


def display_names(models: Sequence[str]) -> dict[str, str]:
    """Short names for the table: file names, or the paths as given where file names clash."""
    bases = [os.path.basename(m) if not m.startswith("<") else m for m in models]
    return {m: (b if bases.count(b) == 1 else m) for m, b in zip(models, bases)}


def _fmt_ms(value: float) -> str:
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.3f}"
    return f"{value:.4f}"


def _fmt_ratio(spread: RatioSpread | None) -> str:
    if spread is None:
        return "(first)"
    return f"{spread.median:.2f}x [{spread.p10:.2f}-{spread.p90:.2f}]"


def render_table(result: BenchResult) -> str:
    """Fixed-width table for people, one row per model and batch."""
    unique_models = list(dict.fromkeys(r.model for r in result.results))
    names = display_names(unique_models)
    several = len(unique_models) > 1
    headers = ["model", "provider", "batch", "runs", "mean ms", "std ms", "p50 ms", "p90 ms",
               "p99 ms", "samples/s"]
    if several:
        headers.append("speedup vs first (p10-p90)")
    rows = []
    for r in result.results:
        s = r.stats
        row = [names[r.model], short_provider_name(r.provider), str(r.batch), str(s.runs),
               _fmt_ms(s.mean_ms), _fmt_ms(s.std_ms), _fmt_ms(s.p50_ms), _fmt_ms(s.p90_ms),
               _fmt_ms(s.p99_ms), f"{s.throughput:.1f}"]
        if several:
            row.append(_fmt_ratio(r.ratio_to_first))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    left = {0, 1}  # text columns; numbers align right

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    title = (f"onnxruntime {result.onnxruntime}, provider requested: {result.provider_requested}, "
             f"{result.threads} intra-op thread{'s' if result.threads != 1 else ''}, "
             f"spinning {'on' if result.spinning else 'off'}")
    blocks = result.interleave == "block"
    if several:
        title += (f", models interleaved in {result.block_time_s:g} s blocks" if blocks
                  else ", models interleaved")
    out = [title, line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    if several:
        unit = "block medians, per round of blocks" if blocks else "per interleaved round"
        out.append(f"speedup = first model's latency / this model's, {unit}: median [p10-p90]")
    return "\n".join(out)


def _shapes_cell(shapes: dict[str, Shape]) -> str:
    return ";".join(f"{name}:{format_shape(shape)}" for name, shape in shapes.items())


def render_csv(result: BenchResult) -> str:
    """CSV with a header row; input shapes as 'name:1x3x224x224;other:...'; the measurement's
    threads, spinning (0/1) and interleave ('run' or 'block') repeated on every row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in result.results:
        s = r.stats
        ratio = r.ratio_to_first
        writer.writerow([
            r.model, r.provider, r.batch, _shapes_cell(r.input_shapes),
            repr(s.mean_ms), repr(s.std_ms), repr(s.min_ms), repr(s.p50_ms), repr(s.p90_ms),
            repr(s.p99_ms), repr(s.throughput), s.runs,
            "" if ratio is None else repr(ratio.median),
            "" if ratio is None else repr(ratio.p10),
            "" if ratio is None else repr(ratio.p90),
            result.threads, int(result.spinning), result.interleave,
        ])
    return buffer.getvalue()
