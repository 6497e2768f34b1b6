"""Tile and Col2Im pass channels (rules/passthrough.py: Tile; rules/depth_space.py: Col2Im).

Properties checked:
- ``x.repeat(1, n, 1)`` (Tile [1, n, 1]: SwiftFormer's global query tiled over the tokens) keeps
  the channels of the axes it repeats once: the projection producing them prunes (Tile had no rule
  and froze them);
- a channel axis tiled r times holds the channels r times over: every copy loses the same channels
  and the consumer's rows of each copy go;
- Col2Im (``F.fold``, MobileViTV2's patches folded back into a feature map) maps rows c*B .. c*B+B-1
  (B = the block's positions) to output channel c: the conv producing the rows loses B rows per
  output channel removed, the conv after the fold the channel;
- each pruned model is proven, and computes what the original computes with the removed channels'
  producer rows zeroed (an independent check).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import numpy_helper

from compressor import api
from tests.core.graphs import G

T, C = 6, 8


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _zeroed(model, zero: dict[str, tuple[int, np.ndarray]]):
    """The original with positions ``idx`` along ``axis`` of each named initializer set to zero."""
    out = type(model)()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in zero:
            axis, idx = zero[t.name]
            a = numpy_helper.to_array(t).copy()
            np.moveaxis(a, axis, 0)[idx] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return out


def _plan(res) -> dict[tuple[str, int], list[int]]:
    return {(e["tensor"], e["axis"]): e["kept"] for e in res.report["plan"]}


def _tiled(repeats: list[int]):
    """h = x @ W1 + b1 [1, T, C]; q = ReduceSum(h, tokens) [1, 1, C]; y = (Tile(q, repeats) * h') @ W2,
    h' = h tiled like q along the channels when repeats[2] > 1."""
    g = G(4, opset=17)
    x = g.input("x", [1, T, 3])
    w1, b1 = g.rand(3, C, base="w1_"), g.rand(C, base="b1_")
    h = g.op("Add", [g.op("MatMul", [x, w1]), b1])
    q = g.op("ReduceSum", [h, g.const(np.array([1], np.int64), "axes")], keepdims=1)
    tiled = g.op("Tile", [q, g.const(np.array(repeats, np.int64), "repeats")])
    if repeats[2] > 1:
        h = g.op("Concat", [h] * repeats[2], axis=2)
    w2 = g.rand(C * repeats[2], 4, base="w2_")
    return g.model([g.op("MatMul", [g.op("Mul", [tiled, h]), w2])]), w1, b1, w2


def test_query_tiled_over_the_tokens_keeps_its_channels():
    model, w1, b1, _ = _tiled([1, T, 1])
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    assert not rep["barriers"], rep["barriers"]
    kept = _plan(res).get((w1, 1))
    assert kept is not None and len(kept) == C // 2, f"expected W1 to keep {C // 2} channels: {rep['unprunable']}"
    drop = np.setdiff1d(np.arange(C), kept)
    x = np.random.default_rng(0).standard_normal((1, T, 3)).astype(np.float32)
    want, got = _run(_zeroed(model, {w1: (1, drop), b1: (0, drop)}), x), _run(res.model, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), "pruned != original with removed channels zeroed"


def test_channel_axis_tiled_twice_loses_the_same_channels_in_both_copies():
    model, w1, b1, w2 = _tiled([1, T, 2])
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    plan = _plan(res)
    kept = plan.get((w1, 1))
    assert kept is not None and len(kept) == C // 2, f"expected W1 to keep {C // 2} channels: {rep['unprunable']}"
    assert plan[(w2, 0)] == list(kept) + [C + k for k in kept], f"W2's rows of both copies: {plan[(w2, 0)]}"
    drop = np.setdiff1d(np.arange(C), kept)
    x = np.random.default_rng(1).standard_normal((1, T, 3)).astype(np.float32)
    want, got = _run(_zeroed(model, {w1: (1, drop), b1: (0, drop)}), x), _run(res.model, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), "pruned != original with removed channels zeroed"


def test_folded_patches_prune_the_conv_rows_in_blocks():
    """conv 3 -> 4C [1, 4C, 4, 4] -> Reshape [1, 4C, 16] -> Col2Im(image 8x8, block 2x2, stride 2)
    [1, C, 8, 8] -> conv C -> 4."""
    g = G(6, opset=18)
    x = g.input("x", [1, 3, 4, 4])
    rows = g.conv(x, 3, 4 * C, k=3)
    w_rows, b_rows = g.nodes[-1].input[1], g.nodes[-1].input[2]
    patches = g.op("Reshape", [rows, g.const(np.array([1, 4 * C, 16], np.int64), "s")])
    folded = g.op("Col2Im", [patches, g.const(np.array([8, 8], np.int64), "image"),
                             g.const(np.array([2, 2], np.int64), "block")], strides=[2, 2])
    y = g.conv(folded, C, 4, k=1)
    w_out = g.nodes[-1].input[1]
    model = g.model([y])
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    assert not rep["barriers"], rep["barriers"]
    plan = _plan(res)
    kept = plan.get((w_out, 1))
    assert kept is not None and len(kept) == C // 2, \
        f"expected the conv after the fold to lose half its inputs: {rep['unprunable']}"
    assert plan[(w_rows, 0)] == [4 * c + j for c in kept for j in range(4)], "each kept channel keeps its 4 rows"
    drop = np.array([4 * c + j for c in range(C) if c not in kept for j in range(4)])
    xv = np.random.default_rng(2).standard_normal((1, 3, 4, 4)).astype(np.float32)
    want, got = _run(_zeroed(model, {w_rows: (0, drop), b_rows: (0, drop)}), xv), _run(res.model, xv)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), "pruned != original with removed rows zeroed"
