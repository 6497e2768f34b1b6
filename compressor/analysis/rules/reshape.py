"""Reshape, Flatten, Squeeze, Unsqueeze and Transpose: move channels between axes.

A reshape is factored into blocks of input axes and output axes with equal products. A channel
axis that is the outermost of a merge (Flatten before a Gemm) makes each channel own a block of
features; an axis split into (outer, inner) (768 features -> 12 heads x 64) coarsens its groups into
blocks so that whole heads are kept or removed; a block of axes led by the channel axis reshaped
into another block of axes (``view(b, c * h, w)`` then ``view(b, c, h * w)``; ``view(b, g, -1)``)
maps each channel's run of elements onto the outer output axis, coarsening the groups where one
output position holds several whole channels. Anything else (channels interleaved with other axes,
as in a channel shuffle) freezes the groups involved. An axis holding the channels once per position
of an outer axis (a merge's copies) splits back into that outer axis and the channels inside it.
An output axis that one input axis moved to, untracked, takes the channels a later consumer couples
it with (Rule.adopt: a position embedding reshaped and transposed before it meets the tokens).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from compressor.analysis.context import PARAM, AnalysisContext
from compressor.analysis.registry import Rule, register_rule
from compressor.analysis.rules._shape_source import (
    adapts,
    check_unchanged,
    fixed_by_plan,
    rewrite_entry,
    trace,
    value_deps,
)
from compressor.analysis.rules.groupnorm import exporter_group_norm, single_group_norm


def factor_blocks(ins: tuple[int, ...], outs: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input axes with runs of output axes of equal product (size-1 axes alone)."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    n, m = len(ins), len(outs)
    while i < n or j < m:
        if i < n and ins[i] == 1:
            blocks.append(([i], [j] if j < m and outs[j] == 1 else []))
            if j < m and outs[j] == 1:
                j += 1
            i += 1
            continue
        if j < m and outs[j] == 1:
            blocks.append(([], [j]))
            j += 1
            continue
        if i >= n or j >= m:
            return None
        bi, bj = [i], [j]
        pi, pj = ins[i], outs[j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= n:
                    return None
                pi *= ins[i]
                bi.append(i)
                i += 1
            else:
                if j >= m:
                    return None
                pj *= outs[j]
                bj.append(j)
                j += 1
        blocks.append((bi, bj))
    return blocks


#: The most copies of the channels a Reshape may merge an outer axis into (a radix, a few heads):
#: each copy is one more segment of the layout.
MAX_MERGED_COPIES = 16


def map_reshape(node, ctx: AnalysisContext, x: str, y: str) -> None:
    xs, ys = ctx.shape(x), ctx.shape(y)
    lays = ctx.layouts(x)
    if not lays:
        return
    blocks = factor_blocks(xs, ys) if xs is not None and ys is not None else None
    if blocks is None:
        ctx.barrier(node, "cannot relate input and output shapes")
        return
    where = f"{node.op_type} '{ctx.label(node)}'"
    for ax, lay in lays.items():
        if single_group_norm(node, ctx, ax):  # GroupNorm(1) written out: statistics over the kept channels
            continue
        blk = next((b for b in blocks if ax in b[0]), None)
        if blk is None or not blk[1]:
            ctx.freeze_layout(lay, f"{where} drops channel axis {ax}")
            continue
        # axes of length 1 inside a block carry nothing (ResNeSt's [N, 2C, 1, 1] -> [N, 1, 2, C]:
        # the channel axis split into the radix and the channels, a cardinality of 1 beside them)
        bi = [a for a in blk[0] if a == ax or xs[a] != 1]
        bj = [a for a in blk[1] if ys[a] != 1] or list(blk[1][:1])
        if len(bi) == 1 and len(bj) == 1:
            ctx.set_layout(y, bj[0], lay)
            continue
        if len(bj) == 1:  # merge: the channels, each over the inner axes' positions, once per
            # position of the outer axes (ResNeSt's radix softmax merged back: [R, 1, C] -> [R*C]
            # carries the channels R times, as the split [R*C] -> [R, C] before it took them)
            k = bi.index(ax)
            outer = math.prod(xs[a] for a in bi[:k])
            if (any(a in lays for a in bi if a != ax) or outer > MAX_MERGED_COPIES
                    or not all(ctx.static_length(x, a) for a in bi[:k])):  # a batch merged in: copies vary
                ctx.freeze_layout(lay, f"{where} interleaves channel axis {ax} with inner axes")
                continue
            factor = math.prod(xs[a] for a in bi[k + 1:])
            ctx.set_layout(y, bj[0], tuple((g, inner * factor) for g, inner in lay) * outer)
            continue
        if len(bi) == 1 and len(bj) >= 2:
            # the merge above taken apart again: an axis holding the channels once per position of
            # an outer axis (the dynamo exporter's attention: keys [B, heads, T, d] merged to
            # [B * heads, T, d], transposed, and split back) splits into that outer axis, which
            # carries no channels, and the channels on the axes inside it
            copies = _copies(ctx, lay, ys[bj[0]])
            if copies is not None and ctx.table.length(copies) == math.prod(ys[a] for a in bj[1:]):
                lay, bj = copies, bj[1:]
                if len(bj) == 1:
                    ctx.set_layout(y, bj[0], lay)
                    continue
        if len(bi) == 1 and len(bj) >= 2 and ((len(bj) == 2 and _swapped_next(ctx, y, bj[0], bj[1]))
                                              or _outer_selected(ctx, y, bj[0])):
            # [C] -> [g, C/g, ...] where the g slices are then swapped inward (a channel shuffle)
            # or taken apart (packed Q/K/V: [3E] -> [3, E] or [3, heads, head_dim], then select
            # 0, 1, 2). Exact when the g slices lose the same channels: the rest carries one
            # group J and the input's channels are J repeated g times (after a shuffle's swap and
            # merge, J owns g positions). J itself is then split over the remaining axes.
            g = ys[bj[0]]
            j = ctx.table.new(ctx.table.length(lay) // g, origin=ctx.label(node))
            ctx.unify(lay, ((j, 1),) * g, f"{where} (slices of channel axis {ax})")  # freezes if impossible
            lay, bj = ((j, 1),), bj[1:]
            if len(bj) == 1:
                ctx.set_layout(y, bj[0], lay)
                continue
        if len(bi) == 1:  # split: outer output axis carries blocks of the inner product
            t = math.prod(ys[a] for a in bj[1:])
            ok = True
            for g, inner in lay:  # first coarsen groups whose channels are finer than a block
                if inner % t == 0 or ctx.table.find(g) in ctx.table.replaced:
                    continue
                if t % inner == 0 and ctx.table.size(g) % (t // inner) == 0:
                    ctx.table.coarsen(g, t // inner)
                else:
                    ok = False
                    break
            lay = ctx.table.normalize(lay)
            ok = ok and all(inner % t == 0 for _, inner in lay)
            if not ok:
                ctx.freeze_layout(lay, f"{where} splits channel axis {ax} across blocks of {t}")
                continue
            out = [(g, inner // t) for g, inner in lay]
            ctx.set_layout(y, bj[0], tuple(out))
            continue
        if exporter_group_norm(node, ctx, y, ax, lay):  # a GroupNorm's Reshape [N, C, *] <-> [N, G, L]
            continue
        why = "with other axes"
        if bi[0] == ax and not any(a in lays for a in bi[1:]):
            out, why = _regroup(ctx, lay, math.prod(xs[a] for a in bi[1:]), math.prod(ys[a] for a in bj[1:]))
            if out is not None:
                ctx.set_layout(y, bj[0], out)
                continue
        ctx.freeze_layout(lay, f"{where} regroups channel axis {ax} {why}" + _group_norm_hint(ctx, y))


def _copies(ctx: AnalysisContext, lay, n: int):
    """The layout ``lay`` is ``n`` copies of (the one returned), or None."""
    lay = ctx.table.normalize(lay)
    if n < 2 or len(lay) % n:
        return None
    part = lay[:len(lay) // n]
    return part if part * n == lay else None


def _regroup(ctx: AnalysisContext, lay, inner_in: int, inner_out: int) -> tuple[tuple | None, str]:
    """A block of axes whose outermost is the channel axis, reshaped into another block of axes
    (``x.view(b, c * h, w)`` then ``.view(b, c, h * w)``; [N, C, H, W] -> [N, G, C/G * H * W]).
    In the flattened block a channel owning ``inner`` positions of the outer axis owns
    ``inner * inner_in`` consecutive elements, and one position of the outer output axis holds
    ``inner_out`` of them. Where a channel's span is a whole number of output positions, the
    channel owns that many; where an output position holds whole channels, the groups are coarsened
    into blocks of that many channels (every element of a position then belongs to one block, so
    what later mixes the inner axes mixes one block only). Returns (the output layout, "") or
    (None, why not)."""
    table = ctx.table
    why = f"into positions of {inner_out} elements that cut through its channels"
    for g, inner in table.normalize(lay):
        span = inner * inner_in
        if span % inner_out == 0 or table.find(g) in table.replaced:
            continue
        if inner_out % span == 0 and table.size(g) % (inner_out // span) == 0:
            table.coarsen(g, inner_out // span)
        else:
            return None, why
    out = []
    for g, inner in table.normalize(lay):
        span = inner * inner_in
        if span % inner_out:
            return None, why
        out.append((g, span // inner_out))
    return tuple(out), ""


def _group_norm_hint(ctx: AnalysisContext, y: str) -> str:
    """Where the regrouped tensor is normalised (an exporter's GroupNorm: Reshape to
    [N, groups, -1] -> InstanceNormalization -> Reshape back), say so: the reason then names what
    the user wrote."""
    if any(n.op_type in ("InstanceNormalization", "MeanVarianceNormalization") for n, _ in ctx.index.consumers.get(y, [])):
        return " (a GroupNorm written as Reshape + InstanceNormalization: its statistics run over groups of channels)"
    return ""


def _swapped_next(ctx: AnalysisContext, y: str, outer: int, inner: int) -> bool:
    """Is ``y`` read only by Transposes that put axis ``inner`` before axis ``outer``?"""
    users = ctx.index.consumers.get(y, [])
    if not users or y in ctx.index.output_names:
        return False
    for node, _ in users:
        if node.op_type != "Transpose":
            return False
        perm = list(ctx.attr(node, "perm", []))
        if outer not in perm or inner not in perm or perm.index(inner) > perm.index(outer):
            return False
    return True


def _axes_operand(ctx: AnalysisContext, node) -> list[int] | None:
    axes = ctx.attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        v = ctx.value(node.input[1])
        axes = None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
    return None if axes is None else list(axes)


def _outer_selected(ctx: AnalysisContext, t: str, axis: int, depth: int = 0) -> bool:
    """Is axis ``axis`` of ``t`` (through Unsqueeze/Squeeze/Transpose) only ever taken apart by a
    constant Gather, Split or Slice (step 1) along it, or combined position by position by a
    softmax or a reduction over it alone (:func:`_mixes_only`), on every path?"""
    users = ctx.index.consumers.get(t, [])
    if not users or depth > 6 or t in ctx.index.output_names:
        return False
    for node, slot in users:
        op = node.op_type
        out = node.output[0]
        if op in _POSITIONWISE and ctx.rank(out) == ctx.rank(t) and len(node.output) == 1:
            # slices multiplied (added, ...) position by position with another tensor (ResNeSt's
            # radix attention times the radix branches): they still meet only at the same channel,
            # as long as what the result's axis goes on to meet is again that (a sum over it)
            if not _outer_selected(ctx, out, axis, depth + 1):
                return False
            continue
        if slot != 0:
            return False
        if op == "Transpose":
            perm = list(ctx.attr(node, "perm", []))
            if axis not in perm or not _outer_selected(ctx, out, perm.index(axis), depth + 1):
                return False
        elif op in ("Unsqueeze", "Squeeze"):
            axes = _axes_operand(ctx, node)
            r_in, r_out = ctx.rank(t), ctx.rank(out)
            if axes is None or r_in is None or r_out is None:
                return False
            if op == "Unsqueeze":
                axes = sorted(a % r_out for a in axes)
                keep = [a for a in range(r_out) if a not in axes]
                new_axis = keep[axis]
            else:
                axes = sorted(a % r_in for a in axes)
                if axis in axes:
                    return False
                new_axis = axis - sum(1 for a in axes if a < axis)
            if not _outer_selected(ctx, out, new_axis, depth + 1):
                return False
        elif op == "Gather":
            r = ctx.rank(t)
            if r is None or int(ctx.attr(node, "axis", 0)) % r != axis or ctx.const(node.input[1]) is None:
                return False
            if np.asarray(ctx.const(node.input[1])).size != 1:
                return False
        elif op == "Split":
            r = ctx.rank(t)
            if r is None or int(ctx.attr(node, "axis", 0)) % r != axis:
                return False
        elif op == "Slice":  # the dynamo exporter's unbind: a Slice of one position, then Squeeze
            from compressor.analysis.rules.concat_split import _slice_params

            params = _slice_params(node, ctx)
            if params is None or not params[4]:
                return False
            starts, ends, axes, steps, _ = params
            if axis not in axes:
                if not _outer_selected(ctx, out, axis, depth + 1):
                    return False
            elif steps[axes.index(axis)] != 1:
                return False
        elif not _mixes_only(ctx, node, t, axis):
            return False
    return True


#: Element-wise ops that combine their inputs position by position (broadcast over size-1 axes).
_POSITIONWISE = frozenset({"Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Clip", "Neg", "Exp", "Abs",
                           "LeakyRelu", "HardSigmoid", "HardSwish", "Identity", "Cast"})


def _mixes_only(ctx: AnalysisContext, node: onnx.NodeProto, t: str, axis: int) -> bool:
    """Does ``node`` combine the slices of ``t`` along ``axis`` position by position (a softmax or
    a reduction over that axis alone: split attention's softmax over its radix, the sum of the
    weighted branches)? The slices then only ever meet at the same channel, so they lose the same
    channels exactly as when taken apart."""
    r = ctx.rank(t)
    if r is None:
        return False
    if node.op_type in ("Softmax", "LogSoftmax"):
        return ctx.opset >= 13 and int(ctx.attr(node, "axis", -1)) % r == axis
    if node.op_type in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"):
        axes = ctx.attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            v = ctx.const(node.input[1])
            axes = None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
        return axes is not None and {int(a) % r for a in axes} == {axis}
    return False


def adopt_through(node, ctx: AnalysisContext, y: str, axis: int, layout, commit: bool, entry_ok=None) -> bool:
    """Rule.adopt for a reshape: output axis ``axis`` is one input axis of the same length moved
    (the other axes of its block have length 1), and that input axis can take ``layout`` (a
    position embedding reshaped, transposed and resized before it is added to the tokens: PVT's).
    ``entry_ok(input_axis)`` says whether the target's entry for the axis will state the pruned
    length."""
    x = node.input[0]
    xs, ys = ctx.shape(x), ctx.shape(y)
    blocks = factor_blocks(xs, ys) if xs is not None and ys is not None else None
    blk = next((b for b in blocks or () if axis in b[1]), None)
    if blk is None or ys[axis] == 1:
        return False
    bi = [a for a in blk[0] if xs[a] != 1]
    if len(bi) != 1 or [a for a in blk[1] if ys[a] != 1] != [axis] or xs[bi[0]] != ys[axis]:
        return False
    if entry_ok is not None and not entry_ok(bi[0]):
        return False
    if not (ctx.is_const(x) or ctx.adopt(x, bi[0], layout, node, commit)):
        return False
    if commit:
        if ctx.is_const(x):
            ctx.bind(x, bi[0], layout, PARAM, node, 0)
        ctx.set_layout(y, axis, layout)
    return True


def follows(ctx: AnalysisContext, vector: str, pos: int, x: str, x_axis: int) -> bool:
    """Will entry ``pos`` of the shape vector ``vector`` state the pruned length of ``x``'s axis
    ``x_axis`` once that axis carries channels: a constant vector (surgery restates it), -1,
    ``Shape(x)[x_axis]`` read at run time, or a literal surgery restates?"""
    if ctx.is_const(vector):
        return True
    entries = trace(ctx, vector)
    if entries is None or pos >= len(entries):
        return False
    e = entries[pos]
    if e.kind == "const" and e.value == -1:
        return True
    if e.kind == "dim" and (e.tensor, e.axis) == (x, x_axis):
        return True
    return e.where is not None and fixed_by_plan(ctx, e, vector)


@register_rule("Flatten", "Squeeze", "Unsqueeze")
class ShapeOnly(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        map_reshape(node, ctx, node.input[0], node.output[0])

    def adopt(self, node, ctx, output, axis, layout, commit) -> bool:
        return adopt_through(node, ctx, output, axis, layout, commit)

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        """A Squeeze without axes drops every axis of length 1: a channel axis pruned to one channel
        would go too. It is given the axes it squeezed in the original model."""
        if node.op_type != "Squeeze" or ctx.attr(node, "axes", None) is not None:
            return
        if len(node.input) > 1 and node.input[1]:
            return
        old, new = ctx.old_shape(node.input[0]), ctx.new_shape(node.input[0])
        if old is None or new is None or old == new:
            return
        axes = [i for i, d in enumerate(old) if d == 1]
        if [i for i, d in enumerate(new) if d == 1] == axes:
            return
        if not axes:  # it squeezed nothing: it stays a no-op (empty axes would mean all of them)
            node.op_type = "Identity"
            del node.attribute[:]
            del node.input[1:]
            return
        if ctx.opset >= 13:
            ctx.add_input(node, np.array(axes, dtype=np.int64))
        else:
            ctx.set_attr(node, "axes", axes)


@register_rule("Reshape")
class Reshape(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x, y = node.input[0], node.output[0]
        if not ctx.layouts(x) and not ctx.layouts(y):
            return  # (y carries channels already where it ends a GroupNorm(1) region: its target is checked)
        map_reshape(node, ctx, x, y)
        target = ctx.value(node.input[1])
        if ctx.is_const(node.input[1]) or target is None:
            if target is None:
                ctx.freeze_tensor(y, f"Reshape '{ctx.label(node)}' target unknown")
            return
        # A computed target adapts to a pruned input where it says -1 (or copies with 0), where
        # the entry reads the channel count at run time (Shape(t)[k], or Shape(t)[k] * h), where
        # it reads only channel counts and literals (surgery restates it) or where it is a literal
        # times lengths read at run time (surgery scales the literal): _shape_source.adapts.
        entries = trace(ctx, node.input[1])
        channel_axes = ctx.layouts(y)
        what = f"Reshape '{ctx.label(node)}' target"
        for ax, lay in channel_axes.items():
            if ax >= len(target) or int(target[ax]) in (-1, 0):
                continue
            e = entries[ax] if entries is not None and ax < len(entries) else None
            if e is None or not adapts(ctx, e, lay, what, node.input[1]):
                ctx.freeze_layout(lay, f"Reshape '{ctx.label(node)}' computes a size for channel axis {ax} "
                                       "that would not follow the pruned channels at every input shape")
        # An entry of another axis computed from some channel count (torchvision's Swin:
        # head_dim = C // heads, C read from the input's shape) would change at run time when those
        # channels are pruned: surgery restates it where it reads nothing else; otherwise the
        # channels it reads stay whole.
        if entries is None:
            for t, a in sorted(value_deps(ctx, node.input[1])):
                ctx.freeze_layout(ctx.layout(t, a), f"{what} reads the channel count of '{t}' axis {a}")
            return
        for ax, e in enumerate(entries):
            if ax not in channel_axes or ax >= len(target) or int(target[ax]) in (-1, 0):
                check_unchanged(ctx, e, node.input[1], what)

    def adopt(self, node, ctx, output, axis, layout, commit) -> bool:
        target = node.input[1]
        return adopt_through(node, ctx, output, axis, layout, commit,
                             lambda x_axis: follows(ctx, target, axis, node.input[0], x_axis)
                             or (x_axis == axis and _copied_entry(ctx, node, axis)))

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        x, y = node.input[0], node.output[0]
        if not ctx.is_const(node.input[1]):
            old, new = ctx.old_shape(y), ctx.new_shape(y)
            for ax, e in enumerate(trace(ctx.analysis.ctx, node.input[1]) or []):
                if ax < len(new):
                    rewrite_entry(ctx, e, node.input[1], int(old[ax]), int(new[ax]))
            return
        target = np.array(ctx.value(node.input[1]))
        old, new = ctx.old_shape(y), ctx.new_shape(y)
        if old == new:
            return
        out = target.copy()
        xs_new = ctx.new_shape(x)
        for ax, (o, n) in enumerate(zip(old, new)):
            if target[ax] == -1:
                continue
            if target[ax] == 0 and ax < len(xs_new) and xs_new[ax] == n:
                continue
            out[ax] = n
        if not np.array_equal(out, target):
            ctx.replace_input(node, 1, out)


def _copied_entry(ctx: AnalysisContext, node, axis: int) -> bool:
    """Is the Reshape target's entry for ``axis`` a 0 that copies the input's length there?"""
    entries = trace(ctx, node.input[1])
    return (entries is not None and axis < len(entries) and entries[axis].kind == "const"
            and entries[axis].value == 0 and not int(ctx.attr(node, "allowzero", 0)))


@register_rule("Transpose")
class Transpose(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        rank = ctx.rank(x)
        perm = ctx.attr(node, "perm", list(reversed(range(rank or 0))))
        ctx.copy_layouts(x, node.output[0], {src: dst for dst, src in enumerate(perm)}, node=node)

    def adopt(self, node, ctx, output, axis, layout, commit) -> bool:
        x = node.input[0]
        rank = ctx.rank(x)
        perm = list(ctx.attr(node, "perm", list(reversed(range(rank or 0)))))
        if axis >= len(perm) or not (ctx.is_const(x) or ctx.adopt(x, perm[axis], layout, node, commit)):
            return False
        if commit:
            if ctx.is_const(x):
                ctx.bind(x, perm[axis], layout, PARAM, node, 0)
            ctx.set_layout(output, axis, layout)
        return True
