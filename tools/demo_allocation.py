"""Accuracy of the bundled demo model (models/demo_fmnist.onnx, trained with SFP) pruned to MACs
targets with no fine-tuning: uniform, --global, and the sensitivity allocation on random inputs and
on calibration data (the first 256 images of the bundled test slice; accuracy on the other 744).

    .venv/bin/python tools/demo_allocation.py [--targets 0.6,0.5,0.4,0.3] [--round-to 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from compressor import api  # noqa: E402
from demo import FMNIST_MEAN, FMNIST_STD, accuracy  # noqa: E402

MODEL = ROOT / "models" / "demo_fmnist.onnx"
CALIBRATION = 256


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="0.6,0.5,0.4,0.3")
    ap.add_argument("--round-to", type=int, default=8)
    args = ap.parse_args(argv)
    z = np.load(ROOT / "models" / "demo_fmnist_test.npz")
    images, labels = z["images"], z["labels"]
    calib = {"input_0": ((images[:CALIBRATION].astype(np.float32) / 255.0 - FMNIST_MEAN) / FMNIST_STD)[:, None]}
    test_x, test_y = images[CALIBRATION:], labels[CALIBRATION:]
    tmp = Path(tempfile.mkdtemp(prefix="demo-alloc-"))
    dense, _ = accuracy(MODEL, test_x, test_y)
    print(f"dense accuracy {dense:.1%} on {len(test_y)} images")
    print("| MACs target | allocation | MACs kept | accuracy |\n|---|---|---|---|")
    kinds = (("uniform", {}), ("--global", {"global_ranking": True}), ("sensitivity, random inputs", {"sensitivity": True}),
             (f"sensitivity, {CALIBRATION} calibration images", {"calibration": calib}))
    for target in (float(t) for t in args.targets.split(",")):
        for i, (name, kw) in enumerate(kinds):
            out = tmp / f"{target}_{i}.onnx"
            res = api.prune(MODEL, output=out, target_macs=target, round_to=args.round_to, **kw)
            macs = res.report["macs_after"] / res.report["macs_before"]
            print(f"| {target:g} | {name} | {macs:.3f} | {accuracy(out, test_x, test_y)[0]:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
