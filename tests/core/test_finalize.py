"""surgery/finalize.py: the pruned model carries re-inferred ``value_info`` for the tensors the input
declared one for, and no others.

Found on torchvision's RetinaNet (tools/detection_coverage.py): the pruned model, written with the
~1900 ``value_info`` entries shape inference gives, crashed in onnxruntime (1.31, any optimisation
level but none) on every image with no candidate box at some level: given those shapes,
onnxruntime rewrites the box clipping's ``Reshape(stacked, Concat(Shape(boxes)[0], Shape(boxes)[1]))``
into ``Reshape(stacked, [0, -1])``, which cannot size an empty tensor. The export itself, which
declares no ``value_info``, runs there (and the proof, which runs unoptimised, could not see it).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compressor import api


def _i64(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.int64)))


def _detector(value_info: bool = False) -> onnx.ModelProto:
    """x [1, 3, 8, 8] -> conv (8, prunable) -> relu -> conv (5) -> mean over H, W: 5 scores; the boxes
    of a table whose score is above 0 (NonZero), split into x and y pairs, stacked [K, 2, 2] and
    reshaped back to the boxes' shape read at run time, as torchvision's clip_boxes_to_image."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((5, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.full(5, -1.0, np.float32), "b2"),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "table"),
             numpy_helper.from_array(np.array(0.0, np.float32), "thresh")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
             helper.make_node("ReduceMean", ["c2"], ["m"], axes=[0, 2, 3], keepdims=0),
             helper.make_node("Greater", ["m", "thresh"], ["keep"]),
             helper.make_node("NonZero", ["keep"], ["nz"]), _i64("zero", 0),
             helper.make_node("Gather", ["nz", "zero"], ["idx"], axis=0),
             helper.make_node("Gather", ["table", "idx"], ["picked"], axis=0),
             _i64("flat", [-1, 4]), helper.make_node("Reshape", ["picked", "flat"], ["boxes"]),
             _i64("s0", [0]), _i64("s1", [1]), _i64("end", [2**62]), _i64("ax1", [1]), _i64("two", [2]),
             helper.make_node("Slice", ["boxes", "s0", "end", "ax1", "two"], ["bx"]),
             helper.make_node("Slice", ["boxes", "s1", "end", "ax1", "two"], ["by"]),
             helper.make_node("Unsqueeze", ["bx", "two"], ["ux"]), helper.make_node("Unsqueeze", ["by", "two"], ["uy"]),
             helper.make_node("Concat", ["ux", "uy"], ["stacked"], axis=2),
             helper.make_node("Shape", ["boxes"], ["shape"]), _i64("d0", 0), _i64("d1", 1),
             helper.make_node("Gather", ["shape", "d0"], ["n0"], axis=0),
             helper.make_node("Gather", ["shape", "d1"], ["n1"], axis=0), _i64("ax0", [0]),
             helper.make_node("Unsqueeze", ["n0", "ax0"], ["u0"]), helper.make_node("Unsqueeze", ["n1", "ax0"], ["u1"]),
             helper.make_node("Concat", ["u0", "u1"], ["target"], axis=0),
             helper.make_node("Reshape", ["stacked", "target"], ["out"])]
    g = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["K", 4])], inits)
    if value_info:
        g.value_info.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, [1, 8, 8, 8]))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """As a deployment runs it: onnxruntime's default session options (every optimisation)."""
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_pruned_detector_runs_on_an_image_with_no_box():
    model = _detector()
    none, some = np.zeros((1, 3, 8, 8), np.float32), np.random.default_rng(3).standard_normal((1, 3, 8, 8))
    some = (some * 5).astype(np.float32)
    assert _run(model, none).shape == (0, 4), "the scores are the bias, -1: no box"
    assert _run(model, some).shape[0] > 0, "this image has boxes"
    pruned = api.prune(model, ratio=0.5).model
    assert _run(pruned, none).shape == (0, 4)
    assert _run(pruned, some).shape[1] == 4
    assert len(pruned.graph.value_info) == 0, "the export declared none: none are written"
    # what the pruned model was given before: every inferred value_info (onnxruntime then fails)
    annotated = onnx.shape_inference.infer_shapes(pruned)
    try:
        _run(annotated, none)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's fault, pinned here so a fix shows
        assert "cannot be reshaped" in str(exc), exc
    else:  # an onnxruntime that sizes it: the rule above still keeps the output as the input was
        pass


def test_the_value_info_the_input_declared_is_kept_with_the_pruned_shapes():
    pruned = api.prune(_detector(value_info=True), ratio=0.5).model
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in pruned.graph.value_info}
    assert shapes == {"r1": [1, 4, 8, 8]}, shapes
