"""Write a >2 GB ONNX model (external data) to check that compress loads, prunes and saves one.

conv 64->256 (1x1) -> Relu -> Flatten (16384) -> MatMul 16384x16384 -> Relu -> MatMul 16384x16384
-> Relu -> MatMul 16384x10: 537 M parameters, 2.15 GB of float32 in OUT.data (each tensor under
protobuf's 2 GB limit, the model over it). Random weights; about 30 s and 3 GB of memory.

    .venv/bin/python tools/make_large_model.py out/large/large.onnx
    /usr/bin/time -v .venv/bin/compress out/large/large.onnx -o out/large/small.onnx --ratio 0.5 --json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--features", type=int, default=256 * 64, help="hidden width (16384 gives 2.15 GB)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    f = args.features
    m = onnx.ModelProto()
    m.ir_version = 9
    m.opset_import.add(domain="", version=17)
    g = m.graph
    g.name = "large"
    g.node.extend([
        helper.make_node("Conv", ["x", "w0"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]), helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["a2"]), helper.make_node("MatMul", ["a2", "w3"], ["y"])])
    g.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8]))
    g.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10]))
    # added one by one: one message holding them all would pass protobuf's 2 GB limit on the way
    g.initializer.add().CopyFrom(numpy_helper.from_array(rng.standard_normal((f // 64, 64, 1, 1), dtype=np.float32), "w0"))
    for k in (1, 2):
        w = rng.standard_normal((f, f), dtype=np.float32) * 0.01
        g.initializer.add().CopyFrom(numpy_helper.from_array(w, f"w{k}"))
        del w
    g.initializer.add().CopyFrom(numpy_helper.from_array(rng.standard_normal((f, 10), dtype=np.float32), "w3"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(m, args.out, save_as_external_data=True, location=args.out.name + ".data", size_threshold=1024)
    print(f"wrote {args.out} (+ {args.out.name}.data)")


if __name__ == "__main__":
    main()
