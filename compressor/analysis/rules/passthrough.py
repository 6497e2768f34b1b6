"""Ops that keep channels in place along the axes they do not change: Pad, Resize/Upsample,
Expand; and ops that carry no channels at all (Constant, Shape, Size)."""

from __future__ import annotations

import numpy as np
import onnx

from compressor.analysis.context import AnalysisContext
from compressor.analysis.registry import Rule, register_rule
from compressor.analysis.rules._shape_source import adapts, entry_deps, rewrite_literal, trace


@register_rule("Constant", "Shape", "Size", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform",
               "RandomNormalLike", "RandomUniformLike", "Range")
class NoChannels(Rule):
    """Outputs carry no tracked channels; a Shape of a pruned tensor changes with it, which the
    Reshape/Expand rules check where such values are used (analysis/shape_reads.py). A Size counts
    the channels into one number that nothing traces: its input's groups are frozen."""

    def analyze(self, node, ctx):
        if node.op_type == "Size" and node.input:
            ctx.freeze_tensor(node.input[0], f"Size '{ctx.label(node)}' counts the channels of '{node.input[0]}'")


@register_rule("Pad")
class Pad(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        # Padding a tracked axis would mix channels with pad values, and pads of +k and -k keep its
        # length but shift its channels: only an axis padded by zero on both sides passes through.
        lays = ctx.layouts(x)
        rank = ctx.rank(x)
        if lays and rank:
            pads = _pads(node, ctx, rank)
            for ax, lay in lays.items():
                if pads is None or pads[ax] or pads[ax + rank]:
                    ctx.freeze_layout(lay, f"Pad '{ctx.label(node)}' pads axis {ax}, which carries channels"
                                           + (" (run-time pads)" if pads is None else ""))
        ctx.copy_layouts(x, node.output[0], node=node)


def _pads(node: onnx.NodeProto, ctx: AnalysisContext, rank: int) -> list[int] | None:
    """Begin and end pads of every axis (2 x rank values), or None if they are not constants."""
    if ctx.opset < 11:
        pads = ctx.attr(node, "pads", None)
        return None if pads is None else [int(p) for p in pads]
    if len(node.input) < 2 or not node.input[1]:
        return [0] * (2 * rank)
    values = ctx.value(node.input[1])
    if values is None:
        return None
    values = [int(v) for v in np.asarray(values).reshape(-1)]
    if len(node.input) > 3 and node.input[3]:  # opset 18: pads given for these axes only
        axes = ctx.value(node.input[3])
        if axes is None:
            return None
        axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            full[a], full[a + rank] = values[k], values[k + len(axes)]
        return full
    return values if len(values) == 2 * rank else None


@register_rule("Resize", "Upsample")
class Resize(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x, y = node.input[0], node.output[0]
        ctx.copy_layouts(x, y, node=node)
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
            if ctx.layouts(x) and not ctx.is_const(node.input[3]):
                # computed sizes: fine where the entry for a channel axis is read from a tensor
                # with the same channels (F.interpolate(x, size=...) copies N, C from x.shape)
                entries = trace(ctx, node.input[3])
                axes = ctx.attr(node, "axes", None)
                rank = ctx.rank(x) or 0
                order = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
                for ax, lay in ctx.layouts(x).items():
                    pos = order.index(ax) if ax in order else None
                    e = entries[pos] if entries is not None and pos is not None and pos < len(entries) else None
                    if e is None or not adapts(ctx, e, lay, f"Resize '{ctx.label(node)}' sizes"):
                        ctx.freeze_layout(lay, f"Resize '{ctx.label(node)}' takes its sizes from a run-time tensor")

    def rewrite(self, node, ctx) -> None:
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
            if not ctx.is_const(node.input[3]):
                actx = ctx.analysis.ctx
                entries = trace(actx, node.input[3]) or []
                old_shape, new_shape = ctx.old_shape(node.output[0]), ctx.new_shape(node.output[0])
                axes = ctx.attr(node, "axes", None)
                order = list(range(len(new_shape))) if axes is None else [int(a) for a in axes]
                for pos, e in enumerate(entries):
                    # only sizes that change or read a channel count are pinned: a batch size
                    # read from the input stays dynamic
                    if pos < len(order) and (old_shape[order[pos]] != new_shape[order[pos]]
                                            or entry_deps(actx, e, node.input[3])):
                        rewrite_literal(ctx, e, int(new_shape[order[pos]]))
                return
            sizes = ctx.value(node.input[3])
            new = np.array(ctx.new_shape(node.output[0]), dtype=np.int64)
            axes = ctx.attr(node, "axes", None)
            if axes is not None:
                new = new[list(axes)]
            if sizes is not None and not np.array_equal(sizes, new):
                ctx.replace_input(node, 3, new)


@register_rule("Expand")
class Expand(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x, y = node.input[0], node.output[0]
        xs, ys = ctx.shape(x), ctx.shape(y)
        lays = ctx.layouts(x)
        if not lays:
            return
        if xs is None or ys is None or not ctx.is_const(node.input[1]):
            ctx.barrier(node, "run-time expand shape")
            return
        off = len(ys) - len(xs)
        ctx.copy_layouts(x, y, {ax: ax + off for ax in lays}, node=node)

    def rewrite(self, node, ctx) -> None:
        shape = ctx.value(node.input[1])
        xs_old, xs_new = ctx.old_shape(node.input[0]), ctx.new_shape(node.input[0])
        if shape is None or xs_old == xs_new:
            return
        new = shape.copy()
        off = len(new) - len(xs_old)
        for ax, (o, n) in enumerate(zip(xs_old, xs_new)):
            if o != n and new[ax + off] == o:
                new[ax + off] = n
        if not np.array_equal(new, shape):
            ctx.replace_input(node, 1, new)
