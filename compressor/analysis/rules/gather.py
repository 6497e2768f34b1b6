"""Gather: indexing along one axis.

- Axes other than the gathered one keep their channels (shifted by the indices' rank - 1): the
  class token ``x[:, 0]`` of a ViT, shape arithmetic.
- Gathering a channel axis with constant indices that are the identity (``as_strided`` exports an
  ``arange`` laid out as [1, C, 1, 1]) moves the channels to the indices' one non-trivial axis;
  surgery rewrites the indices to the kept count. Any other index pattern on a channel axis
  freezes its groups (a general permutation or selection is not a layout).
- An embedding lookup (constant 2-D table, run-time indices, axis 0) produces new channels: the
  table's columns.

ScatterElements (the inverse) keeps the channels of every axis but the scattered one.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.analysis.context import PRODUCER, AnalysisContext
from compressor.analysis.registry import Rule, register_rule


def _identity_axis(ind: np.ndarray, n: int) -> int | None:
    """The axis of ``ind`` that enumerates 0..n-1 when ``ind`` is an identity index, else None."""
    if ind.size != n or not np.array_equal(ind.reshape(-1), np.arange(n)):
        return None
    big = [k for k, d in enumerate(ind.shape) if d != 1]
    if n == 1:
        return None
    return big[0] if len(big) == 1 else None


@register_rule("Gather")
class Gather(Rule):
    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        data, ind, y = node.input[0], node.input[1], node.output[0]
        rank = ctx.rank(data)
        irank = ctx.rank(ind)
        if rank is None or irank is None:
            if ctx.tracked(data):
                ctx.barrier(node, "operand ranks unknown")
            return
        axis = int(ctx.attr(node, "axis", 0)) % rank
        ctx.freeze_tensor(ind, f"Gather '{ctx.label(node)}' indexes with '{ind}', which carries channels")
        lays = ctx.layouts(data)
        if not lays:
            if ctx.is_const(data) and rank == 2 and axis == 0 and not ctx.is_const(ind):
                out = ctx.new_group(y, irank, node=node)        # embedding: the table's columns
                ctx.bind(data, 1, out, PRODUCER, node, 0)
            return
        amap = {a: a if a < axis else a + irank - 1 for a in lays if a != axis}
        ctx.copy_layouts(data, y, amap, node=node)
        if axis not in lays:
            return
        where = f"Gather '{ctx.label(node)}'"
        values = ctx.const(ind)
        n = ctx.shape(data)[axis]
        k = None if values is None else _identity_axis(np.asarray(values), n)
        if k is None:
            ctx.freeze_layout(lays[axis], f"{where} selects or permutes channel axis {axis}")
            return
        ctx.set_layout(y, axis + k, lays[axis])

    def rewrite(self, node: onnx.NodeProto, ctx) -> None:
        data = node.input[0]
        rank = len(ctx.old_shape(data))
        axis = int(ctx.attr(node, "axis", 0)) % rank
        old_n, new_n = ctx.old_shape(data)[axis], ctx.new_shape(data)[axis]
        if old_n == new_n or not ctx.is_const(node.input[1]):
            return
        ind = np.asarray(ctx.value(node.input[1]))
        shape = [new_n if d == old_n else d for d in ind.shape]
        ctx.replace_input(node, 1, np.arange(new_n, dtype=ind.dtype).reshape(shape))


@register_rule("ScatterElements")
class ScatterElements(Rule):
    """y = data with ``updates`` written at ``indices`` along ``axis``. Along every other axis the
    three tensors and y are aligned position by position (torchvision's MultiScaleRoIAlign writes
    each FPN level's pooled regions into zeros [R, C, h, w] along the regions' axis): channels there
    are one group across data, indices, updates and y. Channels on the scatter axis freeze (an index
    there names a position)."""

    def analyze(self, node: onnx.NodeProto, ctx: AnalysisContext) -> None:
        data, indices, updates = node.input[:3]
        rank = ctx.rank(data)
        if rank is None:
            ctx.barrier(node, "input rank unknown")
            return
        axis = int(ctx.attr(node, "axis", 0)) % rank
        where = f"ScatterElements '{ctx.label(node)}'"
        for ax in sorted(set(ctx.layouts(data)) | set(ctx.layouts(indices)) | set(ctx.layouts(updates))):
            if ax == axis:
                for t in (data, indices, updates):
                    if ctx.layout(t, ax) is not None:
                        ctx.freeze_layout(ctx.layout(t, ax), f"{where} scatters along channel axis {ax}")
                continue
            ctx.join(node, [(data, ax), (indices, ax), (updates, ax)], node.output[0], ax, f"axis {ax}")
