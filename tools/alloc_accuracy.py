"""Accuracy right after pruning (no fine-tuning) of a trained classifier: --target-latency with the
layer latency table against a uniform cut at the same MACs.

Needs a trained ResNet-20 from the experiments (`tools/experiments.py run main --full --methods dense`
writes runs/main/resnet20-dense-2x-s0-full-*/dense.onnx) and Fashion-MNIST (`make data`).

    .venv-exp/bin/python tools/alloc_accuracy.py [--fractions 0.8,0.6] [--importance l1]
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from compressor import api  # noqa: E402
from compressor.bench import benchmark  # noqa: E402
from compressor.data.torch_data import make_dataset  # noqa: E402
from exp.runner import onnx_accuracy, test_arrays  # noqa: E402

SHAPE = ["1x1x28x28"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the --full dense ResNet-20 under runs/main")
    ap.add_argument("--fractions", default="0.8,0.6")
    ap.add_argument("--importance", default="l1")
    args = ap.parse_args(argv)
    dense = args.model or next(iter(sorted(glob.glob(str(ROOT / "runs/main/resnet20-dense-2x-s0-full-*/dense.onnx")))),
                               None)
    if dense is None:
        ap.error("no trained model: run `tools/experiments.py run main --full --methods dense` or pass --model")
    x, y = test_arrays(make_dataset("fashion-mnist", "test"))
    print(json.dumps({"model": dense, "dense_accuracy": onnx_accuracy(dense, x, y, 2)}), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="alloc-acc-"))
    for frac in (float(f) for f in args.fractions.split(",")):
        ms = benchmark([dense], provider="cpu", threads=2, min_time=3, progress=False, log=None,
                       input_shapes=SHAPE).results[0].stats.p50_ms
        rows = []
        try:
            res = api.prune(dense, output=tmp / f"table_{frac}.onnx", target_latency=frac * ms, input_shapes=SHAPE,
                            importance=args.importance)
        except Exception as exc:  # an unmet target: report it and go on
            print(json.dumps({"fraction": frac, "allocation": "table", "error": str(exc)[:300]}), flush=True)
            continue
        b = res.report["budget"]
        macs = res.report["macs_after"] / res.report["macs_before"]
        rows.append({"fraction": frac, "allocation": "table", "target_ratio": round(b["target_ratio"], 3),
                     "ratio": round(b["ratio"], 3), "macs": round(macs, 3),
                     "accuracy": onnx_accuracy(tmp / f"table_{frac}.onnx", x, y, 2),
                     "kept": sorted((g.size, len(g.kept)) for g in res.plan.groups if g.removed)})
        for rt in (1, 8):  # a uniform cut at the same MACs, with and without rounding
            out = tmp / f"uniform_{frac}_{rt}.onnx"
            u = api.prune(dense, output=out, target_macs=macs, round_to=rt, importance=args.importance,
                          input_shapes=SHAPE)
            rows.append({"fraction": frac, "allocation": f"uniform, same MACs, round-to {rt}",
                         "macs": round(u.report["macs_after"] / u.report["macs_before"], 3),
                         "accuracy": onnx_accuracy(out, x, y, 2),
                         "kept": sorted((g.size, len(g.kept)) for g in u.plan.groups if g.removed)})
        for r in rows:
            print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
