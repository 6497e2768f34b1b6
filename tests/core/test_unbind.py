"""Packed Q/K/V taken apart as the dynamo exporter writes ``qkv.unbind(0)``: Slice + Squeeze.

Hiera (and timm-style attention) computes qkv = x @ W [.., 3E], views it [.., 3, heads, d], moves
the 3 first and unbinds it. The TorchScript exporter writes the unbind as Split or Gather, which
the packed-Q/K/V rule recognised (rules/reshape.py, _outer_selected); the dynamo exporter writes a
Slice of one position per part, then a Squeeze, which it did not: the 3E channels were coarsened
into one block (Q, K and V whole), and with one head the block landed on the batch axis and tied
every attention of the model into one frozen group.

Property checked: with one head or two, Q, K and V lose the same heads (with one head: the same
head_dim channels) through Slice + Squeeze as through Gather, the proof passes, and the pruned
model computes what the original computes with the removed Q, K and V columns zeroed.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from compressor import api
from tests.core.graphs import G

T, D = 5, 4


def packed_attention(heads: int, unbind: str):
    e = heads * D
    g = G(10, opset=17)
    x = g.input("x", [1, T, e])
    w, b = g.rand(e, 3 * e, base="wqkv"), g.rand(3 * e, base="bqkv")
    qkv = g.op("Reshape", [g.op("Add", [g.op("MatMul", [x, w]), b]),
                           g.const(np.array([1, T, 3, heads, D], np.int64), "packed")])
    qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])  # [3, 1, heads, T, d]
    zero = g.const(np.array([0], np.int64), "axis0")
    parts = []
    for i in range(3):
        if unbind == "slice":
            part = g.op("Slice", [qkv, g.const(np.array([i], np.int64)), g.const(np.array([i + 1], np.int64)), zero])
            parts.append(g.op("Squeeze", [part, zero]))
        else:
            parts.append(g.op("Gather", [qkv, g.const(np.array(i, np.int64))], axis=0))
    q, k, v = parts
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # [1, heads, T, d]
    out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const(np.array([1, T, e], np.int64))])
    return g.model([g.op("MatMul", [out, g.rand(e, e, base="wo")])]), w, b


@pytest.mark.parametrize("heads", [1, 2])
def test_unbind_as_slice_and_squeeze_prunes_like_gather(heads):
    plans = {}
    for unbind in ("gather", "slice"):
        model, w, b = packed_attention(heads, unbind)
        res = api.prune(model, ratio=0.5)
        rep = res.report
        assert rep["verify"]["passed"], rep["verify"]
        kept = next((e["kept"] for e in rep["plan"] if e["tensor"] == w and e["axis"] == 1), None)
        e = heads * D
        assert kept is not None and len(kept) == 3 * e // 2, \
            f"{unbind}, {heads} head(s): Q, K and V should each keep half: {rep['unprunable']}"
        assert [k % e for k in kept[: e // 2]] == [k - e for k in kept[e // 2: e]], "Q and K keep the same channels"
        plans[unbind] = kept
        drop = np.setdiff1d(np.arange(3 * e), kept)  # the removed columns of Q, K and V
        ref = type(model)()
        ref.CopyFrom(model)
        for t in ref.graph.initializer:
            if t.name in (w, b):
                a = numpy_helper.to_array(t).copy()
                a[..., drop] = 0
                t.CopyFrom(numpy_helper.from_array(a, t.name))
        x = np.random.default_rng(6).standard_normal((1, T, e)).astype(np.float32)
        sess = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # noqa: E731
        want, got = sess(ref).run(None, {"x": x})[0], sess(res.model).run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), "pruned != original with removed columns zeroed"
    assert plans["slice"] == plans["gather"], "Slice + Squeeze should prune as Gather does"
