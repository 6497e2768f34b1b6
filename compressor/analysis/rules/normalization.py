"""Normalisations and softmax. Per-channel ones (BatchNorm, InstanceNorm) slice their parameters.
LayerNorm over the last axis alone prunes through (statistics over the kept channels, proven
against a reference that computes it so). LRN mixes neighbouring channels: it runs at full width on
the masked input, the channels widened back with zeros before it and cut again after
(AnalysisContext.widen, surgery/widen.py). A Softmax over a channel axis is a barrier (its channels
are mostly bins of a distribution: YOLO's DFL), and so is MeanVarianceNormalization over the
channels (no epsilon: zeros fed to it can make 0 / 0). LayerNorm over
several axes (or with --freeze-norms) is a barrier for the axes it normalises over. GroupNorm
prunes in whole groups, and with one group through, its statistics over the kept channels as a
LayerNorm's: rules/groupnorm.py.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.analysis.context import PARAM, AnalysisContext
from compressor.analysis.registry import Rule, register_rule


@register_rule("BatchNormalization")  # (InstanceNormalization: a subclass in rules/groupnorm.py)
class PerChannelNorm(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        x = node.input[0]
        if node.op_type == "InstanceNormalization":  # statistics over the spatial axes
            for ax, a_lay in ctx.layouts(x).items():
                if ax >= 2:
                    ctx.freeze_layout(a_lay, f"InstanceNormalization '{ctx.label(node)}' normalises over axis {ax}")
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


def _freeze_axes(node, ctx: AnalysisContext, axes: set[int], why: str, widen: bool = False) -> None:
    """Freeze the channels on ``axes`` of the node's input (or, with ``widen``, prune around the
    node, which then runs at full width on the masked input: AnalysisContext.widen); other
    tracked axes pass through to outputs of the input's shape."""
    x = node.input[0]
    rank = ctx.rank(x) or 0
    norm = {a % rank for a in axes} if rank else set()
    keep = {}
    for ax, lay in ctx.layouts(x).items():
        if ax in norm:
            if widen and ctx.widen(node, 0, ax, ax):
                continue
            ctx.freeze_layout(lay, f"{node.op_type} '{ctx.label(node)}' {why} over axis {ax}")
        else:
            keep[ax] = ax
    for out in node.output:
        if out and ctx.shape(out) == ctx.shape(x):
            ctx.copy_layouts(x, out, keep, node=node)


@register_rule("LayerNormalization")
class LayerNorm(Rule):
    """Over one tracked axis (ConvNeXt's channels-last LayerNorm, a transformer's hidden size) the
    channels stay prunable: scale and bias are sliced, and the removed channels leave the statistics
    (a NormPoint tells the oracle so). Over several axes, or with run-time parameters or the
    training outputs (mean, inverse std) in use, the normalised groups are frozen."""

    def analyze(self, node, ctx):
        x = node.input[0]
        rank = ctx.rank(x) or 0
        axis = int(ctx.attr(node, "axis", -1)) % max(rank, 1)
        lay = ctx.layout(x, axis) if rank else None
        if lay is not None and ctx.prune_norms and axis == rank - 1 and self._params_ok(node, ctx, rank):
            ctx.copy_layouts(x, node.output[0], node=node)
            for slot in (1, 2):
                if len(node.input) > slot and node.input[slot]:
                    ctx.bind(node.input[slot], -1, lay, PARAM, node, slot)
            ctx.norm_point(node, axis)
            return
        _freeze_axes(node, ctx, set(range(axis, rank)), "normalises")

    @staticmethod
    def _params_ok(node, ctx: AnalysisContext, rank: int) -> bool:
        if any(node.output[1:]) or ctx.index.tensor_dtype(node.input[0]) not in (np.float16, np.float32, np.float64):
            return False  # the oracle's masked reference is written in numpy's float types
        for name in node.input[1:3]:
            if name and (not ctx.is_const(name) or ctx.shape(name) is None
                         or any(d != 1 for d in ctx.shape(name)[:-1])):
                return False
        return True


@register_rule("LRN")  # (GroupNormalization: rules/groupnorm.py)
class ChannelMixingNorm(Rule):
    def analyze(self, node, ctx):
        # LRN's statistics run over neighbouring channels at one position: it runs at full width
        # on the masked input, between the cuts (AnalysisContext.widen)
        _freeze_axes(node, ctx, {1}, "normalises across channels", widen=True)


@register_rule("MeanVarianceNormalization")
class MVN(Rule):
    def analyze(self, node, ctx):
        # not widened: MVN has no epsilon, so the zeros widening feeds it make a slice whose kept
        # channels are all 0 (after a Relu) divide 0 by 0, NaN where the original is finite
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
        # not widened: a softmax over a channel axis is mostly a distribution over bins (YOLO's DFL
        # turns 16 of them into a distance): removing bins would change what the output means
        _freeze_axes(node, ctx, axes, "normalises")
