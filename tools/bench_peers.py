"""Peer benchmark: compressor against Torch-Pruning and onnxsim's structured pruning, measured latency.

For each torchvision model (random init, randomised BatchNorm statistics, batch 1, 224x224) this
exports the dense model to ONNX (TorchScript exporter, opset 17, IR version 10) and prunes it with

  * Torch-Pruning (MagnitudeImportance p=2, pruning_ratio 0.5, final classifier ignored), then
    exports the pruned torch model the same way;
  * compressor at a uniform ratio 0.5 (``compress --ratio 0.5``) and at the MACs fraction
    Torch-Pruning reached (``--target-macs F``, with round-to 1, 8 and auto);
  * onnxsim's ``onnxsim.pruning.apply_structured_pruning(sparsity=0.5)``;

then measures every variant of one model against the dense ONNX in ONE interleaved
``compressor.bench.benchmark`` call (CPU provider, 2 intra-op threads, spinning off), so that
machine drift cancels in the per-round speedup ratios. MACs are counted on the ONNX files by the
same counter (Conv/Gemm/MatMul) for every tool. Efficiency = speedup / MACs ratio.

Needs torchvision, which imports only in the zoo venv:

    .venv-zoo/bin/python tools/bench_peers.py                     # every model, rewrites docs/benchmarks.md
    .venv-zoo/bin/python tools/bench_peers.py --models resnet18   # a subset (doc rendered from all cached rows)

Each model runs in its own subprocess (memory); its results are cached in ``out/peers/<model>.json``
and a later run reuses them (``--fresh`` recomputes). Pruned files live in ``out/peers/<model>/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "peers"
DOC = ROOT / "docs" / "benchmarks.md"

MODELS = [
    "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
    "regnet_y_400mf", "mnasnet1_0", "densenet121", "convnext_tiny",
]
#: Models without depthwise/grouped convolutions, attention or dense connectivity (goal 2).
PLAIN_CNNS = ("resnet18", "resnet50", "vgg16_bn")
#: Efficiency of Torch-Pruning at ratio 0.5 measured earlier on this machine (the brief's anchor).
TP_ANCHOR = {
    "vgg16_bn": 0.99, "resnet50": 0.91, "resnet18": 0.91, "densenet121": 0.69, "convnext_tiny": 0.68,
    "efficientnet_b0": 0.62, "mobilenet_v2": 0.59, "regnet_y_400mf": 0.58, "mobilenet_v3_large": 0.58,
    "mnasnet1_0": 0.54,
}
RATIO = 0.5
THREADS = 2

#: Tools in table order. "ours-*" variants at TP's MACs are skipped when TP failed.
TOOLS = ["torch-pruning", "ours r0.5", "ours @TP-MACs", "ours @TP-MACs r8", "ours @TP-MACs auto",
         "onnxsim 0.8.1"]
OUR_VARIANTS = {
    # label: (kwargs for api.prune, the equivalent CLI flags)
    "ours r0.5": ({"ratio": RATIO}, f"--ratio {RATIO}"),
    "ours @TP-MACs": ({}, "--target-macs F"),
    "ours @TP-MACs r8": ({"round_to": 8}, "--target-macs F --round-to 8"),
    "ours @TP-MACs auto": ({"round_to": "auto"}, "--target-macs F --round-to auto"),
}


@dataclass
class Row:
    model: str
    tool: str
    status: str = "ok"  # ok | error | skipped
    path: str = ""
    macs: int | None = None
    params: int | None = None
    macs_ratio: float | None = None  # dense MACs / these MACs
    macs_fraction: float | None = None  # these MACs / dense MACs
    params_ratio: float | None = None
    p50_ms: float | None = None
    speedup: float | None = None  # median of per-round dense/this
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    prune_s: float | None = None  # TP: dependency graph + prune; ours: load -> verified save
    export_s: float | None = None  # TP only: torch.onnx.export + save
    max_rel_err: float | None = None  # ours: the equivalence oracle
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def efficiency(self) -> float | None:
        if self.speedup is None or not self.macs_ratio:
            return None
        return self.speedup / self.macs_ratio

    @property
    def total_s(self) -> float | None:
        if self.prune_s is None:
            return None
        return self.prune_s + (self.export_s or 0.0)

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- models and exports --------------------------------------------------------------------------
def _zoo():
    """tools/zoo_coverage.py: the one definition of a randomly initialised torchvision model."""
    sys.path.insert(0, str(ROOT / "tools"))
    import zoo_coverage

    return zoo_coverage


def export_onnx(model, x, path: Path) -> float:
    """TorchScript exporter, opset 17, IR version 10, weights inline; returns seconds."""
    import onnx
    import torch

    zoo = _zoo()
    t0 = time.perf_counter()
    tmp = path.with_name(f".{path.stem}.tmp.onnx")
    with torch.no_grad(), zoo._quiet():
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))
    tmp.unlink()
    return time.perf_counter() - t0


def onnx_cost(path: str | Path) -> tuple[int, int]:
    """(MACs, params) of an ONNX file at its static input shapes, by compressor's counter."""
    from compressor.ir.fold import prepare
    from compressor.ir.graph import GraphIndex
    from compressor.ir.model_io import load_model
    from compressor.ir.shapes import resolve_inputs
    from compressor.metrics import count

    proto, _ = prepare(load_model(str(path)))
    macs, params, _ = count(GraphIndex(proto, resolve_inputs(proto)))
    return macs, params


def file_digest(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def arch_digest(path: str | Path) -> str:
    """A digest of the weight shapes of every Conv/Gemm/MatMul in node order: equal digests mean the
    same layer widths, so equal latency up to noise."""
    import hashlib

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    dims = {t.name: tuple(t.dims) for t in m.graph.initializer}
    shapes = [dims.get(n.input[1]) for n in m.graph.node
              if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1]
    return hashlib.sha1(repr(shapes).encode()).hexdigest()


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


# ---- one model ------------------------------------------------------------------------------------
def run_torch_pruning(name: str, model, x, path: Path) -> Row:
    import torch
    import torch_pruning as tp

    zoo = _zoo()
    row = Row(model=name, tool="torch-pruning", path=str(path))
    try:
        t0 = time.perf_counter()
        with zoo._quiet():
            pruner = tp.pruner.MetaPruner(
                model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=RATIO,
                ignored_layers=zoo.final_classifiers(model))
            pruner.step()
        row.prune_s = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            model(x)
        row.export_s = export_onnx(model, x, path)
    except Exception as exc:  # noqa: BLE001 - one row per failure, the benchmark goes on
        row.status, row.note = "error", _err(exc)
        row.extra["traceback"] = traceback.format_exc()
    return row


def run_ours(name: str, label: str, dense: Path, path: Path, target_macs: float | None) -> Row:
    from compressor import api
    from compressor.errors import VerificationError

    kwargs, flags = OUR_VARIANTS[label]
    kwargs = dict(kwargs)
    if label != "ours r0.5":
        if target_macs is None:
            return Row(model=name, tool=label, status="skipped", note="no Torch-Pruning MACs to match")
        kwargs["target_macs"] = target_macs
        flags = flags.replace("F", f"{target_macs:.4f}")
    row = Row(model=name, tool=label, path=str(path))
    row.extra["flags"] = flags
    t0 = time.perf_counter()
    try:
        rep = api.prune(str(dense), output=str(path), provider="cpu", **kwargs).report
    except VerificationError as exc:
        row.status, row.note = "error", _err(exc)
        if exc.report:
            row.max_rel_err = exc.report.get("verify", {}).get("max_rel_err")
        return row
    except Exception as exc:  # noqa: BLE001
        row.status, row.note = "error", _err(exc)
        row.extra["traceback"] = traceback.format_exc()
        return row
    row.prune_s = time.perf_counter() - t0
    row.max_rel_err = rep["verify"].get("max_rel_err")
    row.extra["engine_seconds"] = rep.get("seconds")
    row.extra["barriers"] = len(rep.get("barriers", []))
    if "round_to_auto" in rep:
        ra = rep["round_to_auto"]
        row.extra["round_to_auto"] = ra
        row.note = f"auto chose round-to {ra['chosen']}"
    if "budget" in rep:
        row.extra["budget_achieved"] = rep["budget"]["achieved"]
    return row


def run_onnxsim(name: str, dense: Path, path: Path) -> Row:
    import onnx

    row = Row(model=name, tool="onnxsim 0.8.1", path=str(path))
    try:
        import onnxsim
        from onnxsim.pruning import apply_structured_pruning

        row.extra["onnxsim_version"] = getattr(onnxsim, "__version__", "?")
        t0 = time.perf_counter()
        pruned = apply_structured_pruning(onnx.load(str(dense)), sparsity=RATIO)
        onnx.save(pruned, str(path))
        row.prune_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001
        row.status, row.note = "error", _err(exc)
        row.extra["traceback"] = traceback.format_exc()
    return row


def run_model(name: str, min_time: float, variants: list[str]) -> dict:
    """Prune one model with every tool, benchmark all variants interleaved; returns the cache record."""
    import copy

    import onnxruntime as ort
    import torch

    from compressor.bench import benchmark

    torch.set_num_threads(THREADS)
    zoo = _zoo()
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    dense = folder / "dense.onnx"
    model = zoo.build_model(name)
    x = zoo.example_input(name)
    dense_export_s = export_onnx(copy.deepcopy(model), x, dense)
    macs0, params0 = onnx_cost(dense)
    rows = [Row(model=name, tool="dense", path=str(dense), macs=macs0, params=params0)]

    tp_row = run_torch_pruning(name, model, x, folder / "torch_pruning.onnx")
    del model
    gc.collect()
    rows.append(tp_row)
    target = None
    if tp_row.status == "ok":
        tp_row.macs, tp_row.params = onnx_cost(tp_row.path)
        target = tp_row.macs / macs0
    for label in TOOLS:
        if label.startswith("ours") and label in variants:
            rows.append(run_ours(name, label, dense, folder / f"{label.replace(' ', '_').replace('@', '')}.onnx",
                                 target))
            gc.collect()
    if "onnxsim" in variants:
        rows.append(run_onnxsim(name, dense, folder / "onnxsim.onnx"))
    for r in rows:
        if r.status == "ok" and r.macs is None:
            try:
                r.macs, r.params = onnx_cost(r.path)
            except Exception as exc:  # noqa: BLE001
                r.status, r.note = "error", f"MACs count failed: {_err(exc)}"
        if r.status == "ok":
            r.macs_fraction = r.macs / macs0
            r.macs_ratio = macs0 / r.macs if r.macs else None
            r.params_ratio = params0 / r.params if r.params else None

    timed = [r for r in rows if r.status == "ok"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        res = benchmark([r.path for r in timed], provider="cpu", threads=THREADS, min_time=min_time,
                        progress=False, log=None)
    except Exception as exc:  # noqa: BLE001 - e.g. a peer's file onnxruntime cannot run: time the rest
        bad = []
        for r in timed[1:]:
            try:
                benchmark([r.path], provider="cpu", threads=THREADS, runs=1, warmup=0, progress=False, log=None)
            except Exception as exc2:  # noqa: BLE001
                r.status, r.note = "error", f"onnxruntime cannot run it: {_err(exc2)}"
                bad.append(r)
        if not bad:
            raise exc
        timed = [r for r in timed if r not in bad]
        res = benchmark([r.path for r in timed], provider="cpu", threads=THREADS, min_time=min_time,
                        progress=False, log=None)
    bench_s = time.perf_counter() - t0
    load_after = os.getloadavg()
    for r in rows:
        if r.status == "ok":
            r.extra["sha1"] = file_digest(r.path)
            r.extra["arch"] = arch_digest(r.path)
    for r, m in zip(timed, res.results):
        r.p50_ms = m.stats.p50_ms
        r.extra["runs"] = m.stats.runs
        r.extra["provider"] = m.provider
        if m.ratio_to_first is not None:
            r.speedup, r.speedup_p10, r.speedup_p90 = (m.ratio_to_first.median, m.ratio_to_first.p10,
                                                       m.ratio_to_first.p90)
        else:
            r.speedup = r.speedup_p10 = r.speedup_p90 = 1.0
    return {
        "model": name,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "threads": THREADS,
        "min_time": min_time,
        "dense_export_s": dense_export_s,
        "bench_s": bench_s,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "rows": [asdict(r) for r in rows],
    }


# ---- rendering -----------------------------------------------------------------------------------
def _f(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


HEAD = ["model", "tool", "MACs ratio", "params ratio", "p50 ms", "speedup (p10–p90)", "efficiency",
        "prune s", "oracle err", "note"]


def row_cells(r: Row) -> list[str]:
    if r.tool == "dense":
        return [r.model, "dense ONNX", "1.00", "1.00", _f(r.p50_ms, ".2f"), "1", "–", "–", "–",
                f"{r.macs / 1e9:.2f} GMACs"]
    if r.status != "ok":
        return [r.model, r.tool, "–", "–", "–", "–", "–", _f(r.prune_s, ".2f"), _f(r.max_rel_err, ".1e"),
                f"**{r.status}**: {r.note}"]
    prune = _f(r.prune_s, ".2f")
    if r.export_s is not None:
        prune = f"{r.prune_s:.2f} + {r.export_s:.2f} export"
    speed = f"{r.speedup:.2f} ({r.speedup_p10:.2f}–{r.speedup_p90:.2f})" if r.speedup is not None else "–"
    return [r.model, r.tool, _f(r.macs_ratio, ".2f"), _f(r.params_ratio, ".2f"), _f(r.p50_ms, ".2f"), speed,
            _f(r.efficiency, ".2f"), prune, _f(r.max_rel_err, ".1e"), r.note]


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]


def _by_tool(rec: dict) -> dict[str, Row]:
    return {d["tool"]: Row.from_dict(d) for d in rec["rows"]}


def _is_file(path: str) -> bool:
    return bool(path) and Path(path).is_file()


def mark_identical(rows: list[Row]) -> None:
    """Note byte-identical pruned files: their speedup spread is the measurement noise."""
    first: dict[str, str] = {}
    for r in rows:
        digest = r.extra.get("sha1")
        if digest is None and r.status == "ok" and r.path and Path(r.path).is_file():
            digest = r.extra["sha1"] = file_digest(r.path)
        if digest is None:
            continue
        if digest in first:
            same = "pruned nothing: same file as dense" if first[digest] == "dense" else f"same file as {first[digest]}"
            r.note = "; ".join(n for n in (r.note, same) if n)
        else:
            first[digest] = r.tool
    tp = next((r for r in rows if r.tool == "torch-pruning" and r.status == "ok"), None)
    if tp is None:
        return
    for r in rows:
        if r.status == "ok" and r.tool.startswith("ours") and _is_file(r.path) and _is_file(tp.path):
            if "arch" not in tp.extra:
                tp.extra["arch"] = arch_digest(tp.path)
            if "arch" not in r.extra:
                r.extra["arch"] = arch_digest(r.path)
            if r.extra["arch"] == tp.extra["arch"]:
                r.note = "; ".join(n for n in (r.note, "same layer widths as torch-pruning") if n)


def noise_floor(records: list[dict]) -> list[str]:
    """Speedup spread among byte-identical files of one model (a free control for noise)."""
    out = []
    for rec in records:
        groups: dict[str, list[Row]] = {}
        rows = [Row.from_dict(d) for d in rec["rows"]]
        mark_identical(rows)
        for r in rows:
            if r.tool != "dense" and r.extra.get("sha1") and r.speedup is not None:
                groups.setdefault(r.extra["sha1"], []).append(r)
        for same in groups.values():
            if len(same) > 1:
                s = [r.speedup for r in same]
                out.append(f"{rec['model']} {min(s):.2f}–{max(s):.2f} (±{(max(s) - min(s)) / (max(s) + min(s)):.1%}, "
                           f"{len(s)} copies)")
    return out


def goals(records: list[dict]) -> list[str]:
    """The three goals, checked row by row."""
    lines = ["### Goals", ""]
    body = []
    g1 = {label: [] for label in ("ours @TP-MACs", "ours @TP-MACs r8", "ours @TP-MACs auto", "best")}
    for rec in records:
        t = _by_tool(rec)
        mark_identical(list(t.values()))
        tp = t.get("torch-pruning")
        if tp is None or tp.status != "ok":
            continue
        cells = [rec["model"], _f(tp.speedup, ".2f")]
        verdicts = []
        for label in ("ours @TP-MACs", "ours @TP-MACs r8", "ours @TP-MACs auto"):
            o = t.get(label)
            if o is None or o.status != "ok" or o.speedup is None:
                cells.append("–")
                continue
            if "same layer widths as torch-pruning" in o.note:
                verdict = "="  # the same architecture: equal latency up to noise, whatever the medians say
            else:
                verdict = "✓" if o.speedup >= tp.speedup else "✗"
            g1[label].append(verdict != "✗")
            verdicts.append(verdict)
            cells.append(f"{o.speedup:.2f} ({o.speedup / tp.speedup:.2f}×) {verdict}")
        best = "✓" if "✓" in verdicts else ("=" if "=" in verdicts else ("✗" if verdicts else "–"))
        if verdicts:
            g1["best"].append(best != "✗")
        cells.append(best)
        body.append(cells)
    lines.append("**(1) At Torch-Pruning's MACs, our speedup ≥ Torch-Pruning's on every model.** "
                 "Speedups vs dense ONNX (ratio to TP's speedup); ✓ = at least TP's median; = = the same layer "
                 "widths as TP (same architecture, so equal latency up to noise; the medians differ by noise only).")
    lines.append("")
    lines += _table(["model", "TP speedup", "ours @TP-MACs", "ours r8", "ours auto", "best of ours"], body)
    summary = ", ".join(f"{k}: {sum(v)}/{len(v)}" for k, v in g1.items() if v)
    lines += ["", f"Models where ours ≥ TP or the same architecture — {summary}.", ""]

    body = []
    spin = threading_efficiency()
    for rec in records:
        if rec["model"] not in PLAIN_CNNS:
            continue
        o = _by_tool(rec).get("ours r0.5")
        if o is None or o.efficiency is None:
            continue
        row = [rec["model"], _f(o.macs_ratio, ".2f"), _f(o.speedup, ".2f"), f"{o.efficiency:.2f}",
               "✓" if o.efficiency >= 0.95 else "✗"]
        if spin:
            e = spin.get(rec["model"])
            row += ["–"] * 2 if e is None else [f"{e:.2f}", "✓" if e >= 0.95 else "✗"]
        body.append(row)
    lines.append("**(2) Efficiency ≥ 0.95 on plain CNNs at the uniform ratio (`--ratio 0.5`).**")
    lines.append("")
    head = ["model", "MACs ratio", "speedup", "efficiency", "≥ 0.95"]
    if spin:
        head += ["efficiency, ORT's default spinning", "≥ 0.95"]
    lines += _table(head, body) + [""]
    if spin:
        lines += ["The last two columns: the same files under onnxruntime's default thread spinning, models "
                  "in blocks (`tools/bench_threading.py`, setting `2:on`, median of its repeats; "
                  "`out/peers/threading.json`); the other columns, like the rest of this table, run with spinning off.", ""]

    lines.append("**(3) resnet50: our load → verified save faster than TP's dependency graph + prune + export.**")
    lines.append("")
    body = []
    for rec in records:
        if rec["model"] != "resnet50":
            continue
        t = _by_tool(rec)
        tp = t.get("torch-pruning")
        for label in ("ours r0.5", "ours @TP-MACs", "ours @TP-MACs r8", "ours @TP-MACs auto"):
            o = t.get(label)
            if o is None or o.prune_s is None or tp is None or tp.total_s is None:
                continue
            body.append([label, f"{o.prune_s:.2f}", f"{tp.prune_s:.2f} + {tp.export_s:.2f} = {tp.total_s:.2f}",
                         "✓" if o.prune_s < tp.total_s else "✗"])
    lines += _table(["ours", "ours s", "TP graph+prune + export s", "ours faster"], body) + [""]
    return lines


def threading_efficiency(setting: str = "2:on") -> dict[str, float]:
    """Our ratio-0.5 efficiency per model under ``setting`` from tools/bench_threading.py's cache
    (the median over its repeats), or {} when it has not run."""
    import statistics

    path = OUT / "threading.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    out = {}
    for model, rec in data.get("records", {}).items():
        runs = [m["ours r0.5"]["speedup"] for m in rec.get("settings", {}).get(setting, []) if "ours r0.5" in m]
        if runs:
            out[model] = statistics.median(runs) / rec["macs_ratio"]["ours r0.5"]
    return out


def markdown(records: list[dict], command: str) -> str:
    loads = [(r["loadavg_before"][0], r["loadavg_after"][0]) for r in records]
    dates = sorted(r["date"] for r in records)
    ort_versions = sorted({r["onnxruntime"] for r in records})
    torch_versions = sorted({r.get("torch", "?") for r in records})
    lines = [
        "<!-- generated by tools/bench_peers.py; edit the text outside this block by hand -->",
        f"Generated by `{command}` (per-model results cached in `out/peers/<model>.json`).",
        "",
        f"- Dates: {dates[0]} … {dates[-1]}; onnxruntime {', '.join(ort_versions)}; torch "
        f"{', '.join(torch_versions)}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"CPU provider, {THREADS} intra-op threads, spinning off, batch 1, 224×224.",
        "- Load (1-min `os.getloadavg()` before → after each model's benchmark): "
        + ", ".join(f"{r['model']} {a:.1f}→{b:.1f}" for r, (a, b) in zip(records, loads)) + ".",
        f"- Each model's variants were timed interleaved in one `benchmark([...])` call "
        f"(min {records[0]['min_time']:g} s per variant); speedup = median of per-round dense/variant "
        "ratios (p10–p90 in brackets); MACs by compressor's counter on the ONNX files (Conv/Gemm/MatMul); "
        "efficiency = speedup / MACs ratio.",
        "- prune s: Torch-Pruning = dependency graph + `step()` (+ ONNX export); ours = `api.prune(path, "
        "output=...)` wall time, load → verified save (round-to auto includes timing its 5 candidates); "
        "onnxsim = load + `apply_structured_pruning` + save.",
        "",
    ]
    body = []
    for rec in records:
        t = _by_tool(rec)
        ordered = [t[tool] for tool in ["dense"] + TOOLS if tool in t]
        mark_identical(ordered)
        body += [row_cells(r) for r in ordered]
    lines += _table(HEAD, body) + [""]
    noise = noise_floor(records)
    if noise:
        lines += ["Noise control — the same pruned file timed more than once in one interleaved run "
                  "(speedup min–max): " + "; ".join(noise) + ". Differences smaller than this are not "
                  "resolved by the measurement.", ""]
    lines += goals(records)
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- peers-table:begin -->", "<!-- peers-table:end -->"
DOC_HEAD = "# Benchmarks\n\nMeasured latency of pruned models against peers; regenerate with the commands below.\n"


def run_meta(script: str, argv: list[str] | None, load_before: float, **extra) -> dict:
    """What a benchmark tool records about its run: the command as typed, when, onnxruntime's
    version and the 1-min load before and after (plus ``extra``)."""
    import onnxruntime as ort

    shown = sys.argv[1:] if argv is None else argv
    return {"command": (f".venv-zoo/bin/python tools/{script} " + " ".join(shlex.quote(a) for a in shown)).strip(),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "onnxruntime": ort.__version__,
            "load_before": load_before, "load_after": os.getloadavg()[0], **extra}


def write_block(path: Path, begin: str, end: str, text: str, title: str) -> None:
    """Replace the generated block between ``begin``/``end`` in ``path`` (or append it under ``title``)."""
    block = f"{begin}\n{text}{end}\n"
    doc = path.read_text() if path.exists() else DOC_HEAD
    if begin in doc and end in doc:
        pre, rest = doc.split(begin, 1)
        post = rest.split(end, 1)[1].lstrip("\n")
        doc = pre + block + ("\n" + post if post else "")
    else:
        doc = doc.rstrip("\n") + f"\n\n{title}\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)


# ---- driver --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision model names")
    ap.add_argument("--variants", default=",".join(list(OUR_VARIANTS) + ["onnxsim"]),
                    help="which of our variants (and onnxsim) to run, comma-separated")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds each variant runs in the benchmark")
    ap.add_argument("--fresh", action="store_true", help="recompute models that have a cached result")
    ap.add_argument("--doc", default=str(DOC), help="markdown file to (re)write the table into")
    ap.add_argument("--no-doc", action="store_true", help="do not touch the markdown file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # one model, in a subprocess
    args = ap.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in OUR_VARIANTS and v != "onnxsim"]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(OUR_VARIANTS) + ['onnxsim']}")
    if args.min_time <= 0:
        ap.error("--min-time must be positive")
    return args


def cached_records(names: list[str]) -> list[dict]:
    out = []
    for name in names:
        p = OUT / f"{name}.json"
        if p.exists():
            out.append(json.loads(p.read_text()))
    return out


def progress_line(rec: dict) -> str:
    parts = []
    for d in rec["rows"]:
        r = Row.from_dict(d)
        if r.tool == "dense":
            parts.append(f"dense {r.p50_ms:.1f} ms")
        elif r.status != "ok":
            parts.append(f"{r.tool}: {r.status}")
        else:
            parts.append(f"{r.tool}: x{r.macs_ratio:.2f} MACs, x{r.speedup:.2f} ({r.efficiency:.2f})")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("COMPRESSOR_STRICT_RULES", "0")
    if args.worker:
        rec = run_model(args.worker, args.min_time, args.variant_list)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{args.worker}.json").write_text(json.dumps(rec, indent=1))
        return 0
    failed = []
    for i, name in enumerate(args.model_list, 1):
        cache = OUT / f"{name}.json"
        if cache.exists() and not args.fresh:
            print(f"[{i}/{len(args.model_list)}] {name}: cached ({cache.relative_to(ROOT)})", flush=True)
            continue
        print(f"[{i}/{len(args.model_list)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--worker", name, "--min-time", str(args.min_time),
               "--variants", ",".join(args.variant_list)]
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode != 0 or not cache.exists():
            failed.append(name)
            print(f"    {name}: worker failed (exit {proc.returncode})", flush=True)
            continue
        rec = json.loads(cache.read_text())
        print(f"    {time.perf_counter() - t0:.0f}s  {progress_line(rec)}", flush=True)
    if not args.no_doc:
        records = cached_records([m for m in MODELS if m in args.model_list or (OUT / f"{m}.json").exists()])
        if records:
            shown = sys.argv[1:] if argv is None else argv
            command = ".venv-zoo/bin/python tools/bench_peers.py " + " ".join(shlex.quote(a) for a in shown)
            write_block(Path(args.doc), BEGIN, END, markdown(records, command.strip()),
                        "## Peers: Torch-Pruning and onnxsim at ratio 0.5")
            print(f"wrote {args.doc} ({len(records)} models)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
