"""`make demo`: prune the bundled trained model and show what it costs and what it gains.

models/demo_fmnist.onnx is a CIFAR-style ResNet-20 trained on Fashion-MNIST with soft filter pruning
(SFP) and exported with its learned channel importances (`compressor.learned` metadata, see
docs/results.md). The demo runs the `compress` CLI on it (MACs budget 0.5, channel counts multiples
of 8, the residual trunk kept, latency measured before/after on onnxruntime's CPU provider, the cut
proven by the equivalence oracle), then evaluates both models on the 1,000 Fashion-MNIST test images
bundled in models/demo_fmnist_test.npz. Extra arguments are passed on to `compress`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compressor.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "demo_fmnist.onnx"
TEST_SLICE = ROOT / "models" / "demo_fmnist_test.npz"
OUT = ROOT / "out" / "demo_pruned.onnx"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # the normalisation the model was trained with


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """Top-1 accuracy of an ONNX classifier on the slice, and the provider that ran it."""
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = ((images.astype(np.float32) / 255.0 - FMNIST_MEAN) / FMNIST_STD)[:, None]
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == labels).mean()), sess.get_providers()[0]


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p)


def run(extra: list[str]) -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    args = [str(MODEL), "-o", str(OUT), "--target-macs", "0.5", "--round-to", "8", "--exclude", "*bn2*",
            "--input-shape", "1x1x28x28", "--bench", *extra]
    shown = [_rel(Path(a)) if a.startswith(str(ROOT)) else (f"'{a}'" if "*" in a else a) for a in args]
    print("$ compress " + " ".join(shown), flush=True)
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:  # the CLI reports its own errors; keep its exit code
        return int(exc.code or 0)
    if not OUT.exists() or "--dry-run" in extra:
        return 0
    data = np.load(TEST_SLICE)
    images, labels = data["images"], data["labels"]
    before, provider = accuracy(MODEL, images, labels)
    after, _ = accuracy(OUT, images, labels)
    print(f"\naccuracy on {len(labels)} Fashion-MNIST test images ({provider}, no fine-tuning): "
          f"{before:.1%} before, {after:.1%} after pruning")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
