"""DepthToSpace, SpaceToDepth and Col2Im: channels moved into (or out of) spatial blocks.

DepthToSpace turns [N, C*b*b, H, W] into [N, C, H*b, W*b]. Output channel c is made of b*b input
channels: in mode DCR those at (by*b + bx)*C + c (the input axis holds the output channels b*b times
over, each copy losing the same channels: a layout of one group J repeated b*b times), in mode CRD
those at c*b*b + by*b + bx (each output channel owns b*b consecutive input channels: J with blocks
of b*b). SpaceToDepth is the inverse of DCR: its output holds its input's channels b*b times over.
The layouts are unified with the input's, so the conv producing the C*b*b channels loses the b*b
channels of every output channel removed. The spatial axes change length: channels on them freeze.
Col2Im (``nn.functional.fold``, MobileViTV2's patches folded back) turns [N, C*B, L] into
[N, C, *image], B the product of ``block_shape``: output channel c sums the B consecutive input rows
c*B .. c*B + B - 1 into its image (blocks of B, as in CRD); the L axis of patch positions becomes
the image axes.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.analysis.context import AnalysisContext
from compressor.analysis.layout import Layout
from compressor.analysis.registry import Rule, register_rule

CHANNEL_AXIS = 1


def _mode(node: onnx.NodeProto, ctx: AnalysisContext) -> str:
    mode = ctx.attr(node, "mode", "DCR")
    return (mode.decode() if isinstance(mode, bytes) else str(mode)).upper()


def _other_axes(node: onnx.NodeProto, ctx: AnalysisContext) -> None:
    """The batch axis passes through; channels on a spatial axis (which changes length) freeze."""
    x, y = node.input[0], node.output[0]
    for ax, lay in ctx.layouts(x).items():
        if ax == 0:
            ctx.set_layout(y, 0, lay)
        elif ax != CHANNEL_AXIS:
            ctx.freeze_layout(lay, f"{node.op_type} '{ctx.label(node)}' moves spatial axis {ax}, which carries "
                                   "channels")


def _channels(node: onnx.NodeProto, ctx: AnalysisContext) -> tuple[Layout | None, int]:
    """The other axes handled (_other_axes); the input's channel layout, if tracked, and b*b."""
    _other_axes(node, ctx)
    return ctx.layout(node.input[0], CHANNEL_AXIS), int(ctx.attr(node, "blocksize")) ** 2


@register_rule("DepthToSpace")
class DepthToSpace(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        lay, bb = _channels(node, ctx)
        if lay is None:
            return
        where = f"DepthToSpace '{ctx.label(node)}'"
        mode = _mode(node, ctx)
        if mode not in ("DCR", "CRD"):
            ctx.freeze_layout(lay, f"{where} has mode {mode}, whose channel order is unknown")
            return
        total = ctx.table.length(lay)
        if total % bb:
            ctx.freeze_layout(lay, f"{where}: {total} channels are not a multiple of blocksize² = {bb}")
            return
        out = ctx.table.new(total // bb, origin=ctx.label(node))
        blocks: Layout = ((out, 1),) * bb if mode == "DCR" else ((out, bb),)
        ctx.unify(lay, blocks, f"{where} ({mode} blocks of channel axis {CHANNEL_AXIS})")  # freezes if impossible
        ctx.set_layout(node.output[0], CHANNEL_AXIS, ((out, 1),))


@register_rule("SpaceToDepth")
class SpaceToDepth(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        lay, bb = _channels(node, ctx)
        if lay is not None:
            ctx.set_layout(node.output[0], CHANNEL_AXIS, tuple(lay) * bb)


@register_rule("Col2Im")
class Col2Im(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        _other_axes(node, ctx)
        lay = ctx.layout(node.input[0], CHANNEL_AXIS)
        if lay is None:
            return
        where = f"Col2Im '{ctx.label(node)}'"
        block = ctx.value(node.input[2])
        if block is None:
            ctx.freeze_layout(lay, f"{where} takes its block shape from a run-time tensor")
            return
        b = int(np.prod(np.asarray(block).reshape(-1)))
        total = ctx.table.length(lay)
        if b < 1 or total % b:
            ctx.freeze_layout(lay, f"{where}: {total} rows are not a multiple of the block's {b} positions")
            return
        out = ctx.table.new(total // b, origin=ctx.label(node))
        ctx.unify(lay, ((out, b),), f"{where} (blocks of {b} rows of axis {CHANNEL_AXIS})")  # freezes if impossible
        ctx.set_layout(node.output[0], CHANNEL_AXIS, ((out, 1),))
