"""The oracle and non-finite outputs: NaN and inf must not hide a difference.

``max(0.0, nan)`` is 0.0, so a relative error that came out NaN used to be dropped, and a wrong
model whose output held a NaN (a Sqrt or Log of a negative value on random inputs) passed with
error 0 (found by fuzzing: a channel-shifting Pad before a Sqrt was written as verified).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor.ir.shapes import InputSpec
from compressor.verify.oracle import _output_error, verify

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("x, y, rel", [
    ([1.0, 2.0], [1.0, 2.0], 0.0),
    ([1.0, 2.0], [1.0, 2.5], 0.25),
    ([NAN, 2.0], [NAN, 2.0], 0.0),           # the same NaN in the same place: compared elsewhere
    ([NAN, 2.0], [NAN, 3.0], 0.5),           # ... and a difference elsewhere still counts
    ([NAN, 2.0], [1.0, 2.0], INF),           # NaN on one side only
    ([1.0, 2.0], [NAN, 2.0], INF),
    ([INF, 2.0], [INF, 2.0], 0.0),
    ([INF, 2.0], [-INF, 2.0], INF),          # infinities of opposite sign
    ([INF, 2.0], [NAN, 2.0], INF),
    ([NAN, NAN], [NAN, NAN], 0.0),           # nothing finite, every value equal: equal
])
def test_output_error(x, y, rel):
    got, _ = _output_error(np.array(x), np.array(y))
    assert got == rel or (math.isinf(rel) and math.isinf(got))


def _sqrt_model(w: np.ndarray) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sqrt", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [numpy_helper.from_array(w.astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_a_wrong_model_with_nan_outputs_fails():
    w = np.random.default_rng(0).standard_normal((3, 2, 1, 1))
    spec = InputSpec({"x": (1, 2, 4, 4)}, {"x": np.dtype(np.float32)})
    same = verify(_sqrt_model(w), _sqrt_model(w), spec)
    assert same.passed and same.max_rel_err == 0.0
    other = w.copy()
    other[0] *= 2.0  # channel 0 doubled: where it is finite, its root differs by a factor sqrt(2)
    wrong = verify(_sqrt_model(w), _sqrt_model(other), spec)
    assert not wrong.passed and wrong.max_rel_err > 0.1
