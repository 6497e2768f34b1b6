"""Conv and ConvTranspose: their output channels are new prunable groups; their input channels
are consumed (the weight's input slices). Depthwise convs pass channels through (``group`` is
rewritten); other grouped convs keep their group count and lose the same channels in every group.
"""

from __future__ import annotations

import onnx

from compressor.analysis.context import CONSUMER, PARAM, PRODUCER, AnalysisContext
from compressor.analysis.registry import Rule, register_rule


def _scaled(layout, m: int):
    return tuple((g, inner * m) for g, inner in layout)


class _ConvBase(Rule):
    transposed = False

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x, w = node.input[0], node.input[1]
        b = node.input[2] if len(node.input) > 2 and node.input[2] else None
        y = node.output[0]
        for ax, lay in ctx.layouts(x).items():  # channels moved to the batch or a spatial axis
            if ax >= 2 and self._pointwise_along(node, ctx, ax):
                ctx.copy_layouts(x, y, {ax: ax}, node=node)  # a 1-wide kernel there: positions pass through
                continue
            if ax >= 2 and self._same_length(node, ctx, ax) and ctx.widen(node, 0, ax, ax):
                continue  # ECA: a 1-D conv over the pooled channels runs at full width between the cuts
            if ax != 1:
                ctx.freeze_layout(lay, f"{node.op_type} '{ctx.label(node)}' convolves or batches over axis {ax} "
                                       "of its input, which carries channels")
        xs, ws = ctx.shape(x), ctx.shape(w)
        if not ctx.is_const(w) or xs is None or ws is None or (b and not ctx.is_const(b)):
            ctx.barrier(node, "weights are computed at run time, not constants")
            ctx.new_group(y, 1, node=node, frozen=f"{node.op_type} '{ctx.label(node)}' has run-time weights")
            return
        g = int(ctx.attr(node, "group", 1))
        C = xs[1]
        lay_x = ctx.layout(x, 1)
        # weight axes: Conv W[M, C/g, k..]; ConvTranspose W[C, M/g, k..]
        in_ax, out_ax = (0, 1) if self.transposed else (1, 0)
        per_group_in = ws[in_ax] if not self.transposed else C // g
        out_per_group = ws[out_ax] if self.transposed else ws[0] // g
        if g == 1:
            out = ctx.new_group(y, 1, node=node)
            ctx.bind(w, out_ax, out, PRODUCER, node, 1)
            if b:
                ctx.bind(b, 0, out, PRODUCER, node, 2)
            if lay_x is not None:
                ctx.bind(w, in_ax, lay_x, CONSUMER, node, 1)
                ctx.consume(node, 0, 1)
            return
        depthwise = g == C and per_group_in == 1  # channel multiplier out_per_group (1 for a plain one)
        if depthwise:
            if lay_x is None:
                ctx.new_group(y, 1, node=node, frozen=f"depthwise {node.op_type} '{ctx.label(node)}' on an untracked input")
                return
            out = _scaled(lay_x, out_per_group)
            ctx.set_layout(y, 1, out)
            # Conv W[C*m, 1, k..] lists the outputs; ConvTranspose W[C, m, k..] the inputs
            ctx.bind(w, 0, lay_x if self.transposed else out, PARAM, node, 1)
            if b:
                ctx.bind(b, 0, out, PARAM, node, 2)
            return
        # grouped: the same channel positions are cut in every group, the group count stays
        gin = ctx.table.new(per_group_in, origin=ctx.label(node))
        gout = ctx.table.new(out_per_group, origin=ctx.label(node))
        rep_in = ((gin, 1),) * g
        rep_out = ((gout, 1),) * g
        ctx.set_layout(y, 1, rep_out)
        if self.transposed:
            ctx.bind(w, 1, ((gout, 1),), PRODUCER, node, 1)
        else:
            ctx.bind(w, 0, rep_out, PRODUCER, node, 1)
        if b:
            ctx.bind(b, 0, rep_out, PRODUCER, node, 2)
        if lay_x is not None:
            ctx.unify(lay_x, rep_in, f"grouped {node.op_type} '{ctx.label(node)}' input")
            if self.transposed:
                ctx.bind(w, 0, rep_in, CONSUMER, node, 1)
            else:
                ctx.bind(w, 1, ((gin, 1),), CONSUMER, node, 1)
            ctx.consume(node, 0, 1)
        else:
            ctx.table.freeze(gin, f"grouped {node.op_type} '{ctx.label(node)}' on an untracked input")

    @staticmethod
    def _pointwise_along(node: onnx.NodeProto, ctx: AnalysisContext, ax: int) -> bool:
        """Does output position i along spatial axis ``ax`` read input position i alone (kernel 1
        there, stride 1, no padding)? Channels carried on that axis then pass through."""
        ws = ctx.shape(node.input[1])
        d = ax - 2
        strides = list(ctx.attr(node, "strides", []) or [])
        pads = list(ctx.attr(node, "pads", []) or [])
        auto = ctx.attr(node, "auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        return (node.op_type == "Conv" and ws is not None and ax < len(ws) and ws[ax] == 1
                and (d >= len(strides) or int(strides[d]) == 1)
                and (auto != "NOTSET" or not pads or (int(pads[d]) == 0 and int(pads[d + len(pads) // 2]) == 0)))

    @staticmethod
    def _same_length(node: onnx.NodeProto, ctx: AnalysisContext, ax: int) -> bool:
        """Does output position i along spatial axis ``ax`` sit where input position i does (stride 1,
        as long)? Then the channels carried there can be widened around the node (ctx.widen)."""
        strides = list(ctx.attr(node, "strides", []) or [])
        return node.op_type == "Conv" and (ax - 2 >= len(strides) or int(strides[ax - 2]) == 1)

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        g = int(ctx.attr(node, "group", 1))
        old_c = ctx.old_shape(node.input[0])[1]
        new_c = ctx.new_shape(node.input[0])[1]
        if g > 1 and g == old_c and new_c != old_c:
            w_in = ctx.new_shape(node.input[1])[0 if self.transposed else 1]
            if w_in == 1 or self.transposed:
                ctx.set_attr(node, "group", new_c)


@register_rule("Conv")
class Conv(_ConvBase):
    transposed = False


@register_rule("ConvTranspose")
class ConvTranspose(_ConvBase):
    transposed = True

