"""How the engine scales: time per stage and peak memory for pruning one real-size model.

Stages: load (read + fold constants) -> analyze (shapes, groups) -> plan (importance + plan) ->
surgery (slice weights, rewrite shapes, re-infer and check) -> verify (masked original vs pruned,
onnxruntime) -> save. Each model runs in a fresh subprocess so that its peak resident memory
(ru_maxrss) is its own; the RSS after imports is reported too, so the model's share is visible.

    python tools/bench_scale.py out/zoo/resnet50_dynamo.onnx out/zoo/vit_b_16_dynamo.onnx
    python tools/bench_scale.py --markdown docs/coverage.md --repeat 3 MODEL.onnx ...   # fastest of 3
    python tools/bench_scale.py --profile out/prof.txt MODEL.onnx   # cProfile of one run

``--time-prune N`` times ``api.prune(MODEL, output=...)`` end to end instead (load -> verified
save, as tools/bench_peers.py's "prune s"), each in a fresh process, N rounds; with
``--torch-pruning NAME`` every round first times Torch-Pruning on torchvision NAME exactly as
bench_peers does (dense export first, then dependency graph + ``step()``, then the ONNX export),
in the zoo venv, so that both see the same machine load:

    python tools/bench_scale.py --time-prune 5 --torch-pruning resnet50 out/peers/resnet50/dense.onnx

The exported models come from ``tools/zoo_coverage.py`` (its cache, ``out/zoo/``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = [ROOT / "out" / "zoo" / "resnet50_dynamo.onnx", ROOT / "out" / "zoo" / "vit_b_16_dynamo.onnx"]
#: Targets from the coverage issue: seconds for the whole pipeline and peak memory / model size.
TARGET_SECONDS = {"resnet50": 3.0, "vit_b_16": 15.0}
TARGET_MEMORY_FACTOR = 3.0


def _model_bytes(path) -> int:
    """The model file and its external-data files (the .onnx of such a model is a few hundred bytes;
    a large file holds its weights itself and is not parsed here: that would raise the peak RSS)."""
    import onnx

    from compressor.ir.model_io import external_data_files

    if os.path.getsize(path) > 64 * 2**20:
        return os.path.getsize(path)
    files = external_data_files(onnx.load(str(path), load_external_data=False), Path(path).parent)
    return os.path.getsize(path) + sum(os.path.getsize(f) for f in files if os.path.exists(f))


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_one(path: str, ratio: float, profile: str | None = None) -> dict:
    """The pipeline of ``api.prune`` stage by stage, in this process."""
    from compressor import api
    from compressor.analysis.groups import analyze_index
    from compressor.importance import score_groups
    from compressor.ir.fold import prepare
    from compressor.ir.graph import GraphIndex
    from compressor.ir.model_io import load_model, save_model
    from compressor.ir.proto import detach_weights
    from compressor.planning import PlanOptions, make_plan
    from compressor.surgery import apply_plan
    from compressor.surgery.finalize import finalize
    from compressor.verify import masked_reference, verify

    import onnxruntime  # noqa: F401  (count its import in the baseline, not in a stage)

    base_rss = _rss_mib()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t: dict[str, float] = {}
    peaks: dict[str, float] = {}
    t0 = time.perf_counter()
    proto, _ = prepare(load_model(path), inplace=True)
    t["load"] = time.perf_counter() - t0
    peaks["load"] = _rss_mib()

    t0 = time.perf_counter()
    spec = api._spec(proto, None)
    proto, detached = detach_weights(proto)  # as api.prune does with a model it loaded itself
    index = GraphIndex(proto, spec, detached)
    del detached
    an = analyze_index(index)
    t["analyze"] = time.perf_counter() - t0
    peaks["analyze"] = _rss_mib()

    t0 = time.perf_counter()
    opts = PlanOptions(ratio=ratio)
    plan = make_plan(an, score_groups(an, "l2", seed=0), opts)
    t["plan"] = time.perf_counter() - t0
    peaks["plan"] = _rss_mib()

    t0 = time.perf_counter()
    surgery = apply_plan(an, plan.keep)
    pruned = surgery.model
    pruned = finalize(pruned, what="pruned")
    t["surgery"] = time.perf_counter() - t0
    peaks["surgery"] = _rss_mib()

    t0 = time.perf_counter()
    reference = masked_reference(an, plan.keep)  # as api.prune: shares the index's weight arrays
    reference.model.ir_version = pruned.ir_version
    ver = verify(reference, pruned, spec)
    del reference
    index.release_values()
    t["verify"] = time.perf_counter() - t0
    peaks["verify"] = _rss_mib()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(pruned, Path(tmp) / "pruned.onnx")
    t["save"] = time.perf_counter() - t0
    peaks["save"] = _rss_mib()
    if prof is not None:
        import pstats

        prof.disable()
        with open(profile, "w") as fh:
            pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(60)
    size_mib = _model_bytes(path) / 2**20
    peak = _rss_mib()
    return {
        "model": Path(path).stem, "path": str(path), "size_mib": round(size_mib, 1),
        "nodes": len(index.nodes), "groups": len(an.groups), "prunable": len(an.prunable),
        "seconds": {k: round(v, 3) for k, v in t.items()}, "total_s": round(sum(t.values()), 3),
        "rss_base_mib": round(base_rss, 1), "rss_peak_mib": round(peak, 1),
        "model_peak_mib": round(peak - base_rss, 1),
        "peak_after_mib": {k: round(v - base_rss, 1) for k, v in peaks.items()},
        "memory_factor": round((peak - base_rss) / size_mib, 2) if size_mib else None,
        "verify_passed": ver.passed, "max_rel_err": ver.max_rel_err,
    }


def run_subprocess(path: str, ratio: float, profile: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--ratio", str(ratio), str(path)]
    if profile:
        cmd += ["--profile", profile]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"model": Path(path).stem, "path": str(path), "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


ZOO_PYTHON = ROOT / ".venv-zoo" / "bin" / "python"

_TIME_OURS = """
import json, sys, time
from compressor import api
import onnxruntime
t0 = time.perf_counter()
rep = api.prune(sys.argv[1], output=sys.argv[2], ratio=float(sys.argv[3]), provider="cpu").report
print(json.dumps({"seconds": time.perf_counter() - t0, "passed": rep["verify"]["passed"]}))
"""

_TIME_TP = """
import copy, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
import bench_peers as bp
torch.set_num_threads(bp.THREADS)
zoo = bp._zoo()
model, x = zoo.build_model(sys.argv[2]), zoo.example_input(sys.argv[2])
out = Path(sys.argv[3])
bp.export_onnx(copy.deepcopy(model), x, out / "dense.onnx")  # run_model exports the dense model first
row = bp.run_torch_pruning(sys.argv[2], model, x, out / "torch_pruning.onnx")
print(json.dumps({"prune_s": row.prune_s, "export_s": row.export_s, "status": row.status, "note": row.note}))
"""


def _last_json(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_prune(path: str, ratio: float, rounds: int, torch_pruning: str | None) -> int:
    """Interleaved end-to-end timings: ours (and Torch-Pruning's), one fresh process each."""
    import statistics

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    ours_python = str(ZOO_PYTHON) if torch_pruning and ZOO_PYTHON.exists() else sys.executable
    ours, tp = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            load = os.getloadavg()[0]
            line = f"round {r + 1}/{rounds} (load {load:.1f}):"
            if torch_pruning:
                res = _last_json([str(ZOO_PYTHON), "-c", _TIME_TP, str(ROOT / "tools"), torch_pruning, tmp], env)
                if res["status"] != "ok":
                    raise SystemExit(f"Torch-Pruning failed: {res['note']}")
                tp.append(res["prune_s"] + res["export_s"])
                line += f" Torch-Pruning {res['prune_s']:.2f} + export {res['export_s']:.2f} = {tp[-1]:.2f}s |"
            res = _last_json([ours_python, "-c", _TIME_OURS, path, str(Path(tmp) / "ours.onnx"), str(ratio)], env)
            if not res["passed"]:
                raise SystemExit("our pruned model failed verification")
            ours.append(res["seconds"])
            print(f"{line} ours {ours[-1]:.2f}s", flush=True)
    summary = f"ours: median {statistics.median(ours):.2f}s (min {min(ours):.2f}, max {max(ours):.2f})"
    if tp:
        summary += (f" | Torch-Pruning graph+prune+export: median {statistics.median(tp):.2f}s "
                    f"(min {min(tp):.2f}, max {max(tp):.2f}) | ours faster in {sum(o < t for o, t in zip(ours, tp))}"
                    f"/{rounds} rounds")
    print(summary)
    return 0


def target_for(name: str) -> float | None:
    for key, val in TARGET_SECONDS.items():
        if name.startswith(key):
            return val
    return None


def markdown(results: list[dict], command: str, load: tuple[float, float] | None = None) -> str:
    stages = ["load", "analyze", "plan", "surgery", "verify", "save"]
    head = ["model", "size MiB", "nodes"] + [f"{s} s" for s in stages] + [
        "total s", "target s", "peak RSS - base MiB", "x model size", "peak after load/surgery/verify MiB", "verify"]
    where = (f" ({os.cpu_count()} cores, 1-min load average {load[0]:.1f} before, {load[1]:.1f} after)"
             if load else "")
    lines = [f"Generated by `{command}`{where}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {' '.join(r['error'])} |")
            continue
        tgt = target_for(r["model"])
        cells = [r["model"], f"{r['size_mib']:.0f}", str(r["nodes"])]
        cells += [f"{r['seconds'][s]:.2f}" for s in stages]
        cells += [f"{r['total_s']:.2f}", "" if tgt is None else f"{tgt:g}",
                  f"{r['model_peak_mib']:.0f} (base {r['rss_base_mib']:.0f})", f"{r['memory_factor']:.2f}",
                  " / ".join(f"{r['peak_after_mib'][k]:.0f}" for k in ("load", "surgery", "verify")),
                  "pass" if r["verify_passed"] else f"FAIL {r['max_rel_err']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- scale-table:begin -->", "<!-- scale-table:end -->"


def write_markdown(path: Path, table: str) -> None:
    block = f"{BEGIN}\n{table}{END}\n"
    text = path.read_text() if path.exists() else "# Coverage\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        text = pre + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="ONNX files (default: resnet50 and vit_b_16 from out/zoo/)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--markdown", help="write the table into this markdown file")
    ap.add_argument("--profile", help="write a cProfile listing (cumulative) of the run here")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run each model N times (fresh processes) and report the fastest run")
    ap.add_argument("--time-prune", type=int, metavar="N",
                    help="time api.prune end to end (load -> verified save), N rounds, instead of the stages")
    ap.add_argument("--torch-pruning", metavar="NAME",
                    help="with --time-prune: also time Torch-Pruning on torchvision NAME each round (zoo venv)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.models[0], args.ratio, args.profile)))
        return 0
    if args.time_prune:
        if len(args.models) != 1:
            ap.error("--time-prune takes one model")
        return time_prune(args.models[0], args.ratio, args.time_prune, args.torch_pruning)
    models = args.models or [str(p) for p in DEFAULT_MODELS]
    missing = [m for m in models if not Path(m).exists()]
    if missing:
        print(f"missing model file(s) {missing}: export them first, e.g. "
              f".venv-zoo/bin/python tools/zoo_coverage.py --models resnet50,vit_b_16 --exporters dynamo "
              f"--no-torch-pruning", file=sys.stderr)
        return 2
    results = []
    load_before = os.getloadavg()[0]
    for m in models:
        print(f"{Path(m).stem} ...", flush=True)
        runs = [run_subprocess(m, args.ratio, args.profile) for _ in range(max(1, args.repeat))]
        ok = [x for x in runs if "error" not in x]
        # the fastest run: on a shared machine the others carry other jobs' time (memory is the same)
        r = min(ok, key=lambda x: x["total_s"]) if ok else runs[0]
        if len(ok) > 1:
            r["totals_s"] = [x["total_s"] for x in ok]
            print(f"  totals of {len(ok)} runs: {' '.join(f'{t:.2f}' for t in r['totals_s'])}s; the fastest is shown")
        results.append(r)
        if "error" in r:
            print(f"  error: {r['error']}")
            continue
        tgt = target_for(r["model"])
        print(f"  {' '.join(f'{k} {v:.2f}s' for k, v in r['seconds'].items())} | total {r['total_s']:.2f}s"
              + (f" (target {tgt:g}s)" if tgt else "")
              + f" | peak RSS {r['rss_peak_mib']:.0f} MiB (base {r['rss_base_mib']:.0f}, model "
              f"{r['size_mib']:.0f} MiB, x{r['memory_factor']:.2f}) | verify {'pass' if r['verify_passed'] else 'FAIL'}",
              flush=True)
        print("  peak RSS above base after each stage (MiB): "
              + " ".join(f"{k} {v:.0f}" for k, v in r["peak_after_mib"].items()), flush=True)
    if args.markdown:
        cmd = "python tools/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
        load = (load_before, os.getloadavg()[0])
        write_markdown(Path(args.markdown), markdown(results, cmd.strip(), load))
        print(f"wrote {args.markdown}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
