"""Ops that keep channels in place along the axes they do not change: Pad, Resize/Upsample,
Expand; and ops that carry no channels at all (Constant, Shape, Size)."""

from __future__ import annotations

import numpy as np
import onnx

from compressor.analysis.context import AnalysisContext
from compressor.analysis.registry import Rule, register_rule
from compressor.analysis.rules._shape_source import adapts, check_unchanged, rewrite_entry, trace, value_deps


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
    """Channels pass through an axis the resize keeps. Resize's ``sizes`` states the channel count:
    its entry for a channel axis must follow the pruned channels (a literal is restated, exact only
    under the ``stretch`` policy, which scales each axis on its own), and its other entries are
    never touched (spatial sizes read at run time stay dynamic)."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x, y = node.input[0], node.output[0]
        ctx.copy_layouts(x, y, node=node)
        order = _resized_axes(node, ctx)
        if order is None or not ctx.layouts(x):
            return
        sizes = node.input[3]
        what = f"Resize '{ctx.label(node)}' sizes"
        policy = ctx.attr(node, "keep_aspect_ratio_policy", "stretch")
        policy = policy.decode() if isinstance(policy, bytes) else policy
        if policy != "stretch":
            for ax, lay in ctx.layouts(x).items():
                if ax in order:
                    ctx.freeze_layout(lay, f"Resize '{ctx.label(node)}' keeps the aspect ratio ({policy}) "
                                           f"over channel axis {ax}")
        if ctx.is_const(sizes):
            return
        # computed sizes: fine where the entry for a channel axis follows the pruned channels
        # (F.interpolate(x, size=...) copies N, C from x.shape), and the others read no channels
        entries = trace(ctx, sizes)
        if entries is None:
            for ax, lay in ctx.layouts(x).items():
                ctx.freeze_layout(lay, f"Resize '{ctx.label(node)}' takes its sizes from a run-time tensor")
            for t, a in sorted(value_deps(ctx, sizes)):
                ctx.freeze_layout(ctx.layout(t, a), f"{what} reads the channel count of '{t}' axis {a}")
            return
        lays = ctx.layouts(x)
        for pos, e in enumerate(entries):
            ax = order[pos] if pos < len(order) else None
            if ax in lays:
                if not adapts(ctx, e, lays[ax], what, sizes):
                    ctx.freeze_layout(lays[ax], f"Resize '{ctx.label(node)}' computes a size for channel axis "
                                                f"{ax} that would not follow the pruned channels")
            else:
                check_unchanged(ctx, e, sizes, what)

    def rewrite(self, node, ctx) -> None:
        order = _resized_axes(node, ctx)
        if order is None:
            return
        old_shape, new_shape = ctx.old_shape(node.output[0]), ctx.new_shape(node.output[0])
        if not ctx.is_const(node.input[3]):
            for pos, e in enumerate(trace(ctx.analysis.ctx, node.input[3]) or []):
                if pos < len(order):
                    rewrite_entry(ctx, e, node.input[3], int(old_shape[order[pos]]), int(new_shape[order[pos]]))
            return
        # constant sizes: only the entries of channel axes change (spatial sizes may differ from
        # the output shape at the verification shape: keep_aspect_ratio_policy)
        sizes = ctx.value(node.input[3])
        if sizes is None:
            return
        new = np.array(sizes, copy=True).reshape(-1)
        for pos, ax in enumerate(order[:new.size]):
            if old_shape[ax] != new_shape[ax]:
                new[pos] = new_shape[ax]
        if not np.array_equal(new, np.asarray(sizes).reshape(-1)):
            ctx.replace_input(node, 3, new.reshape(np.shape(sizes)))


def _resized_axes(node: onnx.NodeProto, ctx) -> list[int] | None:
    """The axes a Resize's ``sizes`` entries are for, in order; None when it has no sizes."""
    if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
        return None
    rank = ctx.rank(node.input[0])
    axes = ctx.attr(node, "axes", None)
    if axes is None:
        return list(range(rank or 0))
    return [int(a) % rank if rank else int(a) for a in axes]


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
