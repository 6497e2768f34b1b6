"""Width policies measured: for each cut, policy and round_to, the exact MACs and the interleaved
onnxruntime CPU latency (1 thread, spinning off) of ResNet-20 pruned from an untrained export.
Latency depends only on the shapes, so untrained weights suffice. Writes ``<runs>/widths/probe.json``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import models
from compressor import api
from compressor.bench.api import compare_latency
from compressor.importance import score_groups
from compressor.train.export import export

from exp.widths import counts_for_cut, plan_from_counts

CANDIDATES = [(2.0, "uniform", 1), (2.0, "uniform", 8), (2.0, "uniform", 16), (2.0, "internal", 8),
              (4.0, "uniform", 1), (4.0, "uniform", 8)]


def probe(runs: Path, model_name: str = "resnet20", min_time: float = 3.0) -> list[dict]:
    out_dir = runs / "widths"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m = models.create_model(model_name, in_channels=1, num_classes=10, input_size=28).eval()
    dense = out_dir / f"{model_name}.onnx"
    export(m, torch.zeros(1, 1, 28, 28), dense, dynamic_batch=True)
    an = api.analyze(dense)
    scores = score_groups(an, "l1")
    rows = []
    for cut, policy, round_to in CANDIDATES:
        try:
            counts, frac = counts_for_cut(an, cut, policy, round_to)
        except ValueError as exc:
            rows.append({"cut": cut, "policy": policy, "round_to": round_to, "error": str(exc)})
            continue
        path = out_dir / f"{model_name}-{policy}{round_to}-{cut:g}x.onnx"
        rep = api.prune(dense, plan_in=plan_from_counts(an, scores, counts), output=path).report
        row = {"cut": cut, "policy": policy, "round_to": round_to, "fraction": frac,
               "widths": sorted(set(counts.values())), "macs_fraction": rep["macs_after"] / rep["macs_before"],
               "verified": rep["verify"]["passed"]}
        for b in (1, 32):
            lat = compare_latency(dense, path, batch=b, threads=1, min_time=min_time, log=None)
            row[f"speedup_b{b}"] = lat["speedup"]
            row[f"ms_b{b}"] = [lat["before_ms"], lat["after_ms"]]
        print(json.dumps(row), flush=True)
        rows.append(row)
    (out_dir / "probe.json").write_text(json.dumps(rows, indent=1))
    return rows
