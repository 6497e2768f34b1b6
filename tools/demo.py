"""`make demo`: prune the bundled model at ratio 0.5 (channel counts rounded to 8), prove it, and
compare latency before/after on onnxruntime's CPU provider. Thin wrapper over the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

from compressor.cli import main

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    out = ROOT / "out" / "demo_pruned.onnx"
    args = [str(ROOT / "models" / "demo.onnx"), "-o", str(out), "--ratio", "0.5", "--round-to", "8", "--bench",
            *sys.argv[1:]]
    print("$ compress " + " ".join(Path(a).relative_to(ROOT).as_posix() if a.startswith(str(ROOT)) else a
                                   for a in args), flush=True)
    main(args)
