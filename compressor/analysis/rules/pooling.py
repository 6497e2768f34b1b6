"""Pooling and reductions. Spatial pooling keeps channels. A reduction over a channel axis is a
consumer (the masked original zeroes the removed channels at its input) where the pruned model can
compute the same from the kept channels: a sum, a sum of squares or absolute values, a log-sum
(zeros add nothing); a mean, rescaled by kept/total after it (the masked original still divides by
the full count: ConvNeXt-V2's GRN, CBAM's channel mean); a max or min, followed by ``Max(y, 0)`` or
``Min(y, 0)`` where channels were removed (the masked original's zeros take part). Anything else
(a product, log-sum-exp, arg-max, a non-float mean) is a barrier."""

from __future__ import annotations

import math

import numpy as np
import onnx

from compressor.analysis.context import AnalysisContext
from compressor.analysis.registry import Rule, register_rule
from compressor.ir.graph import node_attr


@register_rule("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
class Pool(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        if len(node.output) > 1 and node.output[1]:
            ctx.barrier(node, "MaxPool indices encode channel positions")
            return
        ctx.copy_layouts(x, node.output[0], {ax: ax for ax in ctx.layouts(x) if ax < 2}, node=node)
        for ax, lay in ctx.layouts(x).items():
            if ax >= 2:
                ctx.freeze_layout(lay, f"{node.op_type} '{ctx.label(node)}' pools over tracked axis {ax}")


@register_rule("RoiAlign", "MaxRoiPool")
class RoiPool(Rule):
    """Pools each region of interest out of X [N, C, H, W] into [R, C, h, w]: the channels pass
    through axis 1 (Faster R-CNN's box head reads the FPN through it); axis 0 of the output counts
    the regions, not the batch, and the spatial axes are resampled, so channels carried there
    freeze. The regions and their batch indices are read at run time and carry no channels."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        ctx.copy_layouts(x, node.output[0], {1: 1} if ctx.layout(x, 1) is not None else {}, node=node)
        for ax, lay in ctx.layouts(x).items():
            if ax != 1:
                ctx.freeze_layout(lay, f"{node.op_type} '{ctx.label(node)}' pools regions over tracked axis {ax}")
        for name in node.input[1:]:
            if name:
                ctx.freeze_tensor(name, f"{node.op_type} '{ctx.label(node)}' reads regions from '{name}'")


#: Reductions over a channel axis that the masked input's zeros do not change.
SUMS = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum")
#: Reductions the pruned model rewrites to what they compute on the masked input (Reduce.rewrite).
RESCALED = ("ReduceMean", "ReduceMax", "ReduceMin")
_FLOATS = (np.float16, np.float32, np.float64)


def reduced_axes(node: onnx.NodeProto, rank: int, value) -> list[int]:
    """The axes a Reduce node reduces over (non-negative); ``value`` reads a constant axes input."""
    axes = node_attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in np.asarray(value(node.input[1])).reshape(-1)]
    if not axes:
        return [] if int(node_attr(node, "noop_with_empty_axes", 0)) else list(range(rank))
    return sorted({int(a) % rank for a in axes})


def _consume_point(ctx, node: onnx.NodeProto) -> bool:
    """Was ``node`` analysed as a consumer of its input's channels (not a LayerNorm's statistics)?"""
    nodes = ctx.analysis.index.nodes
    return any(cp.input_index == 0 and nodes[cp.node_index].output[:1] == node.output[:1]
               for cp in ctx.analysis.consume_points)


@register_rule("ReduceMax", "ReduceMin", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2",
               "ReduceProd", "ReduceLogSum", "ReduceLogSumExp", "ArgMax", "ArgMin")
class Reduce(Rule):
    """(ReduceMean registers a subclass that also knows a written-out LayerNorm: layernorm_decomposed.py.)"""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        rank = ctx.rank(x)
        if rank is None:
            ctx.barrier(node, "input rank unknown")
            return
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [int(ctx.attr(node, "axis", 0))]
        else:
            axes = ctx.attr(node, "axes", None)
            if axes is None and len(node.input) > 1 and node.input[1]:
                v = ctx.value(node.input[1])
                if v is None:
                    ctx.barrier(node, "reduction axes unknown")
                    return
                axes = [int(a) for a in v.reshape(-1)]
        if not axes:
            if int(ctx.attr(node, "noop_with_empty_axes", 0)):
                ctx.copy_layouts(x, node.output[0], node=node)
                return
            axes = list(range(rank))
        axes = sorted({a % rank for a in axes})
        keepdims = int(ctx.attr(node, "keepdims", 1))
        amap = {}
        for ax, lay in ctx.layouts(x).items():
            if ax in axes:
                if self.consumes(node, ctx):
                    ctx.consume(node, 0, ax)
                else:
                    ctx.freeze_layout(lay, self.freeze_reason(node, ctx, ax))
                continue
            amap[ax] = ax if keepdims else ax - sum(1 for a in axes if a < ax)
        ctx.copy_layouts(x, node.output[0], amap, node=node)

    def consumes(self, node: onnx.NodeProto, ctx: AnalysisContext) -> bool:
        """Can the pruned node compute what it computes on the masked input (see the module)?"""
        if node.op_type in SUMS:
            return True
        return node.op_type in RESCALED and ctx.index.tensor_dtype(node.input[0]) in _FLOATS

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        if node.op_type not in RESCALED or not _consume_point(ctx, node):
            return
        x = node.input[0]
        old, new = ctx.old_shape(x), ctx.new_shape(x)
        if old is None or new is None or old == new:
            return
        axes = reduced_axes(node, len(old), ctx.value)
        total, kept = math.prod(old[a] for a in axes), math.prod(new[a] for a in axes)
        if total == kept:
            return
        dtype = ctx.index.tensor_dtype(x)
        if node.op_type == "ReduceMean":  # the mean of the kept channels, times kept, over total
            # (two whole numbers, exact in float16 too; kept / total as one constant is not: 8 / 12
            # rounds to 0.66650390625 in float16, 2.4e-4 off what the masked original computes)
            ctx.follow(node, 0, "Mul", np.asarray(kept, dtype=dtype), ("Div", np.asarray(total, dtype=dtype)))
        else:  # the removed channels' zeros in the masked original's max (min)
            ctx.follow(node, 0, "Max" if node.op_type == "ReduceMax" else "Min", np.zeros((), dtype=dtype))

    def freeze_reason(self, node: onnx.NodeProto, ctx: AnalysisContext, axis: int) -> str:
        """Why reducing over tracked ``axis`` freezes its channels."""
        return f"{node.op_type} '{ctx.label(node)}' reduces over channel axis {axis}"
