"""Efficiency at the uniform ratio under onnxruntime's threading settings (goal 2 of bench_peers).

tools/bench_peers.py measures with 2 intra-op threads and thread spinning off, so that variants can
alternate run by run without slowing each other down. Spinning off has a price that does not
scale with MACs: at every kernel the worker thread sleeps and has to be woken. A pruned model runs
the same kernels as the dense one, each a quarter of the work at ratio 0.5, so that fixed cost is
a larger share of its time and its efficiency (speedup / MACs ratio) is lower. This tool measures
the same files under several settings to show where the efficiency goes:

* ``1:off``  one thread (nothing to wake);
* ``2:off``  bench_peers' setting: 2 threads, spinning off, variants alternating run by run;
* ``2:off:block``  the same, but the variants timed in alternating blocks (``compress bench
             --interleave block``), ratios from the blocks' medians: each model runs back to back
             as when it is served alone (this separates the effect of alternating with the dense
             model, e.g. on the CPU caches, from that of spinning);
* ``2:on``   onnxruntime's default (the worker spins between kernels), in blocks (``compress
             bench --spinning``).

It takes the dense, ``--ratio 0.5`` and Torch-Pruning files that bench_peers wrote to
``out/peers/<model>/`` (run that first), so the files are the ones of the peers table. Every
setting is measured ``--repeats`` times, the settings in turn, and the median of the repeats'
median speedups is shown with their min–max.

    .venv/bin/python tools/bench_threading.py                 # writes its table into docs/benchmarks.md
    .venv/bin/python tools/bench_threading.py --models resnet18 --repeats 1 --no-doc
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_peers  # noqa: E402  (stdlib-only at import time)

OUT = bench_peers.OUT
DOC = bench_peers.DOC
CACHE = OUT / "threading.json"
BEGIN, END = "<!-- threading:begin -->", "<!-- threading:end -->"
SETTINGS = ["1:off", "1:off:block", "2:off", "2:off:block", "2:on"]
VARIANTS = {"ours r0.5": "ours_r0.5.onnx", "torch-pruning": "torch_pruning.onnx"}
GOAL = 0.95


def parse_setting(text: str) -> tuple[int, bool, str]:
    """'2:off' -> (2, False, 'run'); '2:on' -> (2, True, 'block'); '2:off:block' -> (2, False, 'block')."""
    parts = text.split(":")
    if len(parts) == 2:
        parts.append("block" if parts[1] == "on" else "run")
    ok = (len(parts) == 3 and parts[0].isdigit() and int(parts[0]) >= 1 and parts[1] in ("on", "off")
          and parts[2] in ("run", "block") and not (parts[1] == "on" and parts[2] == "run"))
    if not ok:
        raise argparse.ArgumentTypeError(f"setting {text!r}: expected THREADS:on|off[:run|block], e.g. "
                                         "2:off or 2:off:block (spinning on needs blocks)")
    return int(parts[0]), parts[1] == "on", parts[2]


def files_for(model: str) -> dict[str, Path]:
    folder = OUT / model
    files = {"dense": folder / "dense.onnx"}
    files.update({label: folder / name for label, name in VARIANTS.items()})
    missing = [str(p.relative_to(ROOT)) for label, p in files.items()
               if not p.exists() and label != "torch-pruning"]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} missing; run "
                         f"`.venv-zoo/bin/python tools/bench_peers.py --models {model}` first")
    return {label: p for label, p in files.items() if p.exists()}


def measure(files: dict[str, Path], setting: str, min_time: float) -> dict:
    from compressor.bench import benchmark

    threads, spinning, interleave = parse_setting(setting)
    labels = list(files)
    res = benchmark([str(files[k]) for k in labels], threads=threads, min_time=min_time,
                    spinning=spinning, interleave=interleave, progress=False, log=None)
    out = {"interleave": res.interleave}
    for label, r in zip(labels, res.results):
        out[label] = {"p50_ms": r.stats.p50_ms, "runs": r.stats.runs,
                      "speedup": r.ratio_to_first.median if r.ratio_to_first else 1.0,
                      "p10": r.ratio_to_first.p10 if r.ratio_to_first else 1.0,
                      "p90": r.ratio_to_first.p90 if r.ratio_to_first else 1.0}
    return out


def run(models: list[str], settings: list[str], repeats: int, min_time: float) -> dict:
    from compressor.bench import session as bench_session

    records = {}
    for model in models:
        files = files_for(model)
        macs = {label: bench_peers.onnx_cost(p)[0] for label, p in files.items()}
        rec = {"model": model, "macs_ratio": {k: macs["dense"] / v for k, v in macs.items()},
               "settings": {s: [] for s in settings}}
        for rep in range(repeats):
            for s in settings:
                m = measure(files, s, min_time)
                rec["settings"][s].append(m)
                ours = m["ours r0.5"]
                print(f"{model} [{rep + 1}/{repeats}] {s}: dense {m['dense']['p50_ms']:.2f} ms, ours "
                      f"{ours['p50_ms']:.3f} ms, x{ours['speedup']:.2f} "
                      f"(eff {ours['speedup'] / rec['macs_ratio']['ours r0.5']:.2f})", flush=True)
        records[model] = rec
    return {"date": _dt.date.today().isoformat(), "onnxruntime": _ort_version(),
            "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "min_time": min_time, "repeats": repeats, "settings": settings,
            "default_threads": bench_session.default_threads(), "records": records}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def summarize(rec: dict, setting: str, label: str) -> dict | None:
    runs = [m[label] for m in rec["settings"][setting] if label in m]
    if not runs:
        return None
    speedups = [r["speedup"] for r in runs]
    med = statistics.median(speedups)
    return {"speedup": med, "lo": min(speedups), "hi": max(speedups),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "efficiency": med / rec["macs_ratio"][label]}


def markdown(data: dict, command: str) -> str:
    lines = [
        "<!-- generated by tools/bench_threading.py; edit the text outside this block by hand -->",
        f"Generated by `{command}` on {data['date']} (onnxruntime {data['onnxruntime']}, {data['cpu']}, "
        f"{data['cores']} cores; batch 1, 224×224; the files of the peers table above).",
        "",
        "- Settings: `T:off` = T intra-op threads, spinning off, variants alternating run by run (the "
        "peers table's setting is `2:off`); `T:off:block` = the same in alternating blocks (`compress "
        "bench --interleave block`: each variant runs back to back, as when served alone), speedup "
        "from the blocks' medians; `T:on` = onnxruntime's default "
        "spinning, in blocks (`compress bench --spinning`).",
        f"- Each setting measured {data['repeats']}× (settings in turn, min {data['min_time']:g} s per "
        "variant each time): speedup = median of the repeats' median per-round speedups (min–max over "
        "repeats); efficiency = speedup / MACs ratio.",
        "",
    ]
    head = ["model", "setting", "dense p50 ms", "ours p50 ms", "MACs ratio", "ours speedup",
            "ours efficiency", "TP speedup", "TP efficiency", f"≥ {GOAL}"]
    body = []
    for model, rec in data["records"].items():
        for s in data["settings"]:
            d = summarize(rec, s, "dense")
            o = summarize(rec, s, "ours r0.5")
            t = summarize(rec, s, "torch-pruning")
            if o is None:
                continue
            body.append([
                model, f"`{s}`", f"{d['p50_ms']:.2f}", f"{o['p50_ms']:.2f}",
                f"{rec['macs_ratio']['ours r0.5']:.2f}",
                f"{o['speedup']:.2f} ({o['lo']:.2f}–{o['hi']:.2f})", f"{o['efficiency']:.2f}",
                f"{t['speedup']:.2f} ({t['lo']:.2f}–{t['hi']:.2f})" if t else "–",
                f"{t['efficiency']:.2f}" if t else "–",
                "✓" if o["efficiency"] >= GOAL else "✗",
            ])
    lines += bench_peers._table(head, body) + [""]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(bench_peers.PLAIN_CNNS))
    ap.add_argument("--settings", default=",".join(SETTINGS), help="THREADS:on|off, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=4.0, help="seconds per variant per measurement")
    ap.add_argument("--doc", default=str(DOC))
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--render", action="store_true", help="re-render the last run's table, no measuring")
    args = ap.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.setting_list = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in args.setting_list:
        try:
            parse_setting(s)
        except argparse.ArgumentTypeError as exc:
            ap.error(str(exc))
    if args.repeats < 1 or args.min_time <= 0:
        ap.error("--repeats must be >= 1 and --min-time positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        if not CACHE.exists():
            raise SystemExit(f"error: no cached run ({CACHE.relative_to(ROOT)}); run without --render")
        data = json.loads(CACHE.read_text())
        command = data.get("command", "tools/bench_threading.py")
    else:
        data = run(args.model_list, args.setting_list, args.repeats, args.min_time)
        shown = sys.argv[1:] if argv is None else argv
        command = (".venv/bin/python tools/bench_threading.py " + " ".join(shlex.quote(a) for a in shown)).strip()
        data["command"] = command
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(data, indent=1))
    text = markdown(data, command)
    print(text)
    if not args.no_doc:
        bench_peers.write_block(Path(args.doc), BEGIN, END, text,
                                "## Efficiency and onnxruntime's threading (goal 2)")
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
