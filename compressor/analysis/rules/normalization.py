"""Normalisations and softmax. Per-channel ones (BatchNorm, InstanceNorm) slice their parameters;
those that mix channels (LayerNorm/GroupNorm/LRN/Softmax over the channel axis) are barriers for
the axes they normalise over, since removing a channel changes every other channel's output.
"""

from __future__ import annotations

import onnx

from compressor.analysis.context import PARAM, AnalysisContext
from compressor.analysis.registry import Rule, register_rule


@register_rule("BatchNormalization", "InstanceNormalization")
class PerChannelNorm(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        ctx.copy_layouts(x, node.output[0], node=node)
        lay = ctx.layout(x, 1)
        if lay is None:
            return
        for slot, name in enumerate(node.input[1:], start=1):
            if not name:
                continue
            if ctx.is_const(name):
                ctx.bind(name, 0, lay, PARAM, node, slot)
            else:
                ctx.freeze_layout(lay, f"{node.op_type} '{ctx.label(node)}' has a run-time parameter '{name}'")
        for out in node.output[1:]:  # training-mode running mean/var outputs
            if out:
                ctx.set_layout(out, 0, lay)


def _freeze_axes(node, ctx: AnalysisContext, axes: set[int], why: str) -> None:
    x = node.input[0]
    rank = ctx.rank(x) or 0
    norm = {a % rank for a in axes} if rank else set()
    keep = {}
    for ax, lay in ctx.layouts(x).items():
        if ax in norm:
            ctx.freeze_layout(lay, f"{node.op_type} '{ctx.label(node)}' {why} over axis {ax}")
        else:
            keep[ax] = ax
    for out in node.output:
        if out and ctx.shape(out) == ctx.shape(x):
            ctx.copy_layouts(x, out, keep, node=node)


@register_rule("LayerNormalization")
class LayerNorm(Rule):
    def analyze(self, node, ctx):
        rank = ctx.rank(node.input[0]) or 0
        axis = int(ctx.attr(node, "axis", -1)) % max(rank, 1)
        _freeze_axes(node, ctx, set(range(axis, rank)), "normalises")


@register_rule("GroupNormalization", "LRN")
class ChannelMixingNorm(Rule):
    def analyze(self, node, ctx):
        _freeze_axes(node, ctx, {1}, "normalises across channels")


@register_rule("MeanVarianceNormalization")
class MVN(Rule):
    def analyze(self, node, ctx):
        axes = ctx.attr(node, "axes", [0, 2, 3])
        _freeze_axes(node, ctx, set(axes), "normalises")


@register_rule("Softmax", "LogSoftmax", "Hardmax")
class Softmax(Rule):
    def analyze(self, node, ctx):
        rank = ctx.rank(node.input[0]) or 0
        if ctx.opset >= 13:
            axes = {int(ctx.attr(node, "axis", -1)) % max(rank, 1)}
        else:  # opsets < 13 flatten [axis:] into one normalised dimension
            axis = int(ctx.attr(node, "axis", 1)) % max(rank, 1)
            axes = set(range(axis, rank))
        _freeze_axes(node, ctx, axes, "normalises")
