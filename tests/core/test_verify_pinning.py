"""The proof pins discrete decisions (compressor/verify/oracle.py, DISCRETE_OPS).

A detector's TopK over scores with near-ties reorders its candidates when a score moves by one ulp:
in torchvision's SSD, RetinaNet and Faster R-CNN exports every score agreed with the masked original
to 1e-7 while the boxes after the TopK differed by hundreds of pixels, and the proof failed or
passed by chance (stop 21's segmentation/detection exploration). Pinned, the pruned model runs on
the reference's decisions and the decisions' inputs are compared like outputs: a cut that moves
the scores within the tolerance passes, one that moves them further fails, whatever the ties do.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import api
from compressor.ir.shapes import resolve_inputs
from compressor.verify.oracle import verify
from tests.core.graphs import G


def _detector(bias: np.ndarray, k: int = 3) -> onnx.ModelProto:
    """scores [1, 6] = x @ w + bias; TopK(k) over them; the boxes [6, 4] (a second head) gathered at
    the winners. ``bias`` decides the ties."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.zeros((8, 6), np.float32), "w_score"),
             numpy_helper.from_array(bias.astype(np.float32), "bias"),
             numpy_helper.from_array(rng.standard_normal((8, 24)).astype(np.float32), "w_box"),
             numpy_helper.from_array(np.array([k], np.int64), "k"),
             numpy_helper.from_array(np.array([6, 4], np.int64), "box_shape")]
    nodes = [helper.make_node("MatMul", ["x", "w_score"], ["s0"]),
             helper.make_node("Add", ["s0", "bias"], ["scores"]),
             helper.make_node("TopK", ["scores", "k"], ["top", "idx"], axis=1),
             helper.make_node("MatMul", ["x", "w_box"], ["b0"]),
             helper.make_node("Reshape", ["b0", "box_shape"], ["boxes_all"]),
             helper.make_node("Squeeze", ["idx"], ["idx1"]),
             helper.make_node("Gather", ["boxes_all", "idx1"], ["boxes"], axis=0)]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("top", TensorProto.FLOAT, [1, k]),
                           helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [k, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


TIED = np.array([1.0, 0.5, 0.5, 0.2, 0.1, 0.0])  # candidates 1 and 2 tied for the second place


def _spec(model):
    return resolve_inputs(model, {})


def test_a_near_tie_reordered_by_an_ulp_passes_when_pinned_and_failed_before():
    ref = _detector(TIED + np.array([0, 1e-7, 0, 0, 0, 0]))  # candidate 1 wins the tie
    new = _detector(TIED + np.array([0, 0, 1e-7, 0, 0, 0]))  # candidate 2 does: the scores agree to 1e-7
    plain = verify(ref, new, _spec(ref))
    assert not plain.passed and plain.outputs["boxes"] > 1e-2, "unpinned, the reordered boxes differ"
    pinned = verify(ref, new, _spec(ref), uncut=lambda name: True)
    assert pinned.passed and pinned.pinned == ["top", "idx"], pinned
    assert "scores" in pinned.outputs and pinned.outputs["scores"] <= 1e-6, "the TopK's input is compared"


def test_pinned_decisions_still_catch_a_wrong_model():
    ref = _detector(TIED)
    wrong = _detector(TIED + np.array([0, 0, 0, 0.05, 0, 0]))  # scores off by 5%
    res = verify(ref, wrong, _spec(ref), uncut=lambda name: True)
    assert not res.passed and res.outputs["scores"] > 1e-2, res.outputs
    box_wrong = _detector(TIED)
    w = next(t for t in box_wrong.graph.initializer if t.name == "w_box")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, "w_box"))
    res = verify(ref, box_wrong, _spec(ref), uncut=lambda name: True)
    assert not res.passed and res.outputs["boxes"] > 1e-3, "what follows a pinned decision is still compared"


def test_a_comparison_on_pruned_channels_is_not_pinned_and_the_model_prunes():
    """Greater on a feature map whose channels are cut has a narrower shape in the pruned model: it
    is left to run (pinning it would feed the reference's wider decision)."""
    g = G(opset=17)
    x = g.input("x", [1, 3, 8, 8])
    h = g.conv(x, 3, 16)
    gate = g.op("Where", [g.op("Greater", [h, g.const(np.array(0.0, np.float32))]), h,
                          g.op("Mul", [h, g.const(np.array(0.1, np.float32))])])
    y = g.conv(gate, 16, 4)
    res = api.prune(g.model([y]), ratio=0.5, importance="l2")
    v = res.report["verify"]
    assert v["passed"] and v["max_rel_err"] <= 1e-5 and v["pinned"] is None, v
    assert res.report["channels"]["removed"] == 8


def test_a_prune_pins_a_topk_after_the_pruned_layers():
    """End to end: conv features (pruned) -> per-position score head -> TopK over positions -> the
    winners' box regressions. The TopK reads no pruned channel: it is pinned; its scores compared."""
    g = G(opset=17)
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 16)])
    scores = g.op("Reshape", [g.conv(h, 16, 1, k=1), g.const(np.array([1, 64], np.int64))])
    boxes = g.op("Transpose", [g.op("Reshape", [g.conv(h, 16, 4, k=1), g.const(np.array([4, 64], np.int64))])],
                 perm=[1, 0])
    top, idx = g.op("TopK", [scores, g.const(np.array([5], np.int64))], n_out=2, axis=1)
    picked = g.op("Gather", [boxes, g.op("Squeeze", [idx, g.const(np.array([0], np.int64))])], axis=0)
    model = g.model([top, picked])
    res = api.prune(model, ratio=0.5, importance="l2")
    v = res.report["verify"]
    assert v["passed"] and v["max_rel_err"] <= 1e-5, v
    assert v["pinned"] and idx in v["pinned"] and scores in v["outputs"], v
    assert res.report["channels"]["removed"] == 8


@pytest.mark.parametrize("op", ["If"])
def test_an_if_on_uncut_tensors_is_pinned(op):
    """torchvision's batched NMS sits in an If (no boxes -> empty): the If is pinned as a whole,
    the tensors its branches read compared."""
    then_out = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)
    else_out = helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)
    then_g = helper.make_graph([helper.make_node("Identity", ["scores"], ["t_out"])], "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Neg", ["scores"], ["e_out"])], "else", [], [else_out])
    ref = _detector(TIED)
    ref.graph.node.extend([helper.make_node("ReduceMax", ["scores"], ["m"], keepdims=0),
                           helper.make_node("Greater", ["m", "half"], ["cond0"]),
                           helper.make_node("Squeeze", ["cond0"], ["cond"]),
                           helper.make_node(op, ["cond"], ["branch"], then_branch=then_g, else_branch=else_g)])
    ref.graph.initializer.append(numpy_helper.from_array(np.array([0.5], np.float32), "half"))
    ref.graph.output.append(helper.make_tensor_value_info("branch", TensorProto.FLOAT, [1, 6]))
    res = verify(ref, ref, _spec(ref), uncut=lambda name: True)
    assert res.passed and "branch" in res.pinned and "scores" in res.outputs, res
