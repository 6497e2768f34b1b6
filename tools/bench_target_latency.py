"""Does ``compress --target-latency`` meet its target? Prune to fractions of the dense latency, check.

For each model (default resnet50 and mobilenet_v2, torchvision with random weights: the dense ONNX
that tools/bench_peers.py exported, else out/zoo/<model>_legacy.onnx, else exported here), each
fraction f (default 0.6 and 0.4), channel multiple (``--round-to``: ``default`` runs without one,
i.e. the engine's default for a latency target, multiples of 8 with fallbacks to 4 and 1) and
allocation (``--allocation``: ``table``, the engine's default, allocates per-group widths on the
latency table of the model's layers; ``uniform`` is ``--no-latency-table``; both by default, so the
two are compared at the same targets on the same machine):

1. measure the dense model (CPU provider, 2 threads, spinning off; ``compress bench`` in 3 fresh
   processes, the median of their p50s) and set the target T = f x dense ms;
2. prune in a fresh process exactly as the command a user would run,
   ``compress dense.onnx -o out.onnx --target-latency T --provider cpu --input-shape 1x3x224x224
   --round-to R`` (``api.prune`` with the same arguments, so that a failed search still hands
   back what it measured). The engine reads T against the dense latency it measures itself
   (``budget.reference_ms``), i.e. it aims for the ratio T / reference, and reports the ratio it
   confirmed; an unreachable or unmet target exits 2 and writes nothing;
3. check independently, in 3 fresh processes: ``compress bench dense.onnx out.onnx --threads
   <the engine's threads> --min-time C/3 --json`` (interleaved, median of the per-round ratios);
   the check ratio is the median of the three (one process alone is biased by several percent
   on small models: where its sessions' buffers land, the load while it runs).

A row is met when the checked ratio pruned/dense is within +-5% of T / reference. The raw
re-measured pruned p50 against T in absolute ms is shown beside it (it carries the load drift
between processes minutes apart).

    .venv-zoo/bin/python tools/bench_target_latency.py            # writes its table into docs/benchmarks.md
    .venv-zoo/bin/python tools/bench_target_latency.py --models mobilenet_v2 --fractions 0.5 --no-doc
    .venv-zoo/bin/python tools/bench_target_latency.py --render   # the table of the last run, no measuring
    .venv-zoo/bin/python tools/bench_target_latency.py --spinning --allocation table   # see below
    python tools/bench_target_latency.py --provider cuda --batch 32 --allocation table   # on a GPU machine

``--provider cuda|tensorrt`` runs the engine and the checks on that provider (the profile fit is
skipped there: onnxruntime's profiler does not time GPU kernels), ``--batch N`` exports and measures
the models at batch N (the GPU waits on kernel launches at batch 1). Their rows go to their own cache
(``out/peers/target_latency_cuda_b32.json``) and block of docs/benchmarks.md.

``--spinning`` runs the same protocol with onnxruntime's default thread spinning on everywhere:
``compress --target-latency T --spinning`` (the engine's table, search and confirmation in blocks),
checked by ``compress bench --spinning``; its results go to their own cache
(``out/peers/target_latency_spinning.json``) and block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "peers"
DOC = ROOT / "docs" / "benchmarks.md"
MODELS = ["resnet50", "mobilenet_v2"]
FRACTIONS = [0.6, 0.4]
THREADS = 2
TOLERANCE = 0.05
INPUT_SHAPE = "1x3x224x224"  # --batch N: Nx3x224x224
PROVIDER = "cpu"  # --provider
USED: set[str] = set()  # the providers `compress bench` reported for the dense readings


@dataclass
class Row:
    model: str
    fraction: float
    dense_ms: float  # measured by this tool just before the run
    target_ms: float  # fraction * dense_ms, given to --target-latency
    round_to: str = "1"
    allocation: str = "table"  # latency table (the default) or uniform (--no-latency-table)
    status: str = "ok"
    reference_ms: float | None = None  # the engine's own dense measurement (budget.reference_ms)
    target_ratio: float | None = None  # target_ms / reference_ms: what the engine aims for
    engine_ratio: float | None = None  # the ratio the engine confirmed (budget.ratio)
    check_ratio: float | None = None  # pruned / dense re-measured in fresh processes (median of their medians)
    check_low: float | None = None  # the lowest and highest of the per-process medians
    check_high: float | None = None
    check_rounds: int | None = None
    raw_p50_ms: float | None = None  # the pruned model's p50 in the check, against target_ms as is
    check_dense_ms: float | None = None
    macs_fraction: float | None = None
    importance_kept: float | None = None  # budget.importance_kept
    table_seconds: float | None = None  # measuring the latency table (budget.latency_table.seconds)
    threads: int | None = None
    steps: list = field(default_factory=list)
    seconds: float | None = None  # the compress command, wall clock
    note: str = ""

    @property
    def error(self) -> float | None:
        """Checked ratio against the engine's target ratio (the documented semantics)."""
        if self.check_ratio is None or not self.target_ratio:
            return None
        return self.check_ratio / self.target_ratio - 1.0

    @property
    def engine_error(self) -> float | None:
        if self.engine_ratio is None or not self.target_ratio:
            return None
        return self.engine_ratio / self.target_ratio - 1.0

    @property
    def raw_error(self) -> float | None:
        return None if self.raw_p50_ms is None else self.raw_p50_ms / self.target_ms - 1.0

    @property
    def met(self) -> bool:
        return self.status == "ok" and self.error is not None and abs(self.error) <= TOLERANCE


def dense_path(name: str, batch: int = 1) -> Path:
    """The dense ONNX at batch 1 (bench_peers' or the zoo's export), or exported at ``batch`` here
    (torchvision's exports have a static batch dimension)."""
    candidates = ([OUT / name / "dense.onnx", ROOT / "out" / "zoo" / f"{name}_legacy.onnx"] if batch == 1
                  else [OUT / name / f"dense_b{batch}.onnx"])
    for p in candidates:
        if p.exists():
            return p
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_peers  # needs torchvision: the zoo venv
    import zoo_coverage

    p = candidates[0]
    p.parent.mkdir(parents=True, exist_ok=True)
    x = zoo_coverage.example_input(name)
    bench_peers.export_onnx(zoo_coverage.build_model(name), x.expand(batch, *x.shape[1:]).contiguous()
                            if batch != 1 else x, p)
    return p


def _compress(*args: str) -> subprocess.CompletedProcess:
    """The `compress` command in a fresh process of this interpreter."""
    return subprocess.run([sys.executable, "-m", "compressor.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "COMPRESSOR_STRICT_RULES": "0"})


SPINNING = False  # --spinning: onnxruntime's default thread spinning in the engine and the check


def prune_in_fresh_process(dense: Path, out: Path, target_ms: float | None, round_to: str, allocation: str,
                           target_speedup: float | None = None, latency_tolerance: float = 0.05,
                           profile_table: bool = True) -> dict:
    """What `compress DENSE -o OUT --target-latency T --provider cpu --input-shape 1x3x224x224
    --round-to R` does (the CLI is a thin layer over api.prune), in a fresh process, returning the
    report, or the error with the search's measurements (which the CLI's one error line omits)."""
    job = {"dense": str(dense), "out": str(out), "target_ms": target_ms, "target_speedup": target_speedup,
           "round_to": round_to, "latency_tolerance": latency_tolerance,
           "latency_table": allocation != "uniform", "keep_macs": allocation.startswith("keep-macs"),
           "drop_layers": allocation.endswith("+drop"), "spinning": SPINNING, "profile_table": profile_table,
           "provider": PROVIDER, "input_shape": INPUT_SHAPE}
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "COMPRESSOR_STRICT_RULES": "0"})
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"ok": False, "exit_code": res.returncode, "error": res.stderr.strip()[-400:] or "no output"}
    return json.loads(lines[-1])


def worker(job: dict) -> None:
    from compressor import api
    from compressor.errors import CompressorError

    rt = job["round_to"]
    try:
        round_to = None if rt == "default" else rt if rt == "auto" else int(rt)  # default: no --round-to
        rep = api.prune(job["dense"], output=job["out"], target_latency=job["target_ms"],
                        target_speedup=job.get("target_speedup"), provider=job.get("provider", "cpu"),
                        latency_tolerance=job.get("latency_tolerance", 0.05),
                        input_shapes=[job.get("input_shape", INPUT_SHAPE)], round_to=round_to,
                        latency_table=job.get("latency_table", True), spinning=job.get("spinning", False),
                        keep_macs=job.get("keep_macs", False), drop_layers=job.get("drop_layers", False),
                        profile_table=job.get("profile_table", True)).report
        print(json.dumps({"ok": True, "report": rep}))
    except CompressorError as exc:  # what the CLI turns into one line and its exit code
        print(json.dumps({"ok": False, "exit_code": exc.exit_code, "error": f"error: {exc}",
                          "budget": getattr(exc, "budget", None)}))


def check(dense: Path, pruned: Path, threads: int, check_time: float, processes: int = 3) -> dict:
    """pruned / dense re-measured by `compress bench` (interleaved) in ``processes`` fresh processes
    of ``check_time / processes`` seconds per model each: the median of their per-round-ratio
    medians. One process alone carries a session/load bias of several percent on small models."""
    per = []
    for _ in range(processes):
        res = _compress("bench", str(dense), str(pruned), "--threads", str(threads),
                        "--min-time", f"{check_time / processes:g}", "--warmup", "20", "--input-shape", INPUT_SHAPE,
                        "--provider", PROVIDER, "--json", "-q", *(["--spinning"] if SPINNING else []))
        if res.returncode != 0:
            raise RuntimeError(f"compress bench failed: {res.stderr.strip()[-300:]}")
        d, p = json.loads(res.stdout)["results"]
        per.append({"ratio": 1 / p["ratio_to_first"]["median"], "rounds": p["runs"], "pruned_p50": p["p50_ms"],
                    "dense_p50": d["p50_ms"]})
    med = sorted(per, key=lambda x: x["ratio"])[len(per) // 2]
    return {"ratio": med["ratio"], "low": min(x["ratio"] for x in per), "high": max(x["ratio"] for x in per),
            "rounds": sum(x["rounds"] for x in per), "pruned_p50": med["pruned_p50"], "dense_p50": med["dense_p50"],
            "per_process": [round(x["ratio"], 4) for x in per]}


def run(name: str, fractions: list[float], min_time: float, round_tos: list[str], check_time: float,
        allocations: list[str], batch: int = 1) -> list[Row]:
    dense = dense_path(name, batch)

    def dense_ms() -> float:
        """The dense model's p50, the median of 3 fresh processes (`compress bench`): a reading in
        this long-lived process drifted by up to 50% on mobilenet_v2 (2026-11-30 07:28 run)."""
        reads = []
        for _ in range(3):
            res = _compress("bench", str(dense), "--threads", str(THREADS), "--min-time", f"{min_time / 3:g}",
                            "--warmup", "20", "--input-shape", INPUT_SHAPE, "--json", "-q",
                            "--provider", PROVIDER, *(["--spinning"] if SPINNING else []))
            if res.returncode != 0:
                raise RuntimeError(f"compress bench failed: {res.stderr.strip()[-300:]}")
            first = json.loads(res.stdout)["results"][0]
            reads.append(first["p50_ms"])
            USED.add(first["provider"])
        return sorted(reads)[1]

    rows = []
    for f, rt, al in [(f, rt, al) for rt in round_tos for f in fractions for al in allocations]:
        base = dense_ms()  # just before each run: the machine's load drifts over minutes
        row = Row(model=name, fraction=f, dense_ms=base, target_ms=round(f * base, 3), round_to=rt, allocation=al)
        out = OUT / name / f"target_latency_{f:g}_r{rt}_{al}{'_spinning' if SPINNING else ''}{_variant()}.onnx"
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        res = prune_in_fresh_process(dense, out, row.target_ms, rt, al)
        row.seconds = time.perf_counter() - t0
        if not res["ok"]:
            row.status = f"exit {res['exit_code']}"
            row.note = " ".join(res["error"].split())[:400]
            b = res.get("budget") or {}
            row.reference_ms, row.target_ratio = b.get("reference_ms"), b.get("target_ratio", _ratio_in(row.note))
            row.steps = b.get("steps", [])
            rows.append(row)
            print(f"  {name} x{f:g} round-to {rt} {al}: {row.status}: {row.note}", flush=True)
            continue
        rep = res["report"]
        b = rep["budget"]
        row.reference_ms, row.target_ratio, row.engine_ratio = b["reference_ms"], b["target_ratio"], b["ratio"]
        row.threads, row.steps = b.get("threads", THREADS), b["steps"]
        row.macs_fraction = rep["macs_after"] / rep["macs_before"]
        row.importance_kept = b.get("importance_kept")
        row.table_seconds = (b.get("latency_table") or {}).get("seconds")
        if rt == "default":  # the multiple the engine used: its default, or 1 after a fallback
            fb = b.get("fallback")
            row.round_to = f"default: {rep['options']['round_to']}" + (
                f" (after {', '.join(str(f['round_to']) for f in fb)} missed)" if fb else "")
        c = check(dense, out, row.threads, check_time)
        row.check_ratio, row.check_low, row.check_high, row.check_rounds = c["ratio"], c["low"], c["high"], c["rounds"]
        row.raw_p50_ms, row.check_dense_ms = c["pruned_p50"], c["dense_p50"]
        rows.append(row)
        print(f"  {name} x{f:g} round-to {rt} {al}: target {row.target_ms:.2f} ms = {row.target_ratio:.3f} x engine ref "
              f"{row.reference_ms:.2f} ms; engine {row.engine_ratio:.3f} ({row.engine_error:+.1%}), check "
              f"{row.check_ratio:.3f} ({row.error:+.1%}); raw p50 {row.raw_p50_ms:.2f} ms ({row.raw_error:+.1%}); "
              f"MACs {row.macs_fraction:.3f}, importance kept {_f(row.importance_kept, '.3f')}, "
              f"{len(row.steps)} measurements, {row.seconds:.0f}s", flush=True)
    return rows


def _provider_used() -> str:
    """The provider(s) the dense readings' `compress bench` really ran on (it falls back, saying so)."""
    names = sorted(name.removesuffix("ExecutionProvider") for name in USED)
    return f"{' and '.join(names)} provider" if names else f"provider {PROVIDER} (nothing measured)"


def _gpu_name() -> str | None:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None


def _ratio_in(message: str) -> float | None:
    """The target ratio an engine error message states ('ratio 0.444 to the dense model's ...')."""
    import re

    m = re.search(r"ratio ([0-9.]+) to the dense", message)
    return float(m.group(1)) if m else None


def _f(v, spec):
    return "–" if v is None else format(v, spec)


def _steps(r: Row) -> str:
    """MACs fraction (with a latency table: predicted fraction) → measured ratio of every measurement
    the engine made (c: a confirmation)."""
    if not r.steps:
        return "–"
    return f"{len(r.steps)}: " + ", ".join(
        f"{x.get('predicted_fraction', x['macs_fraction']):.3f}→{x['ratio']:.3f}{'c' if x.get('role') == 'confirm' else ''}" for x in r.steps)


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        "<!-- generated by tools/bench_target_latency.py -->",
        f"Generated by `{meta['command']}` on {meta['date']}; onnxruntime {meta['onnxruntime']}, "
        f"{meta.get('provider_used', 'CPU provider')}, "
        + (f"{THREADS} threads, spinning {'on (models in blocks)' if meta.get('spinning') else 'off'}, "
           if not meta.get("gpu") else "IO binding, ") +
        f"batch {meta.get('batch', 1)}{', on ' + meta['gpu'] if meta.get('gpu') else ''}, "
        "torchvision weights random; load (1-min) "
        f"{meta['load_before']:.1f} → {meta['load_after']:.1f}.",
        "",
        "- dense ms: measured by the tool just before the run (the median p50 of 3 fresh `compress bench` "
        "processes since 2026-11-30 08:00; before, in the tool's own process); target ms = × dense × dense ms, "
        "passed to `compress --target-latency`.",
        "- engine ref ms: the dense latency the engine measured itself (`budget.reference_ms`); target ratio = "
        "target ms / engine ref. engine ratio: the pruned/dense ratio the engine confirmed before accepting "
        "(`budget.ratio`, its error against the target ratio in brackets).",
        f"- check ratio: pruned/dense re-measured by `compress bench{' --spinning' if meta.get('spinning') else ''}` "
        "(interleaved, median of the per-round ratios) "
        f"in 3 fresh processes of {meta.get('check_time', 15) / 3:g} s per model each: the median of the three, their "
        "range in brackets; **error** = "
        "check ratio / target ratio − 1, the column the goal (±5%) is judged on. raw: the check's pruned p50 "
        "against the target in absolute ms (includes the load drift between processes).",
        "- allocation: `keep-macs` = the table allocated by the MACs each step removes per ms saved (`--keep-macs`); "
        "`+drop`: with `--drop-layers` (the allocation may also remove groups whole); "
        "`table` = per-group widths allocated on the latency table of the model's layers (the "
        "default; its cost is each group's sensitivity on random inputs, the default since 2026-11-30 05:00; "
        "table s = seconds spent measuring the table), `uniform` = `--no-latency-table` (uniform ratios "
        "searched by MACs). importance kept: share of the channels' importance (each over its group's mean) "
        "that the plan keeps (`budget.importance_kept`).",
        "- measurements: knob → measured ratio of every measurement the engine made (`c`: confirmation); the "
        "knob is the table's predicted latency fraction for `table`, the MACs fraction for `uniform`.",
        "",
        "| model | round-to | allocation | × dense | dense ms | target ms | engine ref ms | target ratio | engine ratio | "
        "check ratio [range] | error | raw p50 ms (error) | MACs | importance kept | measurements | table s | "
        "seconds | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = (f"| {r.model} | {r.round_to} | {r.allocation} | {r.fraction:g} | {r.dense_ms:.2f} | {r.target_ms:.2f} | "
                f"{_f(r.reference_ms, '.2f')} | {_f(r.target_ratio, '.3f')} ")
        if r.status != "ok":
            lines.append(head + f"| – | – | – | – | – | – | {_steps(r)} | {_f(r.table_seconds, '.0f')} | "
                         f"{_f(r.seconds, '.0f')} | ✗ {r.status}: {r.note} |")
            continue
        lines.append(head + f"| {r.engine_ratio:.3f} ({r.engine_error:+.1%}) | {r.check_ratio:.3f} "
                     f"[{r.check_low:.3f}–{r.check_high:.3f}] | **{r.error:+.1%}** | {r.raw_p50_ms:.2f} "
                     f"({r.raw_error:+.1%}) | {r.macs_fraction:.3f} | {_f(r.importance_kept, '.3f')} | {_steps(r)} | "
                     f"{_f(r.table_seconds, '.0f')} | {r.seconds:.0f} | "
                     f"{'✓' if r.met else '✗'} |")
    ok = sum(1 for r in rows if r.met)
    raw_ok = sum(1 for r in rows if r.status == "ok" and abs(r.raw_error) <= TOLERANCE)
    lines += ["", f"{ok}/{len(rows)} targets met within ±{TOLERANCE:.0%} (checked ratio against target / engine "
              f"reference); {raw_ok}/{len(rows)} by the raw re-measured p50 against the absolute target."]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- target-latency:begin -->", "<!-- target-latency:end -->"
SPIN_BEGIN, SPIN_END = "<!-- target-latency-spinning:begin -->", "<!-- target-latency-spinning:end -->"
GPU_BEGIN, GPU_END = "<!-- target-latency-gpu:begin -->", "<!-- target-latency-gpu:end -->"


def _variant() -> str:
    """The file-name suffix of a non-default provider or batch."""
    batch = INPUT_SHAPE.split("x")[0]
    return (f"_{PROVIDER}" if PROVIDER != "cpu" else "") + (f"_b{batch}" if batch != "1" else "")


def cache_path() -> Path:
    return OUT / (f"target_latency{'_spinning' if SPINNING else ''}{_variant()}.json")


def write_doc(path: Path, text: str) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_peers import write_block

    if PROVIDER != "cpu":
        write_block(path, GPU_BEGIN, GPU_END, text, f"## `--target-latency` on the {PROVIDER.upper()} provider")
    elif SPINNING:
        write_block(path, SPIN_BEGIN, SPIN_END, text,
                    "## `--target-latency --spinning` (onnxruntime's default threading) on the CPU provider")
    else:
        write_block(path, BEGIN, END, text, "## `--target-latency` on the CPU provider")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS),
                    help="targets as fractions of the dense latency")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per model in each measurement")
    ap.add_argument("--round-to", default="default", help="channel multiples to run the search with: 'default' "
                    "(no --round-to: the engine's default for --target-latency, 8 with fallbacks to 4 and 1), 1, 8, auto")
    ap.add_argument("--allocation", default="table,uniform",
                    help="'table' (the default: widths allocated on the layer latency table by sensitivity), "
                    "'keep-macs' (the table, allocated by MACs: --keep-macs), 'uniform' (--no-latency-table), "
                    "'table+drop' / 'keep-macs+drop' (with --drop-layers); "
                    "comma-separated")
    ap.add_argument("--check-time", type=float, default=15.0,
                    help="seconds per model in the fresh-process check (compress bench --min-time)")
    ap.add_argument("--spinning", action="store_true",
                    help="onnxruntime's default thread spinning in the engine (compress --spinning) and the check")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                    help="where the engine measures and the check re-measures (cuda/tensorrt need a GPU; "
                    "their rows go to their own cache and block of the doc)")
    ap.add_argument("--batch", type=int, default=1, help="batch size of the input (models exported at it)")
    ap.add_argument("--doc", default=str(DOC))
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # one prune, in a fresh process
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: write the table from the last run (out/peers/target_latency.json)")
    args = ap.parse_args(argv)
    global SPINNING, PROVIDER, INPUT_SHAPE
    SPINNING, PROVIDER = args.spinning, args.provider
    if args.batch < 1:
        ap.error("--batch must be positive")
    INPUT_SHAPE = f"{args.batch}x3x224x224"
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.render:
        data = json.loads(cache_path().read_text())
        rows = [Row(**r) for r in data["rows"]]
        write_doc(Path(args.doc), markdown(rows, data["meta"]))
        return 0
    try:
        fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    except ValueError:
        ap.error(f"--fractions must be numbers like 0.6,0.4, got {args.fractions!r}")
    if not fractions or not all(0 < f < 1 for f in fractions):
        ap.error("--fractions must be in (0, 1)")
    round_tos = [r.strip() for r in args.round_to.split(",") if r.strip()]
    if not round_tos or not all(r in ("auto", "default") or (r.isdigit() and int(r) > 0) for r in round_tos):
        ap.error(f"--round-to must be positive integers, 'auto' or 'default', got {args.round_to!r}")
    allocations = [a.strip() for a in args.allocation.split(",") if a.strip()]
    known = ("table", "uniform", "keep-macs", "table+drop", "keep-macs+drop")
    if not allocations or not all(a in known for a in allocations):
        ap.error(f"--allocation must be among {', '.join(known)}, got {args.allocation!r}")
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_peers import run_meta

    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    for i, name in enumerate(m.strip() for m in args.models.split(",") if m.strip()):
        print(f"[{i + 1}] {name}", flush=True)
        rows += run(name, fractions, args.min_time, round_tos, args.check_time, allocations, args.batch)
    meta = run_meta("bench_target_latency.py", argv, load_before, check_time=args.check_time, spinning=SPINNING)
    meta.update(batch=args.batch, provider_used=_provider_used(), gpu=_gpu_name() if PROVIDER != "cpu" else None)
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.no_doc:  # the cache is what --render writes the doc block from: only the doc's run
        cache_path().write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    text = markdown(rows, meta)
    print(text)
    if not args.no_doc:
        write_doc(Path(args.doc), text)
    return 0 if all(r.met for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
