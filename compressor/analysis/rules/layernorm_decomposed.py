"""ReduceMean, and a LayerNorm written out in elementary ops (torch's TorchScript exports at
opset <= 16 and other exporters that write it so), which has no LayerNormalization node:

    mean = ReduceMean(x, axes=[a], keepdims=1)        # opset 18+: axes is an input
    d    = Sub(x, mean)
    var  = ReduceMean(Pow(d, 2), axes=[a])            # or Mul(d, d)
    y    = Div(d, Sqrt(Add(var, eps)))                # or Mul(d, Reciprocal(...)); eps a scalar constant

Matched exactly (one axis, keepdims, every intermediate read only inside the pattern, float
types), the pattern is pruned through like LayerNormalization (rules/normalization.py): the
channels of ``x`` along ``a`` flow to ``y`` (the element-wise rules carry them through Sub and Div,
and slice an affine ``y * gamma + beta`` after it), the pruned model's ReduceMeans then average
over the kept channels, and a NormPoint makes the oracle's reference compute the statistics over
the kept channels too (verify/norms.py). Anything else is a plain ReduceMean (pooling.Reduce: over
a channel axis a consumer, rescaled to the masked original), except where it looked like such a
pattern and did not match: that freezes the channels, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from compressor.analysis.context import AnalysisContext
from compressor.analysis.registry import register_rule
from compressor.analysis.rules.pooling import Reduce
from compressor.ir.graph import GraphIndex, node_attr

_FLOATS = (np.float16, np.float32, np.float64)  # the oracle's masked reference is written in numpy's float types


@dataclass(frozen=True)
class DecomposedLayerNorm:
    """A matched pattern: ``output`` is ``x`` normalised over ``axis`` (non-negative), without affine."""

    x: str
    axis: int
    epsilon: float
    output: str
    mean_node: int  # index of the first ReduceMean (its input[0] is x)
    var_node: int  # index of the ReduceMean of the squares
    nodes: tuple[int, ...]  # every node index of the pattern, the first ReduceMean first


class _Miss(Exception):
    """The graph differs from the decomposition; the message says where."""


def _reduce_axis(index: GraphIndex, node: onnx.NodeProto, what: str) -> int:
    """The one axis a ReduceMean with keepdims=1 reduces over (non-negative)."""
    rank = index.rank(node.input[0])
    if rank is None:
        raise _Miss(f"the rank of the {what}'s input is unknown")
    if int(node_attr(node, "keepdims", 1)) != 1:
        raise _Miss(f"the {what} drops the reduced axis (keepdims=0)")
    axes = node_attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        if not index.is_const(node.input[1]):
            raise _Miss(f"the {what}'s axes are computed at run time")
        axes = index.const(node.input[1]).reshape(-1).tolist()
    if not axes or len({int(a) % rank for a in axes}) != 1:
        raise _Miss(f"the {what} reduces over several axes")
    return int(axes[0]) % rank


def _scalar(index: GraphIndex, name: str) -> float | None:
    """The value of a constant holding one element, else None."""
    v = index.const(name) if index.is_const(name) else None
    return None if v is None or v.size != 1 or v.dtype.kind not in "fiu" else float(v.reshape(-1)[0])


def _reader(index: GraphIndex, tensor: str, what: str) -> tuple[int, onnx.NodeProto]:
    """The one node reading ``tensor`` (in one or more of its inputs); nothing else may read it."""
    if tensor in index.output_names:
        raise _Miss(f"the {what} '{tensor}' is a graph output")
    readers = {id(n): n for n, _ in index.consumers.get(tensor, ())}
    if len(readers) != 1:
        raise _Miss(f"the {what} '{tensor}' is read by {len(readers)} nodes, not only by the pattern")
    node = next(iter(readers.values()))
    if not node.output or not node.output[0] or any(k < 0 for _, k in index.consumers[tensor]):
        raise _Miss(f"the {what} '{tensor}' is read inside a subgraph")
    return index.producer[node.output[0]][0], node


def _expect(node: onnx.NodeProto, ops: tuple[str, ...], what: str) -> None:
    if node.domain not in ("", "ai.onnx") or node.op_type not in ops:
        raise _Miss(f"the {what} is read by {node.op_type}, not {' or '.join(ops)}")


def _same_shape(index: GraphIndex, a: str, b: str, what: str) -> None:
    sa, sb = index.shape(a), index.shape(b)
    if sa is None or sa != sb:
        raise _Miss(f"the {what} changes the shape ({sa} -> {sb})")


def match(index: GraphIndex, mean_idx: int) -> DecomposedLayerNorm:
    """The pattern that starts at ReduceMean node ``mean_idx``, or :class:`_Miss` saying why not."""
    mean_node = index.nodes[mean_idx]
    x, mean = mean_node.input[0], mean_node.output[0]
    if index.tensor_dtype(x) not in _FLOATS:
        raise _Miss(f"'{x}' is not of a float type")
    axis = _reduce_axis(index, mean_node, "mean")
    shape = index.shape(x)
    if shape is None or index.shape(mean) != tuple(1 if a == axis else n for a, n in enumerate(shape)):
        raise _Miss("the mean's shape is not the input's with the reduced axis of length 1")
    sub_idx, sub = _reader(index, mean, "mean")
    _expect(sub, ("Sub",), "mean")
    if list(sub.input) != [x, mean]:
        raise _Miss("the mean is not subtracted from the tensor it averages")
    d = sub.output[0]
    _same_shape(index, x, d, "centring Sub")
    readers = {id(n): n for n, _ in index.consumers.get(d, ())}
    if d in index.output_names or len(readers) != 2 or any(k < 0 for _, k in index.consumers[d]):
        raise _Miss(f"the centred '{d}' is not read by exactly the square and the division")
    square = next((n for n in readers.values() if (n.op_type == "Pow" and n.input[0] == d)
                   or (n.op_type == "Mul" and list(n.input) == [d, d])), None)
    if square is None:
        raise _Miss("the centred input is not squared by Pow(d, 2) or Mul(d, d)")
    if square.op_type == "Pow" and _scalar(index, square.input[1]) != 2.0:
        raise _Miss("the Pow's exponent is not the constant 2")
    divide = next(n for n in readers.values() if n is not square)
    sq = square.output[0]
    _same_shape(index, d, sq, "square")
    var_idx, var_node = _reader(index, sq, "square")
    _expect(var_node, ("ReduceMean",), "square")
    if _reduce_axis(index, var_node, "variance") != axis:
        raise _Miss("the variance is not reduced over the mean's axis")
    add_idx, add = _reader(index, var_node.output[0], "variance")
    _expect(add, ("Add",), "variance")
    eps_name = next((e for e in add.input if e != var_node.output[0]), None)
    eps = None if eps_name is None else _scalar(index, eps_name)
    if eps is None:
        raise _Miss("epsilon is not a scalar constant")
    _same_shape(index, var_node.output[0], add.output[0], "epsilon Add")
    sqrt_idx, sqrt = _reader(index, add.output[0], "variance plus epsilon")
    _expect(sqrt, ("Sqrt",), "variance plus epsilon")
    std = sqrt.output[0]
    last_idx, last = _reader(index, std, "standard deviation")
    nodes = [mean_idx, sub_idx, index.producer[sq][0], var_idx, add_idx, sqrt_idx]
    if last.op_type == "Reciprocal":
        nodes.append(last_idx)
        inv = last.output[0]
        last_idx, last = _reader(index, inv, "inverse standard deviation")
        _expect(last, ("Mul",), "inverse standard deviation")
        ok = sorted(last.input) == sorted([d, inv])
    else:
        _expect(last, ("Div",), "standard deviation")
        ok = list(last.input) == [d, std]
    if not ok or last is not divide:
        raise _Miss("the centred input is not divided by its standard deviation")
    _same_shape(index, d, last.output[0], "division")
    return DecomposedLayerNorm(x, axis, eps, last.output[0], mean_idx, var_idx, tuple(nodes + [last_idx]))


def _start(index: GraphIndex, node: onnx.NodeProto) -> int | None:
    """The first ReduceMean of a would-be pattern ``node`` belongs to (as its mean or its variance):
    the mean is subtracted from the ReduceMean's own input. None when it does not look like one."""
    def is_mean_of(m: str, x: str) -> int | None:
        prod = index.producer.get(m)
        if prod is not None and prod[1].op_type == "ReduceMean" and prod[1].input[0] == x:
            return prod[0]
        return None

    def squared_and_averaged(d: str) -> bool:  # a variance is taken of the centred tensor
        return any(sq.op_type in ("Pow", "Mul") and sq.input[0] == d
                   and any(r.op_type == "ReduceMean" for r, _ in index.consumers.get(sq.output[0], ()))
                   for sq, _ in index.consumers.get(d, ()))

    for reader, _ in index.consumers.get(node.output[0], ()):  # node as the mean
        if (reader.op_type == "Sub" and list(reader.input) == [node.input[0], node.output[0]]
                and squared_and_averaged(reader.output[0])):  # plain centring (x - mean) is no norm
            return index.producer[node.output[0]][0]
    square = index.producer.get(node.input[0])  # node as the variance: ReduceMean(d ** 2)
    if square is None or square[1].op_type not in ("Pow", "Mul"):
        return None
    centre = index.producer.get(square[1].input[0])
    if centre is None or centre[1].op_type != "Sub" or len(centre[1].input) != 2:
        return None
    return is_mean_of(centre[1].input[1], centre[1].input[0])


def explain(index: GraphIndex, node: onnx.NodeProto) -> tuple[DecomposedLayerNorm | None, str | None]:
    """(the pattern ``node`` is part of, None) or (None, why a would-be pattern does not match;
    None when ``node`` does not look like a part of one)."""
    start = _start(index, node)
    if start is None:
        return None, None
    try:
        found = match(index, start)
    except _Miss as miss:
        return None, str(miss)
    me = index.producer[node.output[0]][0]
    if me not in (found.mean_node, found.var_node):
        return None, "the ReduceMean is not the pattern's mean or variance"
    return found, None


@register_rule("ReduceMean")
class ReduceMean(Reduce):
    """A plain reduction (pooling.Reduce), except as part of a written-out LayerNorm."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        found, _ = explain(ctx.index, node)
        if found is None or not ctx.prune_norms:
            super().analyze(node, ctx)
            return
        x = node.input[0]
        ctx.copy_layouts(x, node.output[0], {ax: ax for ax in ctx.layouts(x) if ax != found.axis}, node=node)
        if ctx.index.producer[node.output[0]][0] == found.mean_node and ctx.layout(x, found.axis) is not None:
            ctx.norm_point(node, found.axis, also=found.nodes[1:], epsilon=found.epsilon, output=found.output)

    def consumes(self, node: onnx.NodeProto, ctx: AnalysisContext) -> bool:
        """A plain channel mean is a consumer (pooling.Reduce); one that is, or nearly is, a
        LayerNorm's statistics is not: kept whole by --freeze-norms, or frozen where the pattern
        differs (rescaling such a mean to the masked original would change what the norm means)."""
        found, miss = explain(ctx.index, node)
        return found is None and miss is None and super().consumes(node, ctx)

    def freeze_reason(self, node: onnx.NodeProto, ctx: AnalysisContext, axis: int) -> str:
        found, miss = explain(ctx.index, node)
        base = super().freeze_reason(node, ctx, axis)
        if found is not None:
            return f"{base} (a LayerNorm written out, kept whole by --freeze-norms)"
        if miss is not None:
            return f"{base} (not an exact LayerNorm decomposition: {miss})"
        return base
