"""TensorFlow-style exports (tf2onnx): NHWC input and outputs with Transposes around an NCHW conv
body, BatchNorm folded into conv biases, ReLU6 as Clip, NHWC bias adds and a Mean over H, W.

Property: the channels of every inner conv are prunable through the layout changes, the pruned
model reproduces the masked original, and the NHWC outputs keep their shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

from _graphs import GraphBuilder, prune_ok


def relu6(g: GraphBuilder, x: str) -> str:
    if g.opset < 11:
        return g.op("Clip", [x], min=0.0, max=6.0)
    return g.op("Clip", [x, g.const(np.float32(0.0)), g.const(np.float32(6.0))])


def tf_mobilenet_like(opset: int):
    g = GraphBuilder(opset=opset)
    x = g.input("input_1:0", [1, 32, 32, 3])
    t = g.op("Transpose", [x], perm=[0, 3, 1, 2])
    y = relu6(g, g.conv(t, 3, 16, 3, stride=2))          # BN folded: conv with bias
    y = relu6(g, g.conv(y, 16, 16, 3, group=16))        # depthwise
    y = g.conv(y, 16, 24, 1)
    z = relu6(g, g.conv(y, 24, 24, 3, group=24))
    z = g.conv(z, 24, 24, 1)
    y = g.op("Add", [y, z])                             # inverted-residual skip
    # an NHWC island: Transpose out, per-channel bias and scale on the last axis, Transpose back
    h = g.op("Transpose", [y], perm=[0, 2, 3, 1])
    h = g.op("Add", [h, g.weight(24, scale=0.1, base="nhwc_bias")])
    h = g.op("Mul", [h, g.weight(24, positive=True, base="nhwc_scale")])
    y = g.op("Transpose", [h], perm=[0, 3, 1, 2])
    y = relu6(g, g.conv(y, 24, 32, 1))
    # segmentation-style NHWC output of a 1x1 conv head
    seg = g.op("Transpose", [g.conv(y, 32, 5, 1)], perm=[0, 2, 3, 1], name="seg_out")
    g.outputs.append(__import__("onnx").helper.make_tensor_value_info(seg, 1, None))
    # classifier: back to NHWC, mean over H, W, MatMul + Add, Softmax
    n = g.op("Transpose", [y], perm=[0, 2, 3, 1])
    m = g.op("ReduceMean", [n], axes=[1, 2], keepdims=0)
    logits = g.op("Add", [g.op("MatMul", [m, g.weight(32, 10)]), g.weight(10, scale=0.1, base="fc_b")])
    g.output(g.op("Softmax", [logits], axis=-1 if opset >= 13 else 1))
    return g.model("tf_nhwc")


@pytest.mark.parametrize("opset", [9, 13])
def test_nhwc_body_prunes_and_verifies(opset):
    reports = prune_ok(tf_mobilenet_like(opset))
    rep = reports[-1]
    assert rep["macs_after"] < 0.8 * rep["macs_before"], "expected the NHWC-wrapped convs to lose MACs"
    assert rep["groups"]["pruned"] >= 3, f"expected the 16-, 24- and 32-channel groups pruned, got {rep['groups']}"


@pytest.mark.parametrize("opset", [9, 13])
def test_nhwc_input_transpose_keeps_input_channels(opset):
    from compressor import api

    res = api.prune(tf_mobilenet_like(opset), ratio=0.5)
    ins = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in res.model.graph.input}
    assert ins["input_1:0"] == [1, 32, 32, 3], f"the model input must keep its NHWC shape, got {ins}"
