"""Einsum (rules/einsum.py) and its MACs (metrics.py).

Properties checked:
- CvT's attention, ``einsum("bhlk,bhtk->bhlt", q, k)`` then ``einsum("bhlt,bhtv->bhlv", p, v)``:
  whole heads prune (queries, keys and values lose the same heads), where Einsum had no rule and
  froze every group it touched; the proof passes and the pruned model computes what the original
  computes with the removed heads' values zeroed (an independent check);
- a constant operand contracted with channels (``einsum("ntc,cd->ntd", h, W)``) is a consumer: its
  rows go with h's channels;
- an equation with an ellipsis is a barrier that names it; the channels stay whole;
- an Einsum counts one multiply-add per combination of its letters.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

from compressor import api
from compressor.metrics import node_macs
from tests.core.graphs import G

T, HEADS, D = 5, 4, 2
E = HEADS * D


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def einsum_attention():
    g = G(7, opset=17)
    x = g.input("x", [1, T, E])
    split = g.const(np.array([1, T, HEADS, D], np.int64), "split")
    proj = {}
    for name in "qkv":
        w, b = g.rand(E, E, base=f"w{name}_"), g.rand(E, base=f"b{name}_")
        proj[name] = (w, b)
        h = g.op("Reshape", [g.op("Add", [g.op("MatMul", [x, w]), b]), split])
        proj[name + "_t"] = g.op("Transpose", [h], perm=[0, 2, 1, 3])
    scores = g.op("Einsum", [proj["q_t"], proj["k_t"]], equation="bhlk,bhtk->bhlt")
    p = g.op("Softmax", [g.op("Mul", [scores, g.const(np.array(0.5, np.float32), "scale")])], axis=-1)
    out = g.op("Einsum", [p, proj["v_t"]], equation="bhlt,bhtv->bhlv")
    out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const(np.array([1, T, E], np.int64))])
    return g.model([g.op("MatMul", [out, g.rand(E, E, base="wo")])]), proj


def test_einsum_attention_prunes_whole_heads():
    model, proj = einsum_attention()
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    assert not rep["barriers"], rep["barriers"]
    kept = {e["tensor"]: e["kept"] for e in rep["plan"] if e["axis"] == 1}
    for name in "qkv":
        assert len(kept.get(proj[name][0], [])) == E // 2, f"{name}: expected 2 of 4 heads kept: {rep['unprunable']}"
    assert kept[proj["q"][0]] == kept[proj["k"][0]], "queries and keys must keep the same heads"
    drop = np.setdiff1d(np.arange(E), kept[proj["v"][0]])
    ref = type(model)()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        if t.name in proj["v"]:
            a = numpy_helper.to_array(t).copy()
            a[..., drop] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    x = np.random.default_rng(4).standard_normal((1, T, E)).astype(np.float32)
    want, got = _run(ref, x), _run(res.model, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), "pruned != original with removed heads zeroed"


def _projection(equation: str):
    g = G(8, opset=17)
    x = g.input("x", [1, T, 3])
    w1 = g.rand(3, E, base="w1_")
    h = g.op("Relu", [g.op("MatMul", [x, w1])])
    w2 = g.rand(E, 4, base="w2_")
    return g.model([g.op("Einsum", [h, w2], equation=equation)]), w1, w2


def test_constant_operand_contracted_with_channels_is_a_consumer():
    model, w1, w2 = _projection("ntc,cd->ntd")
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    plan = {(e["tensor"], e["axis"]): e["kept"] for e in rep["plan"]}
    assert (w1, 1) in plan and plan[(w1, 1)] == plan.get((w2, 0)), f"W2's rows follow W1's columns: {plan}"
    x = np.random.default_rng(5).standard_normal((1, T, 3)).astype(np.float32)
    drop = np.setdiff1d(np.arange(E), plan[(w1, 1)])
    ref = type(model)()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        if t.name == w1:
            a = numpy_helper.to_array(t).copy()
            a[:, drop] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    want, got = _run(ref, x), _run(res.model, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), "pruned != original with removed channels zeroed"


def test_ellipsis_equation_is_a_barrier_that_names_it():
    model, w1, _ = _projection("...c,cd->...d")
    rep = api.prune(model, ratio=0.5).report
    assert rep["verify"]["passed"], rep["verify"]
    assert [b["op_type"] for b in rep["barriers"]] == ["Einsum"], rep["barriers"]
    assert "...c,cd->...d" in rep["barriers"][0]["reason"], rep["barriers"][0]
    assert not any(e["tensor"] == w1 for e in rep["plan"]), "W1's channels should stay whole"


def test_einsum_macs_count_every_combination_of_letters():
    q, k = "q", "k"
    dims = {q: (1, HEADS, T, D), k: (1, HEADS, 7, D), "s": (1, HEADS, T, 7)}
    node = helper.make_node("Einsum", [q, k], ["s"], equation="bhlk,bhtk->bhlt")
    assert node_macs(node, dims.get) == HEADS * T * 7 * D, node_macs(node, dims.get)
    implicit = helper.make_node("Einsum", [q, k], ["s"], equation="bhlk,bhtk")
    assert node_macs(implicit, dims.get) == HEADS * T * 7 * D
    ellipsis = helper.make_node("Einsum", [q, k], ["s"], equation="...lk,...tk->...lt")
    assert node_macs(ellipsis, dims.get) == 0, "an ellipsis is not counted"
    # the attention's two Einsums are counted in the report's MACs
    model, _ = einsum_attention()
    rep = api.prune(model, ratio=0.5).report
    projections = 4 * T * E * E
    assert rep["macs_before"] == projections + 2 * HEADS * T * T * D, rep["macs_before"]
