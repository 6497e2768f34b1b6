"""Widen a tensor back to every channel around a node that mixes them (analysis Widening).

Before the node: ``Pad`` one zero at the end of the axis, then ``Gather`` every original position
from the kept ones (a removed position reads the zero). After it: ``Gather`` the kept positions of
its output. The node sees exactly the masked original's input (removed channels zeroed), so its
output at the kept positions is the masked original's; ECA's 1-D conv over the pooled channels is
the case this exists for (a vector of C values: the two Gathers cost next to nothing); LRN is the
other. (A GroupNorm with one group used to be widened too; it is now pruned with its statistics
over the kept channels, analysis/rules/groupnorm.py: the full-width regions cost PoolFormer most of
what the pruning saved.)

This runs before the rules' rewrites: the tensors it adds are given their original shapes
(``SurgeryContext.full_width``), so no rule restates a shape inside the region at the pruned width.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from compressor.surgery.context import SurgeryContext


def widen_nodes(model: onnx.ModelProto, sctx: SurgeryContext, vanished: set[str]) -> list[str]:
    """Apply every widening whose channels the plan cuts; returns the labels of the nodes widened.
    Nodes are registered with ``sctx.follow_nodes`` (spliced in after every index-based edit)."""
    done: list[str] = []
    for w in sctx.analysis.ctx.widenings:
        node = model.graph.node[w.node_index]
        x = node.input[w.slot]
        if x in vanished or all(o in vanished for o in node.output if o):
            continue  # removed whole with its group (surgery/drop.py)
        kept = sctx.kept(x, w.axis)
        full = sctx.old_shape(x)[w.axis]
        if kept is None or len(kept) == full:
            continue
        rank = len(sctx.old_shape(x))
        done.append(sctx.index.node_label(sctx.index.nodes[w.node_index]))
        label = node.name or node.op_type
        index = np.full(full, len(kept), dtype=np.int64)  # removed positions read the padded zero
        index[np.asarray(kept, dtype=np.int64)] = np.arange(len(kept), dtype=np.int64)
        pads = [0] * (2 * rank)
        pads[rank + w.axis] = 1
        padded, wide = sctx.fresh(f"{x}_padded"), sctx.fresh(f"{x}_widened")
        if sctx.opset >= 11:
            pad = helper.make_node("Pad", [x, sctx.constant(f"{label}_widen_pads", np.asarray(pads, np.int64))],
                                   [padded], name=sctx.fresh(f"{label}_widen_pad"))
        else:
            pad = helper.make_node("Pad", [x], [padded], name=sctx.fresh(f"{label}_widen_pad"), pads=pads)
        gather = helper.make_node("Gather", [padded, sctx.constant(f"{label}_widen_index", index)], [wide],
                                  name=sctx.fresh(f"{label}_widen"), axis=w.axis)
        sctx.follow_nodes(x, [pad, gather])
        node.input[w.slot] = wide
        sctx.full_width[wide] = (sctx.old_shape(x), _restored(sctx.new_shape(x), w.axis, sctx.old_shape(x)))

        y = node.output[0]
        mid = sctx.fresh(y)
        node.output[0] = mid
        sctx.full_width[mid] = (sctx.old_shape(y), _restored(sctx.new_shape(y), w.out_axis, sctx.old_shape(y)))
        take = helper.make_node("Gather", [mid, sctx.constant(f"{label}_kept", np.asarray(kept, np.int64))], [y],
                                name=sctx.fresh(f"{label}_narrow"), axis=w.out_axis)
        sctx.follow_nodes(mid, [take])
    return done


def _restored(new: tuple[int, ...], axis: int, old: tuple[int, ...]) -> tuple[int, ...]:
    """``new`` with ``axis`` back at its length in ``old`` (the other axes stay as the plan cuts them:
    a depthwise conv widened over one axis still loses channels on its channel axis)."""
    out = list(new)
    out[axis] = old[axis]
    return tuple(out)
