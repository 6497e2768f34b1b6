"""A constant that a node read whole before another node couples it with channels.

Surgery slices a constant member of a group everywhere it is read. A reader analysed before the
binding took the constant whole (the axis carried no channels there): slicing it would change what
that reader computes (the pruned model then failed shape inference). Properties checked:
- a constant added to an untracked tensor first, then to channels (a residual add of a shared
  bias), keeps those channels whole, with a reason that names the other reader;
- the same through an adoption (a position bias shared by a run-time mask sum read before, and by
  the attention scores): the heads stay whole;
- in both, the model still prunes (nothing raises) and the proof passes.
"""

from __future__ import annotations

import numpy as np

from compressor import api
from tests.core.graphs import G

T, C = 6, 8


def _reasons(rep) -> list[str]:
    return [r for u in rep["unprunable"] for r in u["reasons"]]


def test_constant_read_whole_before_it_is_bound_keeps_the_channels_whole():
    g = G(3, opset=18)
    x = g.input("x", [1, T, 3])
    u = g.input("u", [1, T, C])
    w1, b1 = g.rand(3, C, base="w1_"), g.rand(C, base="b1_")
    shared = g.rand(T, C, base="shared")
    other = g.op("Add", [u, shared])  # takes 'shared' whole: u carries no channels
    h = g.op("Add", [g.op("MatMul", [x, w1]), b1])
    y = g.op("MatMul", [g.op("Relu", [g.op("Add", [h, shared])]), g.rand(C, 4, base="w2_")])
    model = g.model([y, other])
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    assert not any(e["tensor"] == w1 for e in rep["plan"]), f"W1's channels should stay whole: {rep['plan']}"
    assert any(shared in r for r in _reasons(rep)), f"expected a reason naming '{shared}': {_reasons(rep)}"


def test_position_bias_read_whole_before_its_adoption_keeps_the_heads_whole():
    heads, d, W = 4, 2, 3
    e = heads * d
    g = G(5, opset=17)
    x = g.input("x", [W, T, e])
    mask = g.input("mask", [W, 1, T, T])
    bias = g.rand(1, heads, T, T, base="bias")
    probe = g.op("Add", [mask, bias])  # another reader of the bias, with no heads: a graph output
    split = g.const(np.array([W, T, heads, d], np.int64), "split")

    def project(perm):
        w, b = g.rand(e, e, base="w"), g.rand(e, base="b")
        return g.op("Transpose", [g.op("Reshape", [g.op("Add", [g.op("MatMul", [x, w]), b]), split])], perm=perm), w

    (q, _), (k, _), (v, _) = project([0, 2, 1, 3]), project([0, 2, 3, 1]), project([0, 2, 1, 3])
    scores = g.op("Add", [g.op("MatMul", [q, k]), g.op("Add", [bias, mask])])
    out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const(np.array([W, T, e], np.int64))])
    model = g.model([g.op("MatMul", [out, g.rand(e, e, base="wo")]), probe])
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    assert not any(p["tensor"] == bias for p in rep["plan"]), f"the bias should stay whole: {rep['plan']}"
