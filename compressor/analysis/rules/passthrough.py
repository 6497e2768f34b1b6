"""Ops that keep channels in place along the axes they do not change: Pad, Resize/Upsample,
Expand, Tile; and ops that carry no channels at all (Constant, Shape, Size)."""

from __future__ import annotations

import numpy as np
import onnx

from onnx import numpy_helper

from compressor.analysis.context import PARAM, AnalysisContext
from compressor.analysis.layout import Layout
from compressor.analysis.registry import Rule, register_rule
from compressor.analysis.rules._shape_source import (
    Entry,
    adapts,
    check_unchanged,
    fixed_by_plan,
    rewrite_entry,
    trace,
    value_deps,
)


@register_rule("Constant", "Shape", "Size", "EyeLike", "RandomNormal", "RandomUniform",
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

    def adopt(self, node, ctx, output, axis, layout, commit) -> bool:
        """An axis the resize keeps passes the question on to its input, where ``sizes`` (if any)
        will state the pruned length there (constant sizes are restated; computed ones must read
        the input's own length or be -1/a literal surgery restates)."""
        from compressor.analysis.rules.reshape import follows

        x = node.input[0]
        xs, ys = ctx.shape(x), ctx.shape(output)
        if xs is None or ys is None or xs[axis] != ys[axis] or ys[axis] == 1:
            return False
        policy = ctx.attr(node, "keep_aspect_ratio_policy", "stretch")
        if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
            return False
        order = _resized_axes(node, ctx)
        if order is not None and axis in order and not follows(ctx, node.input[3], order.index(axis), x, axis):
            return False
        if not (ctx.is_const(x) or ctx.adopt(x, axis, layout, node, commit)):
            return False
        if commit:
            if ctx.is_const(x):
                ctx.bind(x, axis, layout, PARAM, node, 0)
            ctx.set_layout(output, axis, layout)
        return True

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
    """y = x broadcast to ``shape``. An axis where x already has y's length keeps its channels when
    the shape entry keeps that length after pruning: 1 (or torch's -1), a literal surgery restates,
    or ``Shape(t)[k]`` of a tensor carrying the same channels (``z.expand_as(y)``, the two layouts
    are unified). An axis that x broadcasts (length 1) takes the channels of the tensor whose
    channel count the entry reads at run time (``zeros.expand(y.shape)``); a constant x of full
    length there is sliced with them. A constant that only a consumer couples with channels (a
    ViT class token ``cls.expand(b, -1, -1)`` concatenated with the patch tokens) is sliced with
    that consumer's channels. Anything else freezes the channels it touches, never the whole node."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x, shape, y = node.input[0], node.input[1], node.output[0]
        xs, ys = ctx.shape(x), ctx.shape(y)
        where = f"Expand '{ctx.label(node)}'"
        entries = _expand_entries(ctx, shape)
        if xs is None or ys is None or entries is None:
            for lay in ctx.layouts(x).values():
                ctx.freeze_layout(lay, f"{where} takes its shape from a run-time tensor it cannot read entry by entry")
            for t, a in sorted(value_deps(ctx, shape)):
                ctx.freeze_layout(ctx.layout(t, a), f"{where} shape reads the channel count of '{t}' axis {a}")
            return
        rank = len(ys)
        off_x, off_s = rank - len(xs), rank - len(entries)
        for a in range(rank):
            xa = a - off_x
            dx = xs[xa] if xa >= 0 else 1
            lay = ctx.layout(x, xa) if xa >= 0 else None
            e = entries[a - off_s] if a >= off_s else Entry("const", 1)
            keeps = e.kind == "const" and e.value in (1, -1)
            if lay is not None:
                if dx != ys[a]:
                    ctx.freeze_layout(lay, f"{where} broadcasts channel axis {xa} of '{x}'")
                    check_unchanged(ctx, e, shape, f"{where} shape")
                    continue
                if not (keeps or ctx.is_const(shape) or adapts(ctx, e, lay, f"{where} shape", shape)):
                    ctx.freeze_layout(lay, f"{where} computes a size for channel axis {a} that would not follow "
                                           "the pruned channels at every input shape")
                ctx.set_layout(y, a, lay)
                continue
            read = _channel_read(ctx, e)
            if read is not None:  # the entry reads a channel count at run time: y's axis carries it
                if dx == 1:
                    if ys[a] != 1:
                        ctx.set_layout(y, a, read)
                elif ctx.is_const(x):
                    ctx.bind(x, xa, read, PARAM, node, 0)
                    ctx.set_layout(y, a, read)
                else:
                    ctx.freeze_layout(read, f"{where} combines channels with untracked tensor '{x}'")
                continue
            check_unchanged(ctx, e, shape, f"{where} shape")
            restated = keeps or ctx.is_const(shape) or (e.where is not None and fixed_by_plan(ctx, e, shape))
            if ctx.is_const(x) and dx == ys[a] and dx > 1 and restated:
                coupled = _coupled_layout(ctx, y, a)
                if coupled is not None:
                    ctx.bind(x, xa, coupled, PARAM, node, 0)
                    ctx.set_layout(y, a, coupled)

    def adopt(self, node, ctx, output, axis, layout, commit) -> bool:
        """An axis that x broadcasts from length 1 to a length the plan restates holds copies of one
        value (``F.normalize`` as the dynamo exporter writes it: the norm, Expand-ed to the channels
        of what it divides): any channels can be taken from it. An axis x has whole passes the
        question on to x (a constant x is sliced)."""
        x, shape = node.input[0], node.input[1]
        xs, ys = ctx.shape(x), ctx.shape(output)
        entries = _expand_entries(ctx, shape)
        if xs is None or ys is None or entries is None or len(entries) > len(ys):
            return False
        xa = axis - (len(ys) - len(xs))
        off_s = len(ys) - len(entries)
        e = entries[axis - off_s] if axis >= off_s else Entry("const", 1)
        dx = xs[xa] if xa >= 0 else 1
        if dx == 1:
            if ys[axis] == 1 or not (ctx.is_const(shape) or (e.where is not None and fixed_by_plan(ctx, e, shape))):
                return False
        elif dx == ys[axis]:
            keeps = (e.kind == "const" and e.value in (1, -1)) or ctx.is_const(shape)
            if not keeps or not (ctx.is_const(x) or ctx.adopt(x, xa, layout, node, commit)):
                return False
            if commit and ctx.is_const(x):
                ctx.bind(x, xa, layout, PARAM, node, 0)
        else:
            return False
        if commit:
            ctx.set_layout(output, axis, layout)
        return True

    def rewrite(self, node, ctx) -> None:
        shape, y = node.input[1], node.output[0]
        old, new = ctx.old_shape(y), ctx.new_shape(y)
        if old == new:
            return
        if not ctx.is_const(shape):
            entries = _expand_entries(ctx.analysis.ctx, shape) or []
            off = len(old) - len(entries)
            for i, e in enumerate(entries):
                if not (e.kind == "const" and e.value in (1, -1)):
                    rewrite_entry(ctx, e, shape, int(old[i + off]), int(new[i + off]))
            return
        value = ctx.value(shape)
        out = np.array(value, copy=True).reshape(-1)
        off = len(old) - out.size
        for i in range(out.size):
            if old[i + off] != new[i + off] and out[i] == old[i + off]:
                out[i] = new[i + off]
        if not np.array_equal(out, np.asarray(value).reshape(-1)):
            ctx.replace_input(node, 1, out.reshape(np.shape(value)))


@register_rule("Tile")
class Tile(Rule):
    """y = x repeated ``repeats[a]`` times along each axis a (``x.repeat(1, n, 1)``: SwiftFormer's
    global query tiled over the tokens). An axis repeated once keeps its channels; a channel axis
    repeated r times carries them r times over, one segment per copy (at most MAX_MERGED_COPIES),
    and loses the same channels in every copy. The repeats count copies, not channels, so pruning
    never changes them; run-time repeats are read entry by entry, and an entry for a channel axis
    that is not a literal freezes its channels."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        from compressor.analysis.rules.reshape import MAX_MERGED_COPIES

        x, repeats, y = node.input[0], node.input[1], node.output[0]
        lays = ctx.layouts(x)
        where = f"Tile '{ctx.label(node)}'"
        value = ctx.value(repeats) if ctx.is_const(repeats) else None
        entries = [Entry("const", int(v)) for v in np.asarray(value).reshape(-1)] if value is not None \
            else trace(ctx, repeats)
        if entries is None:
            for lay in lays.values():
                ctx.freeze_layout(lay, f"{where} takes its repeats from a run-time tensor")
            for t, a in sorted(value_deps(ctx, repeats)):
                ctx.freeze_layout(ctx.layout(t, a), f"{where} repeats read the channel count of '{t}' axis {a}")
            return
        for a, e in enumerate(entries):
            if value is None:
                check_unchanged(ctx, e, repeats, f"{where} repeats")
            lay = lays.get(a)
            if lay is None:
                continue
            if e.kind != "const" or e.value is None or not 1 <= e.value <= MAX_MERGED_COPIES:
                ctx.freeze_layout(lay, f"{where} repeats channel axis {a} a number of times that is not a "
                                       f"literal from 1 to {MAX_MERGED_COPIES}")
                continue
            ctx.set_layout(y, a, tuple(lay) * e.value)


@register_rule("ConstantOfShape")
class ConstantOfShape(Rule):
    """y = a constant fill of shape ``shape``. A constant shape: y carries no channels. A shape read
    at run time: an entry ``Shape(t)[k]`` gives y's axis the channels of t's axis k (``zeros_like(y)``,
    which torch's legacy exporter writes as ConstantOfShape(Shape(y))): the fill is one value, so it
    follows the pruned count by itself. Other entries must keep their value (check_unchanged)."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        shape, y = node.input[0], node.output[0]
        if ctx.is_const(shape):
            return
        where = f"ConstantOfShape '{ctx.label(node)}' shape"
        entries = trace(ctx, shape)
        if entries is None:
            for t, a in sorted(value_deps(ctx, shape)):
                ctx.freeze_layout(ctx.layout(t, a), f"{where} reads the channel count of '{t}' axis {a}")
            return
        for a, e in enumerate(entries):
            read = _channel_read(ctx, e)
            if read is not None:
                ctx.set_layout(y, a, read)
            else:
                check_unchanged(ctx, e, shape, where)

    def rewrite(self, node, ctx) -> None:
        shape, y = node.input[0], node.output[0]
        if ctx.is_const(shape):
            return
        old, new = ctx.old_shape(y), ctx.new_shape(y)
        for i, e in enumerate(trace(ctx.analysis.ctx, shape) or []):
            if _channel_read(ctx.analysis.ctx, e) is None:
                rewrite_entry(ctx, e, shape, int(old[i]), int(new[i]))


def _channel_read(ctx: AnalysisContext, entry: Entry) -> Layout | None:
    """The layout of the channel axis whose length ``entry`` reads as it is (``Shape(t)[k]``)."""
    prod = entry.prod
    if prod is None or prod.coef != 1 or len(prod.dims) != 1:
        return None
    return ctx.layout(*prod.dims[0])


def _coupled_layout(ctx: AnalysisContext, y: str, axis: int) -> Layout | None:
    """The channels that a consumer of ``y`` couples with its axis ``axis``: the layout another
    operand of a broadcasting op, or of a Concat along another axis, already carries there."""
    from compressor.analysis.rules.elementwise import BROADCAST

    ys = ctx.shape(y)
    for node, _ in ctx.index.consumers.get(y, ()):
        out_rank = ctx.rank(node.output[0]) if node.output and node.output[0] else None
        if out_rank is None:
            continue
        if node.op_type == "Concat":
            if int(ctx.attr(node, "axis", 0)) % out_rank == axis:
                continue
            at = axis
        elif node.op_type in BROADCAST:
            at = axis + out_rank - len(ys)
        else:
            continue
        for z in node.input:
            zs = ctx.shape(z) if z and z != y else None
            za = at - (out_rank - len(zs)) if zs is not None else -1
            if za >= 0 and zs[za] == ys[axis] and ctx.layout(z, za) is not None:
                return ctx.layout(z, za)
    return None


def _expand_entries(ctx: AnalysisContext, shape: str) -> list[Entry] | None:
    """The entries of an Expand shape. torch's legacy exporter writes ``x.expand(b, -1, -1)`` as
    ``Where(Equal(s, -1), 1, s)``: entries -1 of s become 1 (keep x's length), the others are s's."""
    found = ctx.index.producer.get(shape)
    if found is not None and found[1].op_type == "Where":
        cond, if_true, if_false = found[1].input
        test = ctx.index.producer.get(cond)
        if test is not None and test[1].op_type == "Equal" and if_false in test[1].input:
            other = [t for t in test[1].input if t != if_false]
            src = trace(ctx, if_false)
            if src is not None and len(other) == 1 and _fill(ctx, other[0]) == -1 and _fill(ctx, if_true) == 1:
                return [Entry("const", 1) if e.kind == "const" and e.value == -1 else e for e in src]
    return trace(ctx, shape)


def _fill(ctx: AnalysisContext, name: str, depth: int = 0) -> int | None:
    """The one value every element of ``name`` holds, at every input shape, where it is evident:
    a constant, a ConstantOfShape's fill, a product of such values."""
    value = ctx.const(name)
    if value is not None:
        flat = np.unique(np.asarray(value).reshape(-1))
        return int(flat[0]) if flat.size == 1 and float(flat[0]).is_integer() else None
    found = ctx.index.producer.get(name)
    if found is None or depth > 4:
        return None
    node = found[1]
    if node.op_type == "ConstantOfShape":
        fill = ctx.attr(node, "value", None)
        return 0 if fill is None else _fill_of(numpy_helper.to_array(fill))
    if node.op_type in ("Cast", "Identity"):
        return _fill(ctx, node.input[0], depth + 1)
    if node.op_type == "Mul":
        a, b = (_fill(ctx, t, depth + 1) for t in node.input[:2])
        return None if a is None or b is None else a * b
    return None


def _fill_of(value: np.ndarray) -> int | None:
    flat = np.asarray(value).reshape(-1)
    return int(flat[0]) if flat.size == 1 and float(flat[0]).is_integer() else None
