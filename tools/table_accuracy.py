"""How well the latency table predicts pruned models: one-node probes alone, and fitted to profiles.

`compress --target-latency` plans on a latency table (compressor/bench/layers.py) and, by default,
fits it to onnxruntime's profiles of the whole model (compressor/bench/calibrate.py,
`--profile-table`). This measures what the fit buys. Per model (out/peers/<model>/dense.onnx, left
by tools/bench_peers.py), in one process, on the CPU provider with 2 threads and spinning off:

1. the table, measured as the engine measures it (multiples of 8), and its profile-fitted copy;
2. with each table, the `--keep-macs` allocation's plan at each predicted fraction F;
3. every plan pruned and its latency ratio to the dense model measured interleaved
   (compressor.bench.ratio.RatioMeter, to +-1 %), beside what both tables predict for it.

The summary per model: each table's mean |predicted / measured - 1| over all plans, and each
table's plans' MACs per measured latency (MACs fraction / measured ratio: more is a better plan
for the same time).

    .venv-zoo/bin/python tools/table_accuracy.py                       # writes docs/benchmarks.md
    .venv-zoo/bin/python tools/table_accuracy.py --models mobilenet_v2 --fractions 0.3,0.5 --no-doc
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import run_meta, write_block  # noqa: E402

OUT = ROOT / "out" / "peers"
DOC = ROOT / "docs" / "benchmarks.md"
MODELS = ["convnext_tiny", "mobilenet_v2", "resnet50", "densenet121"]
FRACTIONS = (0.3, 0.4, 0.5)
BEGIN, END = "<!-- table-accuracy:begin -->", "<!-- table-accuracy:end -->"


def run_model(name: str, fractions: list[float], drop_layers: bool, threads: int = 2) -> dict:
    import onnx

    from compressor import api
    from compressor.bench.layers import call_overhead_ms, measure_table, ort_layer_timer
    from compressor.bench.ratio import RatioMeter, RatioPrecision, median_interval
    from compressor.importance import score_groups
    from compressor.ir.model_io import default_opset
    from compressor.ir.shapes import resolve_inputs
    from compressor.planning import PlanOptions
    from compressor.planning.allocate import Allocator, cost_table, fewest_kept
    from compressor.planning.budget import plan_cost

    path = OUT / name / "dense.onnx"
    proto = onnx.load(path)
    spec = resolve_inputs(proto, {})
    an = api.analyze(proto)
    scores = score_groups(an, "l2")
    opts = PlanOptions(round_to=api.LATENCY_ROUND_TO, drop_layers=drop_layers)
    floor = lambda n: fewest_kept(n, opts.min_channels)  # noqa: E731
    meter = RatioMeter(proto, provider="cpu", threads=threads,
                       input_shapes={k: list(v) for k, v in spec.shapes.items()})
    t0 = time.perf_counter()
    reference = median_interval(meter.reference_ms(min_time_s=3.0))[1]
    timer = ort_layer_timer("cpu", threads)
    raw = measure_table(an, default_opset(proto), timer, reference, opts.round_to, floor,
                        progress=True, overhead_ms=call_overhead_ms(timer), leftovers=drop_layers)
    table_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = api._profiled_table(raw, proto, an, scores, opts, spec, meter, False)
    fit_s = time.perf_counter() - t0
    macs = cost_table(an, default_opset(proto), opts.round_to, floor, "macs")
    allocs = {"probes": Allocator(an, scores, opts, raw, macs=macs),
              "fitted": Allocator(an, scores, opts, fitted, macs=macs)}
    base = plan_cost(an, {})[0]
    precision = RatioPrecision(rel_halfwidth=0.01, min_time_s=2.0, max_time_s=8.0)
    rows = []
    for f in fractions:
        for which, alloc in allocs.items():
            widths, _ = alloc.widths_for(f)
            plan = alloc.plan(widths)
            sample = meter.measure(api._pruned_for_timing(an, plan), precision)
            rows.append({"fraction": f, "planned_on": which,
                         "predicted_probes": allocs["probes"].predict(widths) / allocs["probes"].dense_ms,
                         "predicted_fitted": allocs["fitted"].predict(widths) / allocs["fitted"].dense_ms,
                         "measured": sample.median, "interval": list(sample.interval),
                         "macs": plan_cost(an, plan.keep)[0] / base,
                         "removed_groups": sum(1 for w in widths.values() if w == 0)})
            print(f"  {name} F={f:g} on {which}: predicted {rows[-1]['predicted_probes']:.3f} (probes) "
                  f"{rows[-1]['predicted_fitted']:.3f} (fitted), measured {sample.median:.3f}, "
                  f"MACs {rows[-1]['macs']:.3f}", flush=True)
    meter.close()
    err = {k: mean(abs(r[f"predicted_{k}"] / r["measured"] - 1) for r in rows) for k in ("probes", "fitted")}
    # the search corrects a table's level with its first measurements; what misleads the allocation is a
    # table that is off by different amounts for different plans
    spread = {k: max(r[f"predicted_{k}"] / r["measured"] for r in rows) - min(r[f"predicted_{k}"] / r["measured"]
                                                                             for r in rows) for k in ("probes", "fitted")}
    per_ms = {k: mean(r["macs"] / r["measured"] for r in rows if r["planned_on"] == k) for k in allocs}
    return {"model": name, "reference_ms": reference, "table_seconds": table_s, "fit_seconds": fit_s,
            "calibration": fitted.calibration, "rows": rows, "mean_abs_error": err, "spread": spread,
            "macs_per_measured": per_ms}


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "<!-- generated by tools/table_accuracy.py -->",
        f"Generated by `{meta['command']}` on {meta['date']}; onnxruntime {meta['onnxruntime']}, CPU provider, "
        f"2 threads, spinning off, batch 1; load (1-min) {meta['load_before']:.1f} → {meta['load_after']:.1f}.",
        f"- plans: the `--keep-macs` allocation{' with `--drop-layers`' if meta['drop_layers'] else ''} at "
        "predicted fractions F of the dense latency, on the probed table and on its profile-fitted copy "
        "(`--profile-table`, the default); measured: the plan's latency ratio to the dense model, interleaved, ±1 %.",
        "- error: mean |predicted / measured − 1| over all the model's plans, for each table's predictions; "
        "spread: the largest minus the smallest predicted / measured over those plans (the search corrects a "
        "table's level with its first measurements; a table off by different amounts for different plans "
        "misleads the allocation); MACs per latency: MACs fraction / measured ratio, the mean over each table's "
        "own plans (higher: more compute kept for the time).",
        "",
        "| model | plans | error, probes | error, fitted | spread, probes | spread, fitted | MACs per latency, "
        "probes' plans | fitted's plans | fit: layers' slope median [p10–p90] | fit seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.get("calibration") or {}
        slope = (f"{c['slope_median']:.2f} [{c['slope_p10_p90'][0]:.2f}–{c['slope_p10_p90'][1]:.2f}]"
                 if "slope_median" in c else c.get("skipped", "–"))
        lines.append(f"| {r['model']} | {len(r['rows'])} | {r['mean_abs_error']['probes']:.1%} | "
                     f"{r['mean_abs_error']['fitted']:.1%} | {r['spread']['probes']:.3f} | {r['spread']['fitted']:.3f} | "
                     f"{r['macs_per_measured']['probes']:.3f} | "
                     f"{r['macs_per_measured']['fitted']:.3f} | {slope} | {r['fit_seconds']:.1f} |")
    lines += ["", "| model | F | planned on | predicted (probes) | predicted (fitted) | measured | MACs | removed groups |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            lines.append(f"| {r['model']} | {row['fraction']:g} | {row['planned_on']} | {row['predicted_probes']:.3f} | "
                         f"{row['predicted_fitted']:.3f} | {row['measured']:.3f} | {row['macs']:.3f} | "
                         f"{row['removed_groups']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS))
    ap.add_argument("--drop-layers", action="store_true", help="plan with --drop-layers too")
    ap.add_argument("--doc", default=str(DOC))
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    fractions = [float(f) for f in args.fractions.split(",")]
    results = []
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        if not (OUT / name / "dense.onnx").exists():
            print(f"[{name}] skipped: run tools/bench_peers.py --models {name} first")
            continue
        print(f"[{name}]", flush=True)
        results.append(run_model(name, fractions, args.drop_layers))
    meta = run_meta("table_accuracy.py", argv, load_before, drop_layers=args.drop_layers)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("table_accuracy.json" if not args.no_doc else "table_accuracy_last.json")).write_text(
        json.dumps({"meta": meta, "results": results}, indent=1))
    text = markdown(results, meta)
    print(text)
    if not args.no_doc:
        write_block(Path(args.doc), BEGIN, END, text,
                    "## Latency table: probes alone against probes fitted to whole-model profiles")
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
