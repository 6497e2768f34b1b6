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
    Reshape/Expand rules check where such values are used."""

    def analyze(self, node, ctx):
        return None


@register_rule("Pad")
class Pad(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        # Padding a tracked axis would mix channels with pad values; copy_layouts freezes it
        # because that axis changes length. Zero-length pads keep lengths and pass through.
        ctx.copy_layouts(x, node.output[0], node=node)


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
