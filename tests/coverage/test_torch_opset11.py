"""Older PyTorch exports (opset 11, TorchScript exporter): shape arithmetic in the graph.

- ``x.view(x.size(0), -1)`` before a Gemm: Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
- ``F.interpolate(x, size=skip.shape[-2:])``: Shape -> Slice -> Concat with the input's own
  N, C -> Resize(sizes=...).
- ``x.view(x.size(0), 64)``: a literal feature count in a computed target.

Property: computed targets that adapt to the pruned tensor (-1, or N/C read from the tensor's own
Shape) keep the groups prunable; one with a literal channel count is
rewritten in its Concat operand, and in every case the pruned model reproduces the masked original.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor import api

from _graphs import GraphBuilder, prune_ok


def batch_flatten(g: GraphBuilder, x: str, tail: int | None = None) -> str:
    """``x.view(x.size(0), -1)`` (tail None) or ``x.view(x.size(0), tail)`` as opset-11 exports it."""
    n = g.op("Gather", [g.op("Shape", [x]), g.ints(0, "idx")], axis=0)
    n = g.op("Unsqueeze", [n], axes=[0])
    target = g.op("Concat", [n, g.ints([-1 if tail is None else tail], "tail")], axis=0)
    return g.op("Reshape", [x, target])


def interpolate_like(g: GraphBuilder, x: str, ref: str) -> str:
    """``F.interpolate(x, size=ref.shape[-2:], mode='nearest')`` at opset 11."""
    hw = g.op("Slice", [g.op("Shape", [ref]), g.ints([2], "s"), g.ints([4], "e"), g.ints([0], "a")])
    nc = g.op("Slice", [g.op("Shape", [x]), g.ints([0], "s"), g.ints([2], "e"), g.ints([0], "a")])
    sizes = g.op("Concat", [nc, hw], axis=0)
    roi = g.const(np.zeros(0, np.float32), "roi")
    scales = g.const(np.zeros(0, np.float32), "scales")
    return g.op("Resize", [x, roi, scales, sizes], mode="nearest", coordinate_transformation_mode="asymmetric",
                nearest_mode="floor")


def torch11_net(literal_tail: bool = False) -> onnx.ModelProto:
    g = GraphBuilder(opset=11)
    x = g.input("input.1", [1, 3, 32, 32])
    a = g.conv_bn_relu(x, 3, 16)
    b = g.conv_bn_relu(g.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2]), 16, 32)
    up = interpolate_like(g, b, a)                     # 32 channels back at 32x32
    c = g.conv_bn_relu(g.op("Concat", [a, up], axis=1), 48, 32)
    p = g.op("GlobalAveragePool", [c])
    f = batch_flatten(g, p, 32 if literal_tail else None)
    g.output(g.op("Gemm", [f, g.weight(10, 32), g.weight(10, scale=0.1)], transB=1), shape=[1, 10])
    return g.model("torch11")


def test_shape_subgraph_flatten_and_interpolate_prune():
    reports = prune_ok(torch11_net())
    rep = reports[-1]
    assert rep["groups"]["pruned"] >= 3, f"expected all three conv groups pruned: {rep['groups']}"


def test_literal_feature_count_is_rewritten():
    """A literal 32 in a computed Reshape target (a Concat operand) is rewritten with the group."""
    model = torch11_net(literal_tail=True)
    reports = prune_ok(model, ratios=(0.5,))
    assert reports[0]["groups"]["pruned"] >= 3, f"expected the last conv group pruned too: {reports[0]['groups']}"
    res = api.prune(model, ratio=0.5)
    concat = [n for n in res.model.graph.node if n.op_type == "Concat"][-1]
    tail = next(t for t in res.model.graph.initializer if t.name == concat.input[1])
    assert onnx.numpy_helper.to_array(tail).tolist() == [16], "the literal 32 should now say 16"
