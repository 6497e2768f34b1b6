"""MACs and parameter counts from concrete shapes (before pruning, or after, from new shapes)."""

from __future__ import annotations

import math
from typing import Callable

import onnx

from compressor.ir.graph import GraphIndex

ShapeFn = Callable[[str], tuple[int, ...] | None]


def node_macs(node: onnx.NodeProto, shape: ShapeFn) -> int:
    op = node.op_type
    try:
        if op in ("Conv", "ConvTranspose"):
            w = shape(node.input[1])
            if op == "Conv":
                return math.prod(shape(node.output[0])) * math.prod(w[1:])
            return math.prod(shape(node.input[0])) * math.prod(w[1:])
        if op == "Gemm":
            a = shape(node.input[0])
            k = a[0] if _attr(node, "transA") else a[1]
            return math.prod(shape(node.output[0])) * k
        if op == "MatMul":
            a = shape(node.input[0])
            return math.prod(shape(node.output[0])) * a[-1]
    except (TypeError, IndexError):
        return 0
    return 0


def _attr(node, name, default=0):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def count(index: GraphIndex, shape: ShapeFn | None = None,
          gone: set[str] | frozenset = frozenset()) -> tuple[int, int, dict[str, int]]:
    """(total MACs, float parameters, MACs per node) using ``shape`` (default: the original shapes).
    ``gone``: labels of nodes a plan takes out of the graph (surgery/drop.py); their MACs and the
    constants only they read are not counted."""
    shape = shape or index.shape
    per_node = {}
    for node in index.nodes:
        if gone and index.node_label(node) in gone:
            continue
        m = node_macs(node, shape)
        if m:
            per_node[index.node_label(node)] = m

    def counted(name: str) -> bool:
        readers = index.consumers.get(name, ())
        return not gone or not readers or any(index.node_label(n) not in gone for n, _ in readers)

    params = sum(math.prod(shape(n) or ()) for n in index.float_constants if counted(n))
    return sum(per_node.values()), params, per_node
