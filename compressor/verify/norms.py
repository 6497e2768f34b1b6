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
from the node itself. A LayerNorm written out in elementary ops (analysis/rules/layernorm_decomposed.py)
gets the same computation over its axis, without scale and bias: its affine nodes stay as they are,
after it.

A GroupNorm with one group (analysis/rules/groupnorm.py) normalises over the channels and every
spatial position: its statistics are those of the kept channels times every position. The spatial
axes are averaged first (every channel has as many positions, so the mean over the kept channels of
those means is the mean over all their elements, and the count stays the number of kept channels,
whatever the spatial size at run time):

    mean = sum_c(m * mean_hw(x)) / k,   d = (x - mean) * m,   var = sum_c(mean_hw(d * d)) / k

which equals GroupNorm(1)(x[:, kept]) on the kept channels. The ``GroupNormalization`` node's scale
and bias (one value, opset 18; one per channel, opset 21) are applied after it along the channel
axis; the exporters' form (Reshape -> InstanceNormalization -> Reshape) is replaced whole, its
InstanceNormalization's one-value scale and bias applied after it, its affine nodes left after it.
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
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    return masked_normalization(node.input[0], node.output[0], mask, prefix, axis=-1,
                                epsilon=float(node_attr(node, "epsilon", 1e-5)), scale=node.input[1], bias=bias,
                                label=f"LayerNormalization '{node.name}'")


def masked_groupnorm(node: onnx.NodeProto, mask: np.ndarray, prefix: str, rank: int,
                     opset: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and constants computing ``node`` (a GroupNormalization with one group over a tensor of
    ``rank`` dims) with the channels where ``mask`` is 0 left out of the statistics. Its scale and
    bias (of length 1 at opset 18, C at 21) are reshaped to [-1, 1, ...] to broadcast along the
    channel axis. The last node writes ``node.output[0]``."""
    if node.op_type != "GroupNormalization" or int(node_attr(node, "num_groups", 0)) != 1:
        raise ValueError(f"no masked reference for {node.op_type} other than a GroupNormalization with one group")
    shape = f"{prefix}_param_shape"
    consts = [numpy_helper.from_array(np.array([-1] + [1] * (rank - 2), dtype=np.int64), shape)]
    nodes, params = [], []
    for slot, tag in ((1, "scale"), (2, "bias")):
        name = node.input[slot] if len(node.input) > slot else ""
        if not name:
            params.append(None)
            continue
        nodes.append(helper.make_node("Reshape", [name, shape], [f"{prefix}_{tag}"]))
        params.append(f"{prefix}_{tag}")
    more, more_consts = masked_normalization(node.input[0], node.output[0], mask, prefix, axis=1, rank=rank,
                                             spatial=tuple(range(2, rank)),
                                             epsilon=float(node_attr(node, "epsilon", 1e-5)), scale=params[0],
                                             bias=params[1], opset=opset,
                                             label=f"GroupNormalization '{node.name}'")
    return nodes + more, consts + more_consts


def masked_normalization(x: str, output: str, mask: np.ndarray, prefix: str, *, axis: int = -1, rank: int = 0,
                         epsilon: float, scale: str | None = None, bias: str | None = None, opset: int = 18,
                         spatial: tuple[int, ...] = (),
                         label: str = "the normalisation") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and constants writing ``output`` = ``x`` normalised over ``axis`` (of a tensor of
    ``rank`` dims; any rank when ``axis`` is -1) and every position of the ``spatial`` axes (a
    GroupNorm with one group; ``axis`` non-negative then), with the channels where ``mask`` is 0
    left out of the statistics, then times ``scale`` and plus ``bias`` where given (a written-out
    norm's affine stays in its own nodes: neither is given then). ``opset`` is the model's:
    ReduceSum takes its axes as an attribute before 13, ReduceMean before 18."""
    dtype = np.asarray(mask).dtype if np.asarray(mask).dtype.kind == "f" else np.dtype(np.float32)
    mask = np.asarray(mask, dtype=dtype).reshape(-1)  # the input's type: a float16 model's reference
    k = float(mask.sum())  # stays float16 (and is widened with it, verify/upcast.py)
    if k <= 0:
        raise ValueError(f"{label} would keep no channel")
    if axis >= 0:  # broadcast along ``axis``: the axes after it have length 1
        mask = mask.reshape((-1,) + (1,) * (rank - 1 - axis))

    def n(tag: str) -> str:
        return f"{prefix}_{tag}"

    consts = [
        numpy_helper.from_array(mask, n("mask")),
        numpy_helper.from_array(np.array(k, dtype=dtype), n("k")),  # an integer: exact in float16 too
        numpy_helper.from_array(np.array(epsilon, dtype=dtype), n("eps")),
    ]
    if opset >= 13:
        consts.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), n("axes")))
    if spatial and opset >= 18:
        consts.append(numpy_helper.from_array(np.array(spatial, dtype=np.int64), n("spatial")))

    def reduce_sum(src: str, dst: str) -> list[onnx.NodeProto]:
        """``dst`` = the sum over ``axis`` of the mean over ``spatial`` of ``src``."""
        out = []
        if spatial:
            mid = f"{dst}_hw"
            out.append(helper.make_node("ReduceMean", [src, n("spatial")], [mid], keepdims=1) if opset >= 18
                       else helper.make_node("ReduceMean", [src], [mid], axes=list(spatial), keepdims=1))
            src = mid
        out.append(helper.make_node("ReduceSum", [src, n("axes")], [dst], keepdims=1) if opset >= 13
                   else helper.make_node("ReduceSum", [src], [dst], axes=[axis], keepdims=1))
        return out

    nodes = [
        helper.make_node("Mul", [x, n("mask")], [n("xm")]),
        *reduce_sum(n("xm"), n("s1")),
        helper.make_node("Div", [n("s1"), n("k")], [n("mean")]),
        helper.make_node("Sub", [x, n("mean")], [n("d0")]),
        helper.make_node("Mul", [n("d0"), n("mask")], [n("d")]),
        helper.make_node("Mul", [n("d"), n("d")], [n("sq")]),
        *reduce_sum(n("sq"), n("s2")),
        helper.make_node("Div", [n("s2"), n("k")], [n("var")]),
        helper.make_node("Add", [n("var"), n("eps")], [n("ve")]),
        helper.make_node("Sqrt", [n("ve")], [n("std")]),
    ]
    steps = [(op, param) for op, param in (("Mul", scale), ("Add", bias)) if param]
    cur = n("norm") if steps else output
    nodes.append(helper.make_node("Div", [n("d"), n("std")], [cur]))
    for k_step, (op, param) in enumerate(steps):
        dst = output if k_step == len(steps) - 1 else n("scaled")
        nodes.append(helper.make_node(op, [cur, param], [dst]))
        cur = dst
    return nodes, consts
