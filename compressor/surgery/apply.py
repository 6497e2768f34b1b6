"""Build the pruned model from an analysis and the kept channels of each group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.analysis.groups import Analysis
from compressor.analysis.registry import get_rule
from compressor.errors import CompressorError
from compressor.ir.model_io import default_opset
from compressor.ir.proto import copy_without_initializers
from compressor.surgery.context import SurgeryContext
from compressor.surgery.drop import drop_vanished, vanished_tensors


@dataclass
class SliceEntry:
    """``kept`` indices along ``axis`` of constant ``tensor`` (names and indices of the input model)."""

    tensor: str
    axis: int
    kept: list[int]

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "axis": self.axis, "kept": self.kept}


@dataclass
class SurgeryResult:
    model: onnx.ModelProto
    slices: list[SliceEntry]
    context: SurgeryContext
    dropped_nodes: int = 0  # nodes deleted with the groups removed whole (surgery/drop.py)


def apply_plan(analysis: Analysis, keep: dict[int, list[int]]) -> SurgeryResult:
    """Prune: ``keep`` maps group id -> sorted channel indices to keep (groups absent keep all)."""
    original = analysis.index.model
    model = copy_without_initializers(original)  # weights are added below: kept as is or sliced
    opset = default_opset(model)
    sctx = SurgeryContext(analysis, keep, model, opset)
    index = analysis.index

    slices: list[SliceEntry] = []
    new_values: dict[str, np.ndarray] = {}
    for (tensor, axis) in sorted(analysis.ctx.members):
        kept = sctx.kept(tensor, axis)
        if kept is None:
            continue
        arr = new_values.get(tensor)
        if arr is None:
            arr = index.const(tensor)
        new_values[tensor] = np.take(arr, kept, axis=axis)
        slices.append(SliceEntry(tensor, axis, list(map(int, kept))))

    inits = {t.name for t in original.graph.initializer}
    for t in original.graph.initializer:
        arr = new_values.get(t.name)
        if arr is None and t.name in index.detached:
            arr = index.const(t.name)  # held as an array, not in the proto: written from it
        if arr is None:
            model.graph.initializer.add().CopyFrom(t)
        else:
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), t.name))
    const_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for name, arr in new_values.items():
        if name in inits:
            continue
        if name in const_nodes:
            node = const_nodes[name]
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(np.ascontiguousarray(arr), name)))
        else:  # pragma: no cover - members are constants by construction
            raise CompressorError(f"internal: member tensor '{name}' is not a constant")

    removed = {gid for gid, kept in keep.items() if len(kept) == 0}
    vanished = vanished_tensors(analysis, removed)
    for node in model.graph.node:
        outs = [o for o in node.output if o]
        if vanished and outs and all(o in vanished for o in outs):
            continue  # deleted below with the groups removed whole
        rule = get_rule(node.op_type, node.domain, opset)
        if rule is not None:
            rule.rewrite(node, sctx)
    # small values computed from channel counts at run time keep the original model's value
    # (analysis/shape_reads.py); the copy keeps the original node order
    for pin in analysis.ctx.shape_pins:
        sctx.replace_input(model.graph.node[pin.node_index], pin.slot, pin.value)

    dropped = drop_vanished(model, vanished, sctx.new_shape, sctx.replace_input, sctx.add_input) if vanished else 0

    # stale shape annotations would contradict the new channel counts
    del model.graph.value_info[:]
    return SurgeryResult(model=model, slices=slices, context=sctx, dropped_nodes=dropped)

