"""The oracle's reference for a normalisation whose channels are pruned: statistics over the kept
channels only.

Zero-masking a LayerNorm's input would still count the removed channels (as zeros) in its mean and
variance, which is not what pruning means: the pruned model's LayerNorm normalises over the kept
channels. The reference therefore replaces such a node with its decomposition in which the removed
channels are masked out of the statistics as well as out of the result:

    m = mask (1 kept, 0 removed),  k = sum(m)
    mean = sum(x * m) / k,   d = (x - mean) * m,   var = sum(d * d) / k
    y = d / sqrt(var + epsilon) * scale + bias

which equals LayerNorm(x[kept]) on the kept channels (the removed ones output ``bias``, and every
consumer masks them). Everything else about the node (epsilon, the axis, scale and bias) is read
from the node itself.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.ir.graph import node_attr


def masked_layernorm(node: onnx.NodeProto, mask: np.ndarray, prefix: str) -> tuple[list[onnx.NodeProto],
                                                                                  list[onnx.TensorProto]]:
    """Nodes and constants computing ``node`` (a LayerNormalization over its last axis) with the
    channels where ``mask`` is 0 left out of the statistics. The last node writes ``node.output[0]``."""
    if node.op_type != "LayerNormalization":
        raise ValueError(f"no masked reference for {node.op_type}")
    if any(node.output[1:]):
        raise ValueError(f"LayerNormalization '{node.name}' has its mean/inv-std outputs in use")
    x = node.input[0]
    scale = node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    eps = float(node_attr(node, "epsilon", 1e-5))
    dtype = np.asarray(mask).dtype if np.asarray(mask).dtype.kind == "f" else np.dtype(np.float32)
    mask = np.asarray(mask, dtype=dtype).reshape(-1)  # the input's type: a float16 model's reference
    k = float(mask.sum())  # stays float16 (and is widened with it, verify/upcast.py)
    if k <= 0:
        raise ValueError(f"LayerNormalization '{node.name}' would keep no channel")

    def n(tag: str) -> str:
        return f"{prefix}_{tag}"

    consts = [
        numpy_helper.from_array(mask, n("mask")),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), n("axes")),
        numpy_helper.from_array(np.array(k, dtype=dtype), n("k")),  # an integer: exact in float16 too
        numpy_helper.from_array(np.array(eps, dtype=dtype), n("eps")),
    ]
    nodes = [
        helper.make_node("Mul", [x, n("mask")], [n("xm")]),
        helper.make_node("ReduceSum", [n("xm"), n("axes")], [n("s1")], keepdims=1),
        helper.make_node("Div", [n("s1"), n("k")], [n("mean")]),
        helper.make_node("Sub", [x, n("mean")], [n("d0")]),
        helper.make_node("Mul", [n("d0"), n("mask")], [n("d")]),
        helper.make_node("Mul", [n("d"), n("d")], [n("sq")]),
        helper.make_node("ReduceSum", [n("sq"), n("axes")], [n("s2")], keepdims=1),
        helper.make_node("Div", [n("s2"), n("k")], [n("var")]),
        helper.make_node("Add", [n("var"), n("eps")], [n("ve")]),
        helper.make_node("Sqrt", [n("ve")], [n("std")]),
        helper.make_node("Div", [n("d"), n("std")], [n("norm")]),
    ]
    if bias is None:
        nodes.append(helper.make_node("Mul", [n("norm"), scale], [node.output[0]]))
    else:
        nodes.append(helper.make_node("Mul", [n("norm"), scale], [n("scaled")]))
        nodes.append(helper.make_node("Add", [n("scaled"), bias], [node.output[0]]))
    return nodes, consts
