"""Experiments on real data (Fashion-MNIST): one command per table, resumable.

    python tools/experiments.py run main              # default CPU setting (see tools/exp/settings.py)
    python tools/experiments.py run main --quick      # CI smoke test: tiny subset, 1 + 1 epochs
    python tools/experiments.py run main --full       # the anchor protocol (full data; for a GPU)
    python tools/experiments.py run cut4 --methods l1,csgd --seeds 0
    python tools/experiments.py list main             # the runs of a table and whether they are done
    python tools/experiments.py widths                # MACs + ORT latency of each width policy (runs/widths)
    python tools/experiments.py report                # docs/results.md tables + docs/results/*.png
    python tools/experiments.py demo-model RUN_JSON   # copy a run's model + a test slice into models/

Each run writes ``runs/<table>/<name>.json`` (name = model-method-cut-seed-setting-confighash) and
its log and ONNX files under ``runs/<table>/<name>/``; a rerun skips runs whose JSON exists.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from exp.settings import SETTINGS, TABLES, table_configs  # noqa: E402

ROOT = HERE.parent


def _setting(args):
    if args.quick and args.full:
        raise SystemExit("give at most one of --quick, --full")
    base = SETTINGS["quick" if args.quick else "full" if args.full else "cpu"]
    if getattr(args, "train_limit", None) is not None:
        from dataclasses import replace
        base = replace(base, train_limit=args.train_limit, name=f"{base.name}-n{args.train_limit}")
    return base


def _configs(args):
    split = lambda s, f=str: [f(v) for v in s.split(",")] if s else None  # noqa: E731
    return table_configs(args.table, _setting(args), methods=split(args.methods), seeds=split(args.seeds, int),
                         models=split(args.models))


def cmd_run(args) -> int:
    from exp.runner import run_safely
    runs = Path(args.runs_dir)
    failed = 0
    for cfg in _configs(args):
        out = runs / cfg.table / f"{cfg.name}.json"
        if out.exists() and not args.force:
            print(f"skip {cfg.name} (done: {out})", flush=True)
            continue
        if run_safely(cfg, runs) is None:
            failed += 1
    return 1 if failed else 0


def cmd_list(args) -> int:
    runs = Path(args.runs_dir)
    for cfg in _configs(args):
        out = runs / cfg.table / f"{cfg.name}.json"
        print(("done  " if out.exists() else "todo  ") + cfg.name)
    return 0


def cmd_report(args) -> int:
    from exp.report import write_report
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    write_report(Path(args.runs_dir), Path(args.out), Path(args.plots), tables=tables)
    print(f"wrote {args.out}")
    return 0


def cmd_widths(args) -> int:
    from exp.probe import probe
    probe(Path(args.runs_dir), min_time=args.min_time)
    return 0


def cmd_demo_model(args) -> int:
    """Copy the fine-tuned or dense model of a run to models/demo_fmnist.onnx and a test slice."""
    import numpy as np

    from compressor.data import load_fashion_mnist

    res = json.loads(Path(args.run_json).read_text())
    src = Path(res["log"]).parent / args.which
    dst = ROOT / "models" / "demo_fmnist.onnx"
    shutil.copyfile(src, dst)
    x, y = load_fashion_mnist("test")
    np.savez_compressed(ROOT / "models" / "demo_fmnist_test.npz", images=x[: args.n], labels=y[: args.n])
    print(f"{src} -> {dst} ({dst.stat().st_size} bytes); first {args.n} test images -> models/demo_fmnist_test.npz")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("run", cmd_run), ("list", cmd_list)):
        s = sub.add_parser(name)
        s.add_argument("table", choices=sorted(TABLES))
        s.add_argument("--quick", action="store_true", help="tiny subset, 1 + 1 epochs (CI smoke test)")
        s.add_argument("--full", action="store_true", help="full training set, 4 + 4 epochs (GPU)")
        s.add_argument("--methods", help="comma list (default: the table's methods, in priority order)")
        s.add_argument("--seeds", help="comma list of seeds")
        s.add_argument("--models", help="comma list of model names")
        s.add_argument("--train-limit", type=int, help="override the setting's training subset size")
        s.add_argument("--runs-dir", default=str(ROOT / "runs"))
        s.add_argument("--force", action="store_true", help="rerun finished runs")
        s.set_defaults(fn=fn)
    r = sub.add_parser("report")
    r.add_argument("--runs-dir", default=str(ROOT / "runs"))
    r.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    r.add_argument("--plots", default=str(ROOT / "docs" / "results"))
    r.add_argument("--tables", help="comma list: write only these tables, into a block of their own "
                   "(the other generated tables are left as they are)")
    r.set_defaults(fn=cmd_report)
    w = sub.add_parser("widths", help="measure MACs and ORT latency of the width policies")
    w.add_argument("--runs-dir", default=str(ROOT / "runs"))
    w.add_argument("--min-time", type=float, default=3.0)
    w.set_defaults(fn=cmd_widths)
    d = sub.add_parser("demo-model")
    d.add_argument("run_json")
    d.add_argument("--which", default="dense.onnx", help="dense.onnx (with learned importances) or final.onnx")
    d.add_argument("--n", type=int, default=1000)
    d.set_defaults(fn=cmd_demo_model)
    args = p.parse_args(argv)
    import os

    import torch
    torch.set_num_threads(int(os.environ.get("EXP_THREADS") or 2))
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
