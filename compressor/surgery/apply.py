"""Build the pruned model from an analysis and the kept channels of each group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.analysis.groups import Analysis
from compressor.analysis.registry import get_rule
from compressor.errors import CompressorError
from compressor.importance.learned import carry_learned
from compressor.ir.graph import drop_unused
from compressor.ir.model_io import default_opset
from compressor.ir.proto import copy_without_initializers
from compressor.surgery.context import SurgeryContext
from compressor.surgery.drop import drop_vanished, vanished_tensors
from compressor.surgery.widen import widen_nodes


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
    #: what became of the input's learned importances (importance/learned.py:carry_learned)
    notes: list[str] = field(default_factory=list)
    #: nodes run at full width between the cuts (surgery/widen.py)
    widened: list[str] = field(default_factory=list)


def _append(model: onnx.ModelProto, like: onnx.TensorProto, make: Callable[[], np.ndarray]) -> None:
    """Add the array ``make()`` gives as an initializer named and typed as ``like``. Its bytes are
    taken, and a fresh array freed, before protobuf copies them in: two copies of a tensor are
    alive at a time, not three (a caller's argument would stay referenced until the call returns)."""
    arr = make()
    if arr.dtype.kind in "OSU" or onnx.helper.np_dtype_to_tensor_dtype(arr.dtype) != like.data_type:
        t = numpy_helper.from_array(np.ascontiguousarray(arr), like.name)
        t.doc_string = like.doc_string
        t.metadata_props.extend(like.metadata_props)
        model.graph.initializer.append(t)
        return
    dims = arr.shape
    raw = np.ascontiguousarray(arr).tobytes()
    del arr
    t = model.graph.initializer.add()
    t.name, t.data_type, t.doc_string = like.name, like.data_type, like.doc_string
    t.metadata_props.extend(like.metadata_props)  # a tensor's own metadata (quantization notes, ...)
    t.dims.extend(dims)
    t.raw_data = raw


def applied_pins(analysis: Analysis, sctx: SurgeryContext) -> list:
    """The shape pins a plan needs: those whose channel counts it changes (a pin of channels left
    whole would only rewrite the model for nothing)."""
    return [p for p in analysis.ctx.shape_pins
            if not p.reads or any(sctx.new_shape(t)[a] != sctx.old_shape(t)[a] for t, a in p.reads)]


def apply_plan(analysis: Analysis, keep: dict[int, list[int]]) -> SurgeryResult:
    """Prune: ``keep`` maps group id -> sorted channel indices to keep (groups absent keep all)."""
    original = analysis.index.model
    model = copy_without_initializers(original)  # weights are added below: kept as is or sliced
    opset = default_opset(model)
    sctx = SurgeryContext(analysis, keep, model, opset)
    index = analysis.index

    slices: list[SliceEntry] = []
    cuts: dict[str, list[tuple[int, list[int]]]] = {}  # tensor -> (axis, kept) of each sliced axis
    for (tensor, axis) in sorted(analysis.ctx.members):
        kept = sctx.kept(tensor, axis)
        if kept is None:
            continue
        cuts.setdefault(tensor, []).append((axis, kept))
        slices.append(SliceEntry(tensor, axis, list(map(int, kept))))

    def sliced(name: str) -> np.ndarray:
        arr = index.const(name)
        for axis, kept in cuts[name]:
            arr = np.take(arr, kept, axis=axis)
        return arr

    # each tensor is sliced when it is written, so one sliced array is alive at a time (slicing
    # them all first kept a lightly pruned model's weights three times over: 3.5x its size on 2.15 GB)
    inits = {t.name for t in original.graph.initializer}
    for t in original.graph.initializer:
        if t.name in cuts:
            _append(model, t, lambda name=t.name: sliced(name))
        elif t.name in index.detached:  # held as an array, not in the proto: written from it
            _append(model, t, lambda name=t.name: index.const(name))
        else:
            model.graph.initializer.add().CopyFrom(t)
    const_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for name in cuts:
        if name in inits:
            continue
        arr = sliced(name)
        if name in const_nodes:
            node = const_nodes[name]
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(np.ascontiguousarray(arr), name)))
        else:  # pragma: no cover - members are constants by construction
            raise CompressorError(f"internal: member tensor '{name}' is not a constant")

    removed = {gid for gid, kept in keep.items() if len(kept) == 0}
    vanished = vanished_tensors(analysis, removed)
    # a node that mixes the channels of an axis runs at full width between the cuts (surgery/widen.py)
    widened = widen_nodes(model, sctx, vanished)
    for node in model.graph.node:
        outs = [o for o in node.output if o]
        if vanished and outs and all(o in vanished for o in outs):
            continue  # deleted below with the groups removed whole
        rule = get_rule(node.op_type, node.domain, opset)
        if rule is not None:
            rule.rewrite(node, sctx)
    # small values computed from channel counts at run time keep the original model's value
    # (analysis/shape_reads.py); the copy keeps the original node order
    for pin in applied_pins(analysis, sctx):
        sctx.replace_input(model.graph.node[pin.node_index], pin.slot, pin.value)

    dropped = drop_vanished(model, vanished, sctx.new_shape, sctx.replace_input, sctx.add_input) if vanished else 0
    sctx.splice_followers()  # after every edit that addresses nodes by index

    drop_unused(model, only=sctx.replaced)  # a Reshape target, a Resize size surgery replaced
    sctx.restore_names(model)  # a replaced bias keeps its name where nothing else reads the old one
    # stale shape annotations would contradict the new channel counts: kept without their shapes,
    # finalize re-infers them (and adds no others)
    for vi in model.graph.value_info:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    # learned importances describe the model they were stored with: sliced to the kept channels
    notes = carry_learned(model, analysis, keep, lambda name: sliced(name) if name in cuts else index.const(name))
    return SurgeryResult(model=model, slices=slices, context=sctx, dropped_nodes=dropped, notes=notes,
                         widened=widened)

