"""GroupNorm: the GroupNormalization op and an exporter's decomposition of it. With several
groups it is pruned in whole GroupNorm groups; with one group, with its statistics over the kept
channels.

GroupNorm with G groups normalises each run of f = C/G consecutive channels by statistics over
that run and every spatial position. Removing *whole* runs is exact: the statistics of the runs
kept never read the removed channels, so the pruned model equals the masked original without any
special reference. The channel axis is therefore coarsened into blocks of f channels (one block =
one GroupNorm group, as an attention head owns head_dim positions, layout.py), and ``num_groups``
becomes the number of blocks kept. A channel axis made of several groups (a Concat before the
norm) prunes where every part starts and ends on a GroupNorm group boundary; otherwise it is frozen
with the position where a group straddles two parts.

With one group (PoolFormer's norm: statistics over every channel and position) no group can be
removed whole. It is pruned as a LayerNorm is (rules/normalization.py): the channels are pruned
one by one, and the pruned model's GroupNorm normalises over the kept channels times every
position; a NormPoint makes the oracle's reference compute the statistics over the kept channels
too (verify/norms.py), so the proof checks exactly that. It runs at the pruned width: nothing
about the node changes but its input's channels (and, at opset 21, its per-channel scale and
bias). ``--freeze-norms`` (``prune_norms`` False) keeps its channels whole, as it keeps a
LayerNorm's.

Forms handled:

- ``GroupNormalization`` (opset 18: scale and bias of length G, sliced per block; opset 21: of
  length C, sliced per channel); the node's ``num_groups`` is rewritten (one group stays one).
- the torch exporters' decomposition (TorchScript at any opset, the dynamo exporter too):
  ``Reshape [N, C, *] -> [N, G, -1]``, ``InstanceNormalization`` over ``[N, G, L]`` (its G-sized
  scale and bias sliced per block), ``Reshape`` back to the input's shape (computed by ``Shape``:
  it adapts by itself; or a literal C: rewritten), then the affine ``Mul``/``Add`` by [C, 1, 1]
  constants (sliced by the element-wise rules). rules/reshape.py asks :func:`exporter_group_norm`
  where such a Reshape regroups the channel axis, and :func:`single_group_norm` first, for one
  group: the three nodes then run as they are at the pruned width (the -1 and the ``Shape`` adapt;
  a literal C in the Reshape back is rewritten), no tensor between them carries channels, and the
  NormPoint covers the region. Anything that does not match exactly keeps reshape.py's freeze.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from compressor.analysis.context import PARAM, AnalysisContext
from compressor.analysis.layout import Layout
from compressor.analysis.registry import Rule, register_rule
from compressor.analysis.rules.normalization import PerChannelNorm


def per_group(layout: Layout, f: int) -> Layout:
    """The layout of a G-long axis (one position per GroupNorm group) for a channel layout whose
    segments all hold whole groups of ``f`` channels."""
    return tuple((g, inner // f) for g, inner in layout)


def whole_groups(ctx: AnalysisContext, layout: Layout, f: int, what: str) -> Layout | None:
    """Coarsen the groups of a channel ``layout`` so that each channel is one or more whole
    GroupNorm groups of ``f`` consecutive positions; returns the refined layout, or None after
    freezing ``layout`` with the reason (a part that does not start and end on a GroupNorm group
    boundary, or channel blocks that no whole number of them can hold whole GroupNorm groups)."""
    table = ctx.table
    layout = table.normalize(layout)
    pos = 0
    for g, inner in layout:
        n = table.size(g) * inner
        if n % f:
            cut = pos if pos % f else pos + n
            ctx.freeze_layout(layout, f"{what} normalises groups of {f} channels, but channels from different "
                                      f"channel groups meet inside one of them (at position {cut}, "
                                      f"a Concat not aligned to the GroupNorm groups)")
            return None
        pos += n
    for _ in range(len(layout) + 1):  # each pass coarsens one group; a group never needs it twice
        pending = next(((g, inner) for g, inner in layout if inner % f), None)
        if pending is None:
            return layout
        g, inner = pending
        # blocks of lcm(inner, f) positions, from the part's start (a multiple of f): whole channel
        # blocks (another norm's groups, heads) and whole GroupNorm groups at once
        factor = math.lcm(inner, f) // inner
        if table.size(g) % factor:
            ctx.freeze_layout(layout, f"{what} normalises groups of {f} channels, which cut through channel "
                                      f"blocks of {inner} positions")
            return None
        table.coarsen(g, factor)
        layout = table.normalize(layout)
    ctx.freeze_layout(layout, f"{what}: its channels could not be regrouped into groups of {f}")  # pragma: no cover
    return None


#: types the oracle's masked reference of a GroupNorm with one group is written in (numpy's floats)
_FLOATS = (np.float16, np.float32, np.float64)


def _no_kept_statistics(ctx: AnalysisContext, x: str) -> str | None:
    """Why a GroupNorm with one group over ``x`` cannot be pruned with its statistics over the kept
    channels (said after "its statistics run over all C channels"), or None when it can."""
    if not ctx.prune_norms:
        return "kept whole by --freeze-norms"
    if ctx.index.tensor_dtype(x) not in _FLOATS:
        return "and its input is not float16, float32 or float64, the types the proof's reference is written in"
    return None


@register_rule("GroupNormalization")
class GroupNorm(Rule):
    """Channels kept or removed in whole GroupNorm groups; scale/bias sliced; ``num_groups``
    rewritten. A single group (statistics over every channel) is pruned channel by channel, its
    statistics then over the kept channels (a NormPoint; see the module docstring). Statistics over
    a tracked spatial axis or a run-time scale or bias (one that would need slicing) freeze the
    channels instead."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x, y = node.input[0], node.output[0]
        lays = ctx.layouts(x)
        if not lays:
            return
        what = f"GroupNormalization '{ctx.label(node)}'"
        shape = ctx.shape(x)
        groups = int(ctx.attr(node, "num_groups", 0))
        for ax, lay in lays.items():
            if ax >= 2:
                ctx.freeze_layout(lay, f"{what} normalises across channels and positions: its statistics run "
                                       f"over axis {ax}")
            elif ax == 0:
                ctx.set_layout(y, 0, lay)
        lay = lays.get(1)
        if lay is None:
            return
        if shape is None or len(shape) < 2 or groups <= 0 or shape[1] % groups:
            ctx.freeze_layout(lay, f"{what} normalises across channels ({groups} groups of an axis of "
                                   f"{None if shape is None else shape[1]})")
            return
        channels = shape[1]
        f = channels // groups
        params = [(slot, name) for slot, name in enumerate(node.input[1:3], start=1) if name]
        if groups == 1:
            self._one_group(node, ctx, lay, what, shape, params)
            return
        for _, name in params:
            pshape = ctx.shape(name)
            if not ctx.is_const(name):
                ctx.freeze_layout(lay, f"{what} has a run-time parameter '{name}'")
                return
            if pshape is None or len(pshape) != 1 or pshape[0] not in (channels, groups):
                ctx.freeze_layout(lay, f"{what} has a parameter '{name}' of shape {pshape}, neither "
                                       f"[{channels}] nor [{groups}]")
                return
        lay = whole_groups(ctx, lay, f, what)
        if lay is None:
            return
        ctx.set_layout(y, 1, lay)
        for slot, name in params:  # opset 18: one entry per group; opset 21: one per channel
            ctx.bind(name, 0, lay if ctx.shape(name)[0] == channels else per_group(lay, f), PARAM, node, slot)

    @staticmethod
    def _one_group(node: onnx.NodeProto, ctx: AnalysisContext, lay: Layout, what: str, shape: tuple[int, ...],
                   params: list[tuple[int, str]]) -> None:
        """Statistics over every channel: pruned with them over the kept channels (a NormPoint over
        the channel axis and every spatial position), or frozen with the reason."""
        channels = shape[1]
        why = _no_kept_statistics(ctx, node.input[0])
        for _, name in params if why is None else ():
            pshape = ctx.shape(name)
            if pshape is None or len(pshape) != 1 or pshape[0] not in (channels, 1):
                why = f"and its parameter '{name}' is of shape {pshape}, neither [{channels}] nor [1]"
            elif pshape[0] != 1 and not ctx.is_const(name):
                why = f"and its parameter '{name}' is computed at run time (it cannot be sliced)"
        if why is not None:
            ctx.freeze_layout(lay, f"{what} has one group: its statistics run over all {channels} channels ({why})")
            return
        ctx.set_layout(node.output[0], 1, lay)
        for slot, name in params:  # opset 21: one value per channel, sliced; opset 18: one for the group
            if ctx.shape(name)[0] == channels:
                ctx.bind(name, 0, lay, PARAM, node, slot)
        ctx.norm_point(node, 1, spatial=tuple(range(2, len(shape))))

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        x = node.input[0]
        if ctx.old_shape(x) is None or ctx.old_shape(x)[1] == ctx.new_shape(x)[1]:
            return
        groups = int(ctx.attr(node, "num_groups", 0))
        if groups == 1:  # one group over the kept channels
            return
        old, new = ctx.old_shape(x)[1], ctx.new_shape(x)[1]
        ctx.set_attr(node, "num_groups", new // (old // groups))


# ---- the exporters' decomposition ---------------------------------------------------------------

def _only_reader(ctx: AnalysisContext, tensor: str, op_type: str) -> onnx.NodeProto | None:
    """The one node reading ``tensor`` (as its data input), when it is an ``op_type`` and the
    tensor is no graph output."""
    users = ctx.index.consumers.get(tensor, [])
    if len(users) != 1 or users[0][1] != 0 or users[0][0].op_type != op_type or tensor in ctx.index.output_names:
        return None
    return users[0][0]


def _group_size(ctx: AnalysisContext, into: onnx.NodeProto) -> int | None:
    """f = C/G when ``into`` is the first Reshape of the decomposition: [N, C, *] -> [N, G, L]
    with L = f x the spatial size, read only by an InstanceNormalization that only a Reshape back
    to [N, C, *] reads."""
    xs, ys = ctx.shape(into.input[0]), ctx.shape(into.output[0])
    if xs is None or ys is None or len(xs) < 2 or len(ys) != 3 or xs[0] != ys[0]:
        return None
    channels, groups = xs[1], ys[1]
    if groups <= 0 or channels % groups or ys[2] != channels // groups * math.prod(xs[2:]):
        return None
    norm = _only_reader(ctx, into.output[0], "InstanceNormalization")
    back = _only_reader(ctx, norm.output[0], "Reshape") if norm is not None else None
    if back is None or ctx.shape(back.output[0]) != xs:
        return None
    return channels // groups


def _first_reshape(ctx: AnalysisContext, back: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Reshape into groups that ``back`` undoes (through the InstanceNormalization), if any."""
    prod = ctx.index.producer.get(back.input[0])
    if prod is None or prod[1].op_type != "InstanceNormalization":
        return None
    prod = ctx.index.producer.get(prod[1].input[0])
    if prod is None or prod[1].op_type != "Reshape":
        return None
    return prod[1] if _group_size(ctx, prod[1]) is not None else None


def single_group_norm(node: onnx.NodeProto, ctx: AnalysisContext, axis: int) -> bool:
    """Called by rules/reshape.py for every tracked axis of a Reshape's input: when ``node`` is the
    first Reshape of an exporter's GroupNorm with one group (PoolFormer's GroupNorm1, statistics over
    every channel and position), prune it with its statistics over the kept channels and return
    True (or freeze the channels, with the reason, and return True). The region (this Reshape, the
    InstanceNormalization, the Reshape back) runs as it is at the pruned width: no tensor inside it
    carries channels, the Reshape back's output carries the input's, and a NormPoint over the
    region tells the oracle. The Reshape into one group must say -1 for its last axis (a number
    would not follow the pruned channels); the Reshape back's target is checked by the Reshape rule
    (a ``Shape`` of the input adapts, a literal C is rewritten)."""
    if node.op_type != "Reshape" or axis != 1:
        return False
    f = _group_size(ctx, node)
    x = node.input[0]
    xs = ctx.shape(x)
    if f is None or xs is None or f != xs[1]:
        return False
    lay = ctx.layout(x, 1)
    norm = _only_reader(ctx, node.output[0], "InstanceNormalization")
    back = _only_reader(ctx, norm.output[0], "Reshape")
    why = _no_kept_statistics(ctx, x)
    target = ctx.value(node.input[1])
    if why is None and target is None:
        why = "and the target of the Reshape into one group is not known here"
    elif why is None and int(np.asarray(target).reshape(-1)[-1]) != -1:
        why = ("and the Reshape into one group gives its length as a number, which would not follow the pruned "
               "channels")
    if why is not None:
        ctx.freeze_layout(lay, f"the GroupNorm written as Reshape '{ctx.label(node)}' + InstanceNormalization has "
                               f"one group: its statistics run over all {xs[1]} channels ({why})")
        return True
    at = ctx.index.producer
    ctx.set_layout(back.output[0], 1, lay)
    ctx.norm_point(node, 1, also=(at[norm.output[0]][0], at[back.output[0]][0]),
                   epsilon=float(ctx.attr(norm, "epsilon", 1e-5)), output=back.output[0],
                   spatial=tuple(range(2, len(xs))), scale=norm.input[1], bias=norm.input[2])
    return True


def exporter_group_norm(node: onnx.NodeProto, ctx: AnalysisContext, y: str, axis: int, layout: Layout) -> bool:
    """Called by rules/reshape.py where Reshape ``node`` regroups channel ``axis`` (with
    ``layout``) with other axes: when it is the first or last Reshape of a GroupNorm's
    decomposition, map the channels (whole GroupNorm groups) and return True; else False."""
    if node.op_type != "Reshape" or axis != 1:
        return False
    what = f"the GroupNorm written as Reshape '{ctx.label(node)}' + InstanceNormalization"
    f = _group_size(ctx, node)
    if f is not None:  # [N, C, *] -> [N, G, L]: one position per GroupNorm group (G = 1: single_group_norm)
        whole = whole_groups(ctx, layout, f, what)
        if whole is not None:
            ctx.set_layout(y, 1, per_group(whole, f))
        return True
    into = _first_reshape(ctx, node)
    if into is None:
        return False
    source = ctx.layout(into.input[0], 1)
    f = _group_size(ctx, into)
    if source is None or ctx.table.normalize(layout) != per_group(source, f):
        return False
    ctx.set_layout(y, 1, source)  # [N, G, L] -> [N, C, *]: the input's channels again
    return True


@register_rule("InstanceNormalization")
class InstanceNorm(PerChannelNorm):
    """Per-channel statistics (normalization.PerChannelNorm). Inside an exporter's GroupNorm its
    scale and bias are ones(G) and zeros(G), and the dynamo exporter stores one such constant for
    every GroupNorm with the same G: sliced as members, they would tie the channels of all those
    GroupNorms into one group. A uniform scale or bias there is instead written again at the kept
    length (the same values a slice would hold)."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        uniform = _uniform_params(node, ctx)
        if uniform:  # analysed as if the node had no such parameter: nothing binds to it
            node = _without_inputs(node, uniform)
        super().analyze(node, ctx)

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        uniform = _uniform_params(node, ctx.analysis.ctx)
        if not uniform or ctx.old_shape(node.input[0]) == ctx.new_shape(node.input[0]):
            return
        new = ctx.new_shape(node.input[0])[1]
        for slot in uniform:
            value = np.asarray(ctx.value(node.input[slot]))
            ctx.replace_input(node, slot, np.full(new, value.reshape(-1)[0], value.dtype))


def _uniform_params(node: onnx.NodeProto, ctx: AnalysisContext) -> list[int]:
    """The input slots of a GroupNorm decomposition's InstanceNormalization whose constant holds one
    value throughout (none for any other InstanceNormalization)."""
    prod = ctx.index.producer.get(node.input[0])
    if prod is None or prod[1].op_type != "Reshape" or _group_size(ctx, prod[1]) is None:
        return []
    if ctx.layout(node.input[0], 1) is None:
        return []
    out = []
    for slot in (1, 2):
        name = node.input[slot] if len(node.input) > slot else ""
        value = ctx.const(name) if name and ctx.is_const(name) else None
        if value is not None and value.ndim == 1 and value.size and bool(np.all(value == value[0])):
            out.append(slot)
    return out


def _without_inputs(node: onnx.NodeProto, slots: list[int]) -> onnx.NodeProto:
    """A copy of ``node`` with the inputs at ``slots`` left empty."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for slot in slots:
        copy.input[slot] = ""
    return copy
