"""Concat, Split and Slice along a channel axis: index maps with offsets.

Concat lays its operands' layouts end to end. Split and Slice cut a layout; a cut through a group
splits that group in two everywhere it appears, so each piece can lose channels on its own.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.analysis.context import PARAM, AnalysisContext
from compressor.analysis.layout import LayoutError
from compressor.analysis.registry import Rule, register_rule


def _unify_other_axes(node, ctx: AnalysisContext, inputs, out, skip_axis) -> None:
    rank = ctx.rank(out) or 0
    for a in range(rank):
        if a == skip_axis:
            continue
        ctx.join(node, [(x, a) for x in inputs], out, a, f"axis {a}")


@register_rule("Concat")
class Concat(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        out = node.output[0]
        rank = ctx.rank(out)
        if rank is None:
            ctx.barrier(node, "output rank unknown")
            return
        axis = int(ctx.attr(node, "axis", 0)) % rank
        inputs = [x for x in node.input if x]
        parts = []
        any_tracked = False
        for x in inputs:
            n = ctx.shape(x)[axis]
            if n == 0:
                continue
            lay = ctx.layout(x, axis)
            if lay is None:
                why = f"Concat '{ctx.label(node)}' operand '{x}' is not a pruned tensor"
                gid = ctx.table.new(n, origin=ctx.label(node), frozen=why)
                ctx.placeholders.add(gid)
                lay = ((gid, 1),)
            else:
                any_tracked = True
            parts.extend(lay)
        if any_tracked:
            ctx.set_layout(out, axis, tuple(parts))
        _unify_other_axes(node, ctx, inputs, out, axis)

    def adopt(self, node, ctx, output, axis, layout, commit) -> bool:
        """An axis other than the concatenated one is every operand's: each must take the channels
        (a class token's position embedding concatenated before the patches': PVT's)."""
        rank = ctx.rank(output)
        if rank is None or axis == int(ctx.attr(node, "axis", 0)) % rank:
            return False
        inputs = [(slot, x) for slot, x in enumerate(node.input) if x]
        if not all(ctx.is_const(x) or ctx.adopt(x, axis, layout, node, commit) for _, x in inputs):
            return False
        if commit:
            for slot, x in inputs:
                if ctx.is_const(x):
                    ctx.bind(x, axis, layout, PARAM, node, slot)
            ctx.set_layout(output, axis, layout)
        return True


def _split_sizes(node, ctx: AnalysisContext, axis: int) -> list[int]:
    return [ctx.shape(o)[axis] if o else 0 for o in node.output]


@register_rule("Split")
class Split(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        rank = ctx.rank(x)
        axis = int(ctx.attr(node, "axis", 0)) % rank
        sizes = _split_sizes(node, ctx, axis)
        for out in node.output:
            if out:
                ctx.copy_layouts(x, out, {a: a for a in ctx.layouts(x) if a != axis}, node=node)
        lay = ctx.layout(x, axis)
        if lay is None:
            return
        try:
            start = 0
            pieces = []
            for n in sizes:
                pieces.append(ctx.table.sub(lay, start, start + n))
                start += n
        except LayoutError as exc:
            ctx.freeze_layout(lay, f"Split '{ctx.label(node)}': {exc}")
            return
        for out, piece in zip(node.output, pieces):
            if out and piece:
                ctx.set_layout(out, axis, piece)

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        x = node.input[0]
        axis = int(ctx.attr(node, "axis", 0)) % len(ctx.old_shape(x))
        if ctx.old_shape(x)[axis] == ctx.new_shape(x)[axis]:
            return
        new = np.array([ctx.new_shape(o)[axis] for o in node.output], dtype=np.int64)
        if ctx.opset >= 13:
            ctx.remove_attr(node, "num_outputs")
            if len(node.input) > 1 and node.input[1]:
                ctx.replace_input(node, 1, new)
            else:
                ctx.add_input(node, new)
        else:
            ctx.set_attr(node, "split", [int(v) for v in new])


def _slice_params(node, ctx: AnalysisContext):
    """(starts, ends, axes, steps) as int lists, from attributes (opset < 10) or inputs."""
    rank = ctx.rank(node.input[0])
    if ctx.opset < 10:
        starts = list(ctx.attr(node, "starts"))
        ends = list(ctx.attr(node, "ends"))
        axes = list(ctx.attr(node, "axes", list(range(len(starts)))))
        steps = [1] * len(starts)
        return starts, ends, axes, steps, True
    vals = []
    const = True
    for k in range(1, 5):
        name = node.input[k] if len(node.input) > k else ""
        if not name:
            vals.append(None)
            continue
        const &= ctx.is_const(name)
        v = ctx.value(name)
        vals.append(None if v is None else [int(a) for a in np.asarray(v).reshape(-1)])
    starts, ends, axes, steps = vals
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    return starts, ends, [a % rank for a in axes], steps, const


def _norm_range(start: int, end: int, dim: int) -> tuple[int, int]:
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    return max(0, min(start, dim)), max(0, min(end, dim))


@register_rule("Slice")
class Slice(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x, y = node.input[0], node.output[0]
        lays = ctx.layouts(x)
        if not lays:
            return
        params = _slice_params(node, ctx)
        if params is None:
            ctx.barrier(node, "slice bounds unknown")
            return
        starts, ends, axes, steps, const = params
        # Run-time bounds (x.chunk(2, dim=1) in TorchScript exports computes C // 2) are replaced
        # by constants in surgery, which is exact because the channel counts are static; that is
        # only done when every sliced axis carries channels, so no dynamic axis is pinned.
        const = const or all(a in lays for a in axes)
        sliced = {a: (s, e, st) for s, e, a, st in zip(starts, ends, axes, steps)}
        xs = ctx.shape(x)
        for ax, lay in lays.items():
            if ax not in sliced:
                ctx.copy_layouts(x, y, {ax: ax}, node=node)
                continue
            s, e, st = sliced[ax]
            s, e = _norm_range(s, e, xs[ax])
            if st != 1 or not const:
                why = "a strided slice" if st != 1 else "run-time slice bounds"
                ctx.freeze_layout(lay, f"Slice '{ctx.label(node)}' takes {why} of channel axis {ax}")
                continue
            if (s, e) == (0, xs[ax]):
                ctx.copy_layouts(x, y, {ax: ax}, node=node)
                continue
            try:
                piece = ctx.table.sub(lay, s, e)
            except LayoutError as exc:
                ctx.freeze_layout(lay, f"Slice '{ctx.label(node)}': {exc}")
                continue
            if piece:
                ctx.set_layout(y, ax, piece)

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        x = node.input[0]
        params = _slice_params(node, ctx)
        if params is None:
            return
        starts, ends, axes, steps, _ = params
        old = ctx.old_shape(x)
        new_starts, new_ends = list(starts), list(ends)
        changed = False
        for i, ax in enumerate(axes):
            kept = ctx.kept(x, ax)
            if kept is None:
                continue
            s, e = _norm_range(starts[i], ends[i], old[ax])
            kept = np.asarray(kept)
            new_starts[i] = int((kept < s).sum())
            new_ends[i] = int((kept < e).sum())
            changed = True
        if not changed:
            return
        if ctx.opset < 10:
            ctx.set_attr(node, "starts", new_starts)
            ctx.set_attr(node, "ends", new_ends)
        else:
            ctx.replace_input(node, 1, np.array(new_starts, dtype=np.int64))
            ctx.replace_input(node, 2, np.array(new_ends, dtype=np.int64))
