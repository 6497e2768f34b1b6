"""Tiny ONNX graph builders for rule tests: a fluent helper over onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class G:
    """Accumulates nodes and random initializers, then builds a checked ModelProto."""

    def __init__(self, seed: int = 0, opset: int = 17):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def input(self, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def const(self, arr, base: str = "w") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def rand(self, *shape, base: str = "w", positive: bool = False) -> str:
        a = self.rng.standard_normal(shape).astype(np.float32)
        return self.const(np.abs(a) + 0.5 if positive else a, base)

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type + "_"), **attrs))
        return outs[0] if n_out == 1 else outs

    # common blocks --------------------------------------------------------
    def conv(self, x, cin, cout, k=3, group=1, bias=True, pad=None):
        pad = k // 2 if pad is None else pad
        ins = [x, self.rand(cout, cin // group, k, k)]
        if bias:
            ins.append(self.rand(cout, base="b"))
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[pad] * 4, group=group)

    def bn(self, x, c):
        return self.op("BatchNormalization", [x, self.rand(c, positive=True), self.rand(c), self.rand(c),
                                              self.rand(c, positive=True)])

    def cbr(self, x, cin, cout, k=3, group=1):
        return self.op("Relu", [self.bn(self.conv(x, cin, cout, k, group, bias=False), cout)])

    def model(self, outputs, ir_version: int = 10) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "test", self.inputs, [], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = ir_version
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
        missing = [o for o in outputs if o not in inferred]
        if missing:  # onnx cannot infer (function ops): ask onnxruntime for the shapes
            import onnxruntime as ort

            probe = onnx.ModelProto()
            probe.CopyFrom(m)
            probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in missing)
            feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
                     for i in self.inputs}
            sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            for o, v in zip(missing, sess.run(missing, feeds)):
                inferred[o] = helper.make_tensor_value_info(o, TensorProto.FLOAT, list(v.shape))
        for o in outputs:
            m.graph.output.append(inferred[o])
        onnx.checker.check_model(m)
        return m


def torch_onnx(net, x, how: str, dynamic_batch: bool = False) -> onnx.ModelProto:
    """``net`` exported by torch at input ``x``: ``how`` is "legacy<opset>" (the TorchScript exporter)
    or "dynamo18" (skips the test where that exporter fails on this torch build); input "x", and
    with ``dynamic_batch`` (TorchScript) output "y" and a batch named "n". IR version at most 10."""
    import io

    import pytest
    import torch

    if how == "dynamo18":
        pytest.importorskip("onnxscript")
        try:
            model = torch.onnx.export(net, (x,), dynamo=True, opset_version=18, input_names=["x"]).model_proto
        except Exception as exc:  # pragma: no cover - depends on the torch build
            pytest.skip(f"the dynamo exporter failed here: {type(exc).__name__}")
    else:
        buf = io.BytesIO()
        dynamic = ({"output_names": ["y"], "dynamic_axes": {"x": {0: "n"}, "y": {0: "n"}}} if dynamic_batch else {})
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=int(how.removeprefix("legacy")),
                          input_names=["x"], **dynamic)
        model = onnx.load_from_string(buf.getvalue())
    model.ir_version = min(model.ir_version, 10)
    return model


def window_attention(tokens: int, heads: int = 4, d: int = 2, windows: int = 3, mask: bool = False,
                     keys_merged: bool = False) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]], str]:
    """Hugging Face Swin's window attention on windows x [W, T, E], E = heads * d, as the exporters
    write it: q, k, v = x @ W + b viewed [W, T, heads, d] and transposed; scores q k^T [W, heads, T, T]
    plus a position bias [1, heads, T, T] (with ``mask``: plus a shifted-window mask [W, 1, T, T] given
    as a second graph input, a run-time tensor, before it is added to the scores); softmax; times v;
    merged back and projected. ``keys_merged``: k^T made as the dynamo exporter's attention makes it,
    [W, heads, T, d] -> [W * heads, T, d] -> transposed -> [W, heads, d, T]. Returns the model,
    {"q"|"k"|"v": (weight, bias)} and the position bias's name."""
    e = heads * d
    g = G(5, opset=17)
    x = g.input("x", [windows, tokens, e])
    mask_in = g.input("mask", [windows, 1, tokens, tokens]) if mask else None
    split = g.const(np.array([windows, tokens, heads, d], np.int64), "split")
    proj = {}

    def project(name: str, perm: list[int]) -> str:
        w, b = g.rand(e, e, base=f"w{name}_"), g.rand(e, base=f"b{name}_")
        proj[name] = (w, b)
        return g.op("Transpose", [g.op("Reshape", [g.op("Add", [g.op("MatMul", [x, w]), b]), split])], perm=perm)

    q, v = project("q", [0, 2, 1, 3]), project("v", [0, 2, 1, 3])
    if keys_merged:
        k = project("k", [0, 2, 1, 3])
        k = g.op("Reshape", [k, g.const(np.array([-1, tokens, d], np.int64), "merge")])
        k = g.op("Transpose", [k], perm=[0, 2, 1])
        k = g.op("Reshape", [k, g.const(np.array([windows, heads, d, tokens], np.int64), "unmerge")])
    else:
        k = project("k", [0, 2, 3, 1])
    bias = g.rand(1, heads, tokens, tokens, base="bias")
    scores = g.op("Add", [g.op("MatMul", [q, k]), g.op("Add", [bias, mask_in]) if mask else bias])
    out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]),
                           g.const(np.array([windows, tokens, e], np.int64), "s")])
    return g.model([g.op("MatMul", [out, g.rand(e, e, base="wo")])]), proj, bias
