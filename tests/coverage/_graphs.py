"""A tiny graph builder for idiom tests and the check every idiom test makes.

Graphs are faithful reconstructions of what real producers emit (tf2onnx, paddle2onnx, older
PyTorch exporters, YOLO/FPN/U-Net/BERT exports), built with ``onnx.helper`` and random weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor import api


class GraphBuilder:
    """Collects nodes and random constants; ``op`` returns the output name(s)."""

    def __init__(self, opset: int = 13, seed: int = 0, const_nodes: bool = False):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.const_nodes = const_nodes  # paddle-style: every weight is a Constant node
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    # ---- tensors -------------------------------------------------------------------------
    def input(self, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def output(self, name: str, dtype=TensorProto.FLOAT, shape=None) -> str:
        """Declare a graph output; its shape comes from shape inference unless given."""
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def const(self, value, base: str = "c", as_node: bool | None = None) -> str:
        arr = np.asarray(value)
        name = self.name(base)
        if self.const_nodes if as_node is None else as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name)))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, *shape, scale: float | None = None, base: str = "w", positive: bool = False) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        v = self.rng.standard_normal(shape).astype(np.float32) * s
        if positive:
            v = np.abs(v) + 0.5
        return self.const(v.astype(np.float32), base)

    def ints(self, values, base: str = "shape") -> str:
        return self.const(np.asarray(values, dtype=np.int64), base, as_node=False)

    # ---- nodes -----------------------------------------------------------------------------
    def op(self, op_type: str, inputs, n_out: int = 1, name: str | None = None, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name or self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1,
             bias: bool = True, pad: int | None = None) -> str:
        p = k // 2 if pad is None else pad
        ins = [x, self.weight(cout, cin // group, k, k)]
        if bias:
            ins.append(self.weight(cout, scale=0.1, base="b"))
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[p] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        return self.op("BatchNormalization", [x, self.weight(c, positive=True, base="gamma"),
                                              self.weight(c, scale=0.1, base="beta"),
                                              self.weight(c, scale=0.1, base="mean"),
                                              self.weight(c, positive=True, base="var")], epsilon=1e-5)

    def conv_bn_relu(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        return self.op("Relu", [self.bn(self.conv(x, cin, cout, k, stride, bias=False), cout)])

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def linear(self, x: str, fin: int, fout: int) -> str:
        """PyTorch-style MatMul + Add for a rank-3 activation."""
        return self.op("Add", [self.op("MatMul", [x, self.weight(fin, fout)]), self.weight(fout, scale=0.1, base="b")])

    def model(self, name: str = "g", ir_version: int | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = ir_version or (7 if self.opset < 13 else 8)
        # outputs were declared without shapes: take them from shape inference
        inferred = onnx.shape_inference.infer_shapes(m)
        types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)
                 if v.type.tensor_type.HasField("shape")}
        for out in m.graph.output:
            if out.name in types:
                out.type.CopyFrom(types[out.name])
        onnx.checker.check_model(m)
        return m


def prune_ok(model: onnx.ModelProto, ratios=(0.3, 0.6), *, min_removed: int = 1, **kwargs) -> list[dict]:
    """Prune at each ratio; assert the oracle passed and at least ``min_removed`` channels went.

    Also checks that the pruned model's outputs keep the original's shapes (the oracle would
    report a mismatch as an infinite error, but a plain message is clearer).
    """
    reports = []
    for r in ratios:
        res = api.prune(model, ratio=r, **kwargs)
        rep = res.report
        assert rep["verify"]["passed"], f"ratio {r}: oracle max_rel_err {rep['verify']['max_rel_err']:.3g} > 1e-4"
        removed = rep["channels"]["removed"]
        assert removed >= min_removed, (
            f"ratio {r}: expected at least {min_removed} channels removed, got {removed}; barriers: "
            f"{[b['reason'] for b in rep['barriers']][:3]}")
        reports.append(rep)
    return reports


def groups_touching(model: onnx.ModelProto, node_name: str) -> list:
    """The analysis groups whose channels reach the named node."""
    an = api.analyze(model)
    return [g for g in an.groups if node_name in g.nodes]


def surviving_weight_shape(model: onnx.ModelProto, ratio: float, tensor: str) -> tuple[int, ...]:
    """Shape of a constant in the pruned model (looked up by its original name)."""
    res = api.prune(model, ratio=ratio)
    for t in res.model.graph.initializer:
        if t.name == tensor:
            return tuple(t.dims)
    for n in res.model.graph.node:
        if n.op_type == "Constant" and n.output[0] == tensor:
            return tuple(n.attribute[0].t.dims)
    raise AssertionError(f"tensor {tensor} not in the pruned model")
