"""Grouped convolutions (ResNeXt) and the channel shuffle (ShuffleNet's Reshape/Transpose/Reshape).

Property: a grouped conv keeps its group count and loses the same positions in every group; a
channel shuffle is mapped exactly (the shuffled slices lose the same channels, so the shuffle's
index map stays valid after pruning) and never yields a wrong model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compressor import api

from _graphs import GraphBuilder, prune_ok


def resnext_like() -> onnx.ModelProto:
    g = GraphBuilder(opset=13)
    x = g.input("x", [1, 3, 16, 16])
    y = g.conv_bn_relu(x, 3, 32)
    for _ in range(2):
        b = g.conv_bn_relu(y, 32, 32, 1)
        b = g.op("Relu", [g.bn(g.conv(b, 32, 32, 3, group=4, bias=False), 32)])   # 4 groups of 8
        b = g.bn(g.conv(b, 32, 32, 1, bias=False), 32)
        y = g.op("Relu", [g.op("Add", [y, b])])
    g.output(g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [y])]), g.weight(10, 32)], transB=1))
    return g.model("resnext_like")


def test_grouped_conv_prunes_same_positions_in_every_group():
    model = resnext_like()
    prune_ok(model)
    res = api.prune(model, ratio=0.5)
    gconvs = [n for n in res.model.graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i == 4 for a in n.attribute)]
    assert len(gconvs) == 2, "grouped convs keep group=4"
    shapes = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    for n in gconvs:
        w = shapes[n.input[1]]
        assert w[0] % 4 == 0 and w[1] * 4 <= 32 and w[1] < 8, f"expected fewer channels per group: {w}"


def channel_shuffle(g: GraphBuilder, x: str, c: int, hw: int, groups: int = 2) -> str:
    y = g.op("Reshape", [x, g.ints([1, groups, c // groups, hw, hw])])
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return g.op("Reshape", [y, g.ints([1, c, hw, hw])])


def chunk2(g: GraphBuilder, y: str) -> tuple[str, str]:
    """``y.chunk(2, dim=1)`` as the TorchScript exporter emits it: Slices with run-time bounds."""
    c = g.op("Gather", [g.op("Shape", [y]), g.ints(1, "i")], axis=0)
    half = g.op("Unsqueeze", [g.op("Div", [c, g.ints(2, "two")]), g.ints([0], "ax")])
    axis = g.ints([1], "axis")
    a = g.op("Slice", [y, g.ints([0], "zero"), half, axis])
    b = g.op("Slice", [y, half, g.ints([2**62], "big"), axis])
    return a, b


def shufflenet_like(chunk: str = "split") -> onnx.ModelProto:
    g = GraphBuilder(opset=13)
    x = g.input("x", [1, 3, 16, 16])
    c, hw = 32, 16
    y = g.conv_bn_relu(x, 3, c)
    for _ in range(3):       # stride-1 units: split, branch on one half, concat, shuffle
        if chunk == "split":
            x1, x2 = g.op("Split", [y, g.ints([c // 2, c // 2], "split")], n_out=2, axis=1)
        else:
            x1, x2 = chunk2(g, y)
        b = g.conv_bn_relu(x2, c // 2, c // 2, 1)
        b = g.bn(g.conv(b, c // 2, c // 2, 3, group=c // 2, bias=False), c // 2)
        b = g.conv_bn_relu(b, c // 2, c // 2, 1)
        y = channel_shuffle(g, g.op("Concat", [x1, b], axis=1), c, hw)
    y = g.conv_bn_relu(y, c, 48, 1)
    g.output(g.op("Gemm", [g.op("Flatten", [g.op("GlobalAveragePool", [y])]), g.weight(10, 48)], transB=1))
    return g.model("shufflenet_like")


@pytest.mark.parametrize("chunk", ["split", "runtime-slice"])
def test_channel_shuffle_is_exact(chunk):
    reports = prune_ok(shufflenet_like(chunk), ratios=(0.3, 0.5, 0.7))
    rep = reports[-1]
    assert not [b for b in rep["barriers"] if b["op_type"] in ("Reshape", "Transpose")], rep["barriers"]
    assert rep["macs_after"] < 0.7 * rep["macs_before"], "the shuffled units should lose MACs"


def test_shuffle_reference_map():
    """Independent check of the index map on a bare shuffle: prune with a hand-made keep set and
    compare with numpy's shuffle of the kept channels."""
    g = GraphBuilder(opset=13)
    x = g.input("x", [1, 4, 2, 2])
    a = g.conv(x, 4, 8, 1)
    y = channel_shuffle(g, a, 8, 2)
    g.output(g.conv(y, 8, 3, 1))
    model = g.model("bare_shuffle")
    an = api.analyze(model)
    grp = next(gr for gr in an.prunable if gr.size == 4)     # J: 4 channels, each repeated twice
    lay = an.layout_of([n for n in model.graph.node if n.op_type == "Reshape"][-1].output[0], 1)
    assert lay is not None and lay[0][1] == 2, f"after the shuffle each channel owns 2 positions: {lay}"
    from compressor.analysis.layout import positions

    kept_in = positions(an.ctx.table, an.layout_of(a, 1), {grp.id: [0, 2]})
    kept_out = positions(an.ctx.table, lay, {grp.id: [0, 2]})
    shuffle = np.arange(8).reshape(2, 4).T.reshape(-1)       # output position -> input channel
    assert sorted(shuffle[kept_out].tolist()) == sorted(kept_in), (kept_in, kept_out)
