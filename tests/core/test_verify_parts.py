"""The proof compares a concatenated output part by part, and probabilities on their range
(compressor/verify/parts.py).

Found on ultralytics YOLO: ``output0`` puts box pixels (up to ~500) beside class probabilities, so
one relative error for the whole output let a 0.04 error in the probabilities through; and an
untrained model's probabilities (1e-5 ... 2e-4) differ between two correct models by onnxruntime's
Sigmoid precision, ~1e-7 absolute, so its NMS export was refused at 9e-4 "relative" error.
"""

from __future__ import annotations

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.ir.shapes import resolve_inputs
from compressor.verify.oracle import verify
from compressor.verify.parts import PART_FLOOR, PROBABILITY_SCALE, extra_compared

EVERY = staticmethod(lambda name: True)  # the plan's "keeps every channel": here, all do


def _head(bias: np.ndarray, elementary_sigmoid: bool = False, output: str = "out",
          pixels: float = 500.0) -> onnx.ModelProto:
    """out [1, 10] = Concat(boxes = 500 * x @ w_box [1, 4], scores = sigmoid(x @ w_cls + bias) [1, 6]);
    ``elementary_sigmoid`` writes the Sigmoid as 1 / (1 + exp(-x)), exact where onnxruntime's is
    good to ~1e-7 absolute. ``output``: the graph's output (``scores``: the probabilities alone)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w_box"),
             numpy_helper.from_array(np.array(pixels, np.float32), "pixels"),
             numpy_helper.from_array((rng.standard_normal((8, 6)) * 0.1).astype(np.float32), "w_cls"),
             numpy_helper.from_array(np.asarray(bias, np.float32), "bias"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("MatMul", ["x", "w_box"], ["b0"]),
             helper.make_node("Mul", ["b0", "pixels"], ["boxes"]),
             helper.make_node("MatMul", ["x", "w_cls"], ["l0"]),
             helper.make_node("Add", ["l0", "bias"], ["logits"])]
    if elementary_sigmoid:
        nodes += [helper.make_node("Neg", ["logits"], ["neg"]), helper.make_node("Exp", ["neg"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["den"]), helper.make_node("Reciprocal", ["den"], ["scores"])]
    else:
        nodes += [helper.make_node("Sigmoid", ["logits"], ["scores"])]
    nodes += [helper.make_node("Concat", ["boxes", "scores"], ["cat"], axis=1),
              helper.make_node("Identity", ["cat"], ["out"])]
    return _model(nodes, [1, 8], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits)


def _model(nodes, x_shape, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _spec(model):
    return resolve_inputs(model, {})


def test_an_error_in_the_probabilities_beside_pixels_fails_part_by_part():
    ref = _head(np.zeros(6))
    wrong = _head(np.array([0.04, 0, 0, 0, 0, 0]))  # one probability moves by ~0.01
    whole = verify(ref, wrong, _spec(ref))
    assert whole.passed, "measured on the pixels' scale the error hides (what the proof did before)"
    res = verify(ref, wrong, _spec(ref), uncut=EVERY)
    assert not res.passed, res.outputs
    assert res.outputs["scores"] > 5e-3 and res.outputs["boxes"] == 0.0, res.outputs


def test_tiny_probabilities_of_a_correct_model_pass_on_their_range():
    ref = _head(np.full(6, -12.0), output="scores")  # probabilities ~6e-6, as an untrained detector's
    same = _head(np.full(6, -12.0), elementary_sigmoid=True, output="scores")  # the same, another rounding
    plain = verify(ref, same, _spec(ref))
    assert not plain.passed and plain.max_rel_err > 1e-3, "relative to 6e-6, the Sigmoid's rounding fails"
    res = verify(ref, same, _spec(ref), uncut=EVERY)
    assert res.passed, res.outputs
    assert res.outputs["scores"] < 1e-5 and res.outputs["logits"] < 1e-6, res.outputs


def test_a_wrong_logit_is_seen_where_the_probabilities_are_tiny():
    ref = _head(np.full(6, -12.0))
    wrong = _head(np.array([-11.5, -12, -12, -12, -12, -12]))
    res = verify(ref, wrong, _spec(ref), uncut=EVERY)
    assert res.outputs["scores"] < 1e-4, "on the probabilities' range a 3e-6 move is small"
    assert not res.passed and res.outputs["logits"] > 1e-2, "the logits are compared on their own scale"


def _nms_like() -> onnx.ModelProto:
    """An NMS export's head: cat [1, 10, 5] = Concat(boxes [1, 4, 5], sigmoid(logits) [1, 6, 5]);
    transposed to [1, 5, 10] and sliced: the scores' max per anchor (a pinned Greater's input)."""
    rng = np.random.default_rng(1)
    ints = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w_box"),
             numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w_cls"),
             numpy_helper.from_array(ints(4), "s_lo"), numpy_helper.from_array(ints(10), "s_hi"),
             numpy_helper.from_array(ints(3), "m_lo"), numpy_helper.from_array(ints(2), "axis2"),
             numpy_helper.from_array(ints(0), "b_lo"), numpy_helper.from_array(ints(1, 10), "shape")]
    nodes = [helper.make_node("MatMul", ["w_box", "x"], ["boxes"]),
             helper.make_node("MatMul", ["w_cls", "x"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("Concat", ["boxes", "scores"], ["cat"], axis=1),
             helper.make_node("Transpose", ["cat"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Slice", ["t", "s_lo", "s_hi", "axis2"], ["s1"]),
             helper.make_node("ReduceMax", ["s1"], ["best"], axes=[2], keepdims=0),
             helper.make_node("Slice", ["t", "m_lo", "s_hi", "axis2"], ["mixed"]),
             helper.make_node("Slice", ["t", "b_lo", "s_lo", "axis2"], ["bx"]),
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Concat", ["xs", "shape"], ["ints"], axis=0)]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("best", "mixed", "bx")]
    outs.append(helper.make_tensor_value_info("ints", TensorProto.INT64, None))
    return _model(nodes, [1, 3, 5], outs, inits)


def test_probabilities_are_found_through_a_slice_of_a_concatenation():
    m = _nms_like()
    c = extra_compared(m, m, ["best", "mixed", "bx", "ints"], EVERY)
    assert c.floors == {"best": PROBABILITY_SCALE}, "only the slice inside the probabilities is one"
    assert "logits" in c.extra, "and its logits are compared on their own scale"
    assert "xs" not in c.extra, "an integer part (a shape) is not compared as a part"


def test_only_tensors_the_pruned_model_has_and_that_keep_their_channels_are_added():
    m = _head(np.zeros(6))
    c = extra_compared(m, m, ["out"], EVERY)
    assert c.extra == ["boxes", "scores", "logits"] and c.whole == {"boxes": "out", "scores": "out"}, c
    c = extra_compared(m, m, ["out"], lambda name: name != "scores")
    assert c.extra == ["boxes"] and c.floors == {}, c
    renamed = _head(np.zeros(6))
    for node in renamed.graph.node:
        node.output[:] = ["b2" if o == "boxes" else o for o in node.output]
        node.input[:] = ["b2" if i == "boxes" else i for i in node.input]
    assert "boxes" not in extra_compared(m, renamed, ["out"], EVERY).extra, \
        "a tensor the pruned model does not compute is not compared"


def test_a_near_zero_part_is_measured_on_no_less_than_a_thousandth_of_the_whole():
    """A part of values ~1e-9 beside probabilities ~0.5 (an untrained head's) is measured on
    PART_FLOOR x the whole output's scale, not against its own rounding."""
    ref = _head(np.zeros(6), pixels=1e-9)
    near = _head(np.zeros(6), pixels=1.01e-9)  # 1% of the part's own scale, 1e-11 absolute
    res = verify(ref, near, _spec(ref), uncut=EVERY)
    assert res.passed and res.outputs["boxes"] < 1e-6, res.outputs
    off = _head(np.zeros(6), pixels=1e-9 + 1e-4 * PART_FLOOR * 100)  # x100 above what the floor admits
    assert not verify(ref, off, _spec(ref), uncut=EVERY).passed


def _split_head(bias: float, elementary_sigmoid: bool = False, opset: int = 17) -> onnx.ModelProto:
    """YOLOv10's NMS-free head as ultralytics exports it (``preds.split([4, nc], -1)``, a Split where
    the NMS export slices): cat [1, 10, 5] = Concat(boxes [1, 4, 5], sigmoid(logits + bias) [1, 6, 5]),
    transposed to [1, 5, 10] and split into [4, 6] on the last axis; ``best`` = the scores' max per
    anchor (a pinned TopK's input). Opset 11 gives the sizes as the ``split`` attribute."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3)) * 100).astype(np.float32), "w_box"),
             numpy_helper.from_array((rng.standard_normal((6, 3)) * 0.1).astype(np.float32), "w_cls"),
             numpy_helper.from_array(np.array(bias, np.float32), "bias"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("MatMul", ["w_box", "x"], ["boxes"]),
             helper.make_node("MatMul", ["w_cls", "x"], ["l0"]),
             helper.make_node("Add", ["l0", "bias"], ["logits"])]
    if elementary_sigmoid:
        nodes += [helper.make_node("Neg", ["logits"], ["neg"]), helper.make_node("Exp", ["neg"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["den"]), helper.make_node("Reciprocal", ["den"], ["scores"])]
    else:
        nodes += [helper.make_node("Sigmoid", ["logits"], ["scores"])]
    nodes += [helper.make_node("Concat", ["boxes", "scores"], ["cat"], axis=1),
              helper.make_node("Transpose", ["cat"], ["t"], perm=[0, 2, 1])]
    if opset >= 13:
        inits.append(numpy_helper.from_array(np.array([4, 6], np.int64), "sizes"))
        nodes.append(helper.make_node("Split", ["t", "sizes"], ["bx", "sc"], axis=2))
    else:
        nodes.append(helper.make_node("Split", ["t"], ["bx", "sc"], axis=2, split=[4, 6]))
    nodes.append(helper.make_node("ReduceMax", ["sc"], ["best"], axes=[2], keepdims=0))
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("best", "bx")]
    g = helper.make_graph(nodes, "split_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5])],
                          outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("opset", [17, 11])
def test_probabilities_are_found_through_a_split_of_a_concatenation(opset):
    m = _split_head(0.0, opset=opset)
    c = extra_compared(m, m, ["best", "bx"], EVERY)
    assert c.floors == {"best": PROBABILITY_SCALE}, "the split's part inside the probabilities is one, the boxes not"
    assert "logits" in c.extra, "and its logits are compared on their own scale"


def test_tiny_probabilities_through_a_split_pass_on_their_range():
    """yolov10n / yolo26n exported NMS-free (nms=False) were refused at 5.8e-4 / 6.7e-4: the TopK's
    inputs, the scores' max per anchor through a Split, measured on their own ~2e-4 scale against
    onnxruntime's Sigmoid rounding (1.2e-7 absolute)."""
    ref = _split_head(-9.0)  # probabilities ~1e-4, as an untrained detector's
    same = _split_head(-9.0, elementary_sigmoid=True)
    assert not verify(ref, same, _spec(ref)).passed, "relative to 1e-4, the Sigmoid's rounding fails"
    res = verify(ref, same, _spec(ref), uncut=EVERY)
    assert res.passed and res.outputs["best"] < 1e-6, res.outputs
    wrong = _split_head(-8.5)
    res = verify(ref, wrong, _spec(ref), uncut=EVERY)
    assert not res.passed and res.outputs["logits"] > 1e-2, "a wrong logit is still seen"
