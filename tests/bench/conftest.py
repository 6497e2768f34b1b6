"""Tiny ONNX models for the bench tests, built with onnx.helper (IR 10, opset 17 so that
onnxruntime 1.31 loads them whatever onnx's default IR version is)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

IR_VERSION = 10
OPSET = 17


def build_model(
    inputs: Sequence[tuple[str, int, Sequence | None]],
    nodes: Sequence[onnx.NodeProto],
    outputs: Sequence[str],
    initializers: Sequence[onnx.TensorProto] = (),
    name: str = "tiny",
) -> onnx.ModelProto:
    """inputs: (name, elem type, dims or None for unknown rank); dims may hold str/None."""
    graph_inputs = [helper.make_tensor_value_info(n, t, dims) for n, t, dims in inputs]
    graph_outputs = [onnx.ValueInfoProto(name=o) for o in outputs]  # type left to inference
    graph = helper.make_graph(list(nodes), name, graph_inputs, graph_outputs,
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    return model


def relu_model(dims: Sequence = ("N", 4), name: str = "relu") -> onnx.ModelProto:
    """x -> Relu -> y, one float input of the given dims."""
    return build_model([("x", TensorProto.FLOAT, list(dims))],
                       [helper.make_node("Relu", ["x"], ["y"])], ["y"], name=name)


def matmul_chain(depth: int, width: int = 32, name: str = "chain") -> onnx.ModelProto:
    """x[N, width] -> depth x (MatMul, Relu): work grows with depth (for speed ordering)."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [width, width],
                                (rng.standard_normal((width, width)) / width).astype(np.float32)
                                .ravel())
    nodes, current = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [current, "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    return build_model([("x", TensorProto.FLOAT, ["N", width])], nodes, ["y"], [weight], name=name)


@pytest.fixture
def tiny_paths(tmp_path):
    """Two saved models with a dynamic batch: a deep chain (slow) and a shallow one (fast)."""
    slow, fast = tmp_path / "slow.onnx", tmp_path / "fast.onnx"
    onnx.save(matmul_chain(8, name="slow"), slow)
    onnx.save(matmul_chain(1, name="fast"), fast)
    return str(slow), str(fast)


@pytest.fixture
def models():
    """The builders above, for tests (conftest modules are not imported by name)."""

    class Builders:
        build = staticmethod(build_model)
        relu = staticmethod(relu_model)
        chain = staticmethod(matmul_chain)

    return Builders
