"""Per-layer latency efficiency of a uniform cut, from the layer latency table.

For each distinct weighted layer of MODEL (compressor/bench/layers.py), the one-node probe is timed
at its dense channel counts and at the counts a uniform ``--ratio`` plan gives it, on the provider.
Efficiency = (dense MACs / pruned MACs) / (dense ms / pruned ms) of that layer alone: 1.0 means the
kernel runs the pruned layer exactly as much faster as it has fewer MACs. The last line sums the
layers as the model runs them (repeated layers counted each time).

If every layer's efficiency is below a goal, no plan at those widths reaches it: the gap is the
kernel's, not the graph's.

    .venv/bin/python tools/layer_efficiency.py out/zoo/resnet50_dynamo.onnx --ratio 0.5 [--round-to 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compressor import api  # noqa: E402
from compressor.bench.layers import call_overhead_ms, find_layers, ort_layer_timer  # noqa: E402
from compressor.importance import score_groups  # noqa: E402
from compressor.ir.model_io import default_opset, load_model  # noqa: E402
from compressor.metrics import count  # noqa: E402
from compressor.planning import PlanOptions, make_plan  # noqa: E402


def layer_macs(layer, dense_macs: int, cin: int, cout: int) -> float:
    """MACs of the layer at (cin, cout), scaled from its dense MACs: in proportion to cin x cout
    (to cin for a depthwise conv, whose cout follows cin; a grouped conv keeps its group count)."""
    if layer.depthwise:
        return dense_macs * cin / layer.dense_cin
    return dense_macs * (cin * cout) / (layer.dense_cin * layer.dense_cout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per probe")
    ap.add_argument("--spinning", action="store_true", help="onnxruntime's default thread spinning in the probes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    proto = load_model(args.model)
    an = api.analyze(proto)
    plan = make_plan(an, score_groups(an, "l2"), PlanOptions(ratio=args.ratio, round_to=args.round_to))
    widths = {d.id: len(d.kept) for d in plan.groups}
    per_node = count(an.index)[2]
    timer = ort_layer_timer("cpu", args.threads, min_time_s=args.min_time, spinning=args.spinning)
    overhead = call_overhead_ms(timer)
    seen: dict[tuple, dict] = {}
    rows = []
    for lyr in find_layers(an, default_opset(proto)):
        cin, cout = lyr.channels(widths)
        key = (lyr.key, lyr.dense_cin, lyr.dense_cout, cin, cout)
        if key not in seen:
            dense_ms = max(1e-6, timer(lyr.build(lyr.dense_cin, lyr.dense_cout)) - overhead)
            pruned_ms = max(1e-6, timer(lyr.build(cin, cin if lyr.depthwise else cout)) - overhead)
            macs = per_node.get(lyr.node, 0)
            macs_ratio = macs / max(layer_macs(lyr, macs, cin, cout), 1e-9)
            seen[key] = {"macs": macs, "pruned_macs": layer_macs(lyr, macs, cin, cout), "node": lyr.node, "op": lyr.op, "dense": [lyr.dense_cin, lyr.dense_cout],
                         "pruned": [cin, cout], "dense_ms": dense_ms, "pruned_ms": pruned_ms,
                         "macs_ratio": macs_ratio, "speedup": dense_ms / pruned_ms,
                         "efficiency": (dense_ms / pruned_ms) / macs_ratio, "count": 0}
        seen[key]["count"] += 1
        rows.append(seen[key])
    distinct = list(seen.values())
    total_dense = sum(r["dense_ms"] for r in rows)
    total_pruned = sum(r["pruned_ms"] for r in rows)
    macs_dense = sum(r["macs"] for r in rows)
    macs_pruned = sum(r["pruned_macs"] for r in rows)
    summary = {"model": args.model, "ratio": args.ratio, "round_to": args.round_to, "threads": args.threads,
               "layers": len(rows), "distinct": len(distinct), "dense_ms": total_dense, "pruned_ms": total_pruned,
               "speedup": total_dense / total_pruned, "macs_ratio": macs_dense / macs_pruned,
               "efficiency": (total_dense / total_pruned) / (macs_dense / macs_pruned),
               "max_layer_efficiency": max(r["efficiency"] for r in distinct),
               "layers_at_or_above_0.95": sum(r["count"] for r in distinct if r["efficiency"] >= 0.95)}
    if args.json:
        print(json.dumps({"summary": summary, "layers": distinct}, indent=1))
        return 0
    w = max(len(r["node"]) for r in distinct)
    print(f"{'layer':<{w}}  {'x':>2}  {'channels':>19}  {'dense ms':>8}  {'pruned ms':>9}  {'MACs ÷':>6}  "
          f"{'speedup':>7}  {'efficiency':>10}")
    for r in sorted(distinct, key=lambda r: -r["dense_ms"] * r["count"]):
        ch = f"{r['dense'][0]}/{r['dense'][1]}->{r['pruned'][0]}/{r['pruned'][1]}"
        print(f"{r['node']:<{w}}  {r['count']:>2}  {ch:>19}  {r['dense_ms']:8.3f}  {r['pruned_ms']:9.3f}  "
              f"{r['macs_ratio']:6.2f}  {r['speedup']:7.2f}  {r['efficiency']:10.2f}")
    print(f"\nall {summary['layers']} layers ({summary['distinct']} distinct), as the model runs them: "
          f"{total_dense:.2f} -> {total_pruned:.2f} ms, speedup {summary['speedup']:.2f} for MACs "
          f"{summary['macs_ratio']:.2f}: efficiency {summary['efficiency']:.2f}; best single layer "
          f"{summary['max_layer_efficiency']:.2f}; {summary['layers_at_or_above_0.95']} of {summary['layers']} "
          "layers at >= 0.95")
    return 0


if __name__ == "__main__":
    sys.exit(main())
