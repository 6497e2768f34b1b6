"""paddle2onnx-style exports: every weight a Constant node, HardSwish (or x * HardSigmoid(x) before
opset 14), squeeze-excite blocks GlobalAveragePool -> Conv -> ReLU -> Conv -> HardSigmoid -> Mul,
and a Reshape with a constant [-1, C] target in front of MatMul + Add.

Property: Constant-node weights are sliced like initializers; the SE block's squeeze channels and
the excited channels are prunable; the pruned model reproduces the masked original.
"""

from __future__ import annotations

import pytest

from _graphs import GraphBuilder, prune_ok, surviving_weight_shape


def hardswish(g: GraphBuilder, x: str) -> str:
    if g.opset >= 14:
        return g.op("HardSwish", [x])
    return g.op("Mul", [x, g.op("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)])


def se_block(g: GraphBuilder, x: str, c: int) -> str:
    s = g.op("GlobalAveragePool", [x])
    s = g.op("Relu", [g.conv(s, c, c // 4, 1)])
    s = g.op("HardSigmoid", [g.conv(s, c // 4, c, 1)], alpha=0.2, beta=0.5)  # paddle's slope/offset
    return g.op("Mul", [x, s])


def paddle_mbv3_like(opset: int):
    g = GraphBuilder(opset=opset, const_nodes=True)
    x = g.input("x", [1, 3, 32, 32])
    y = hardswish(g, g.bn(g.conv(x, 3, 16, 3, stride=2, bias=False), 16))
    # inverted residual with SE: expand, depthwise, SE, project, residual add
    e = hardswish(g, g.bn(g.conv(y, 16, 48, 1, bias=False), 48))
    e = hardswish(g, g.bn(g.conv(e, 48, 48, 3, group=48, bias=False), 48))
    e = se_block(g, e, 48)
    e = g.bn(g.conv(e, 48, 16, 1, bias=False), 16)
    y = g.op("Add", [y, e])
    y = hardswish(g, g.bn(g.conv(y, 16, 64, 1, bias=False), 64))
    p = g.op("GlobalAveragePool", [y])
    p = g.op("Reshape", [p, g.ints([-1, 64])])
    fc = g.op("Add", [g.op("MatMul", [p, g.weight(64, 10)]), g.weight(10, scale=0.1, base="fc_b")])
    g.output(g.op("Softmax", [fc], axis=-1 if opset >= 13 else 1))
    return g.model("paddle_like")


@pytest.mark.parametrize("opset", [11, 14])
def test_paddle_constant_weights_se_block_prune(opset):
    reports = prune_ok(paddle_mbv3_like(opset))
    rep = reports[-1]
    assert rep["groups"]["pruned"] >= 4, f"expected stem, expand, SE squeeze and head groups pruned: {rep['groups']}"
    assert not rep["barriers"], f"no barrier expected in a paddle MobileNetV3 block: {rep['barriers']}"


def test_constant_node_weights_are_sliced():
    model = paddle_mbv3_like(14)
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    w = first_conv.input[1]
    assert any(n.op_type == "Constant" and n.output[0] == w for n in model.graph.node)
    shape = surviving_weight_shape(model, 0.5, w)
    assert shape[0] == 8, f"the stem conv's Constant weight should keep 8 of 16 filters, got {shape}"
