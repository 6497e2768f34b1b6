"""Pooling and reductions. Spatial pooling keeps channels; a reduction over a channel axis is a
consumer when it is a plain sum (exact under masking) and a barrier otherwise (a mean divides by
the channel count, a max sees the removed channels)."""

from __future__ import annotations

import onnx

from compressor.analysis.context import AnalysisContext
from compressor.analysis.registry import Rule, register_rule


@register_rule("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
               "MaxRoiPool")
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
                if node.op_type in ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"):
                    ctx.consume(node, 0, ax)
                else:
                    ctx.freeze_layout(lay, self.freeze_reason(node, ctx, ax))
                continue
            amap[ax] = ax if keepdims else ax - sum(1 for a in axes if a < ax)
        ctx.copy_layouts(x, node.output[0], amap, node=node)

    def freeze_reason(self, node: onnx.NodeProto, ctx: AnalysisContext, axis: int) -> str:
        """Why reducing over tracked ``axis`` freezes its channels."""
        return f"{node.op_type} '{ctx.label(node)}' reduces over channel axis {axis}"
