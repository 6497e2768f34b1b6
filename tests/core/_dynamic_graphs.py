"""Graphs with a dynamic image input, built node by node, and the independent check the dynamic-shape
tests share: the masked original (removed input channels of every consumer zeroed) run by
onnxruntime without graph rewrites."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A graph with one dynamic image input ``x`` [N, 3, H, W], built node by node."""

    def __init__(self, opset: int = 17) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(0)
        self.opset = opset

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, *shape: int) -> str:
        return self.const(name, self.rng.standard_normal(shape).astype(np.float32))

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        w, b = self.weight(name + "_w", cout, cin, k, k), self.weight(name + "_b", cout)
        return self.node("Conv", [x, w, b], name, pads=[k // 2 if stride == 1 else 0] * 4, strides=[stride] * 2)

    def dims(self, t: str, *axes: int) -> list[str]:
        """One-element vectors ``Shape(t)[axis]``, ready for a Concat."""
        sh = self.node("Shape", [t], f"{t}_shape")
        return [self.node("Unsqueeze", [self.node("Gather", [sh, self.const(f"{t}_i{a}", np.array(a, np.int64))],
                                                  f"{t}_d{a}", axis=0), self.const(f"{t}_u{a}", np.array([0], np.int64))],
                          f"{t}_v{a}") for a in axes]

    def keep_minus_one(self, s: str) -> str:
        """torch's legacy export of ``expand(..., -1, ...)``: ``Where(Equal(s, -1), 1, s)``."""
        ones = self.node("ConstantOfShape", [self.node("Shape", [s], s + "_len")], s + "_ones",
                         value=numpy_helper.from_array(np.array([1], np.int64)))
        minus = self.node("Mul", [ones, self.const(s + "_m1", np.array(-1, np.int64))], s + "_minus")
        return self.node("Where", [self.node("Equal", [s, minus], s + "_eq"), ones, s], s + "_kept")

    def model(self, y: str, rank: int = 4) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 ["N", 3, "H", "W"])],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N"] + [None] * (rank - 1))],
                                  self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def masked_original(model: onnx.ModelProto, plan: list[dict]) -> onnx.ModelProto:
    """The original with the removed input channels of every consumer zeroed: a Conv weight's axis
    1, a Gemm weight's axis 1 (transB=1) or 0, a MatMul weight's axis 0."""
    consumers = {(n.input[1], 1) for n in model.graph.node if n.op_type == "Conv"}
    consumers |= {(n.input[1], 0) for n in model.graph.node if n.op_type == "MatMul"}
    consumers |= {(n.input[1], 1 if any(a.name == "transB" and a.i for a in n.attribute) else 0)
                  for n in model.graph.node if n.op_type == "Gemm"}
    kept = {(e["tensor"], e["axis"]): e["kept"] for e in plan}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        for tensor, axis in consumers:
            if t.name == tensor and (tensor, axis) in kept:
                arr = numpy_helper.to_array(t).copy()
                drop = np.ones(arr.shape[axis], bool)
                drop[kept[(tensor, axis)]] = False
                np.moveaxis(arr, axis, 0)[drop] = 0
                t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return out


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no rescue by fusion
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]
