"""Shared plumbing of the exact transforms (merge, fold): load, analyse, edit constants, remove
channels with the normal surgery, count MACs and prove the result against the unmasked original."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.analysis.context import CONSUMER, PRODUCER
from compressor.analysis.groups import Analysis, Group, analyze_index
from compressor.errors import VerificationError
from compressor.ir.fold import prepare
from compressor.ir.graph import GraphIndex, drop_unused
from compressor.ir.model_io import load_model, validate_model
from compressor.ir.shapes import InputSpec, constant_node_value, parse_shape_specs, resolve_inputs
from compressor.metrics import count
from compressor.surgery.apply import apply_plan
from compressor.surgery.finalize import finalize as _finalize
from compressor.verify import verify
from compressor.verify.second_shape import alternate_specs

#: Relative error the exact transforms must meet against the original (float32 round-off only).
EXACT_TOLERANCE = 1e-5
#: ... and at least this where the model stores weights in float16/bfloat16: a transform that
#: computes a new value (a folded bias, a summed slice) rounds it to 11 bits (4.9e-4 relative), and
#: the proof, made in float32 (verify/upcast.py), sees that rounding (1.1e-4 on a 3-conv net).
HALF_EXACT_TOLERANCE = 1e-3

#: Ops whose consumer weight makes them linear in the consumed input (a merge sums their slices).
LINEAR_CONSUMERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Loaded:
    original: onnx.ModelProto
    spec: InputSpec
    analysis: Analysis
    path: str | None


def load(model, input_shapes=None, exclude=()) -> Loaded:
    """A path or ModelProto -> prepared model (constant subgraphs folded), input spec, analysis."""
    if isinstance(model, onnx.ModelProto):
        validate_model(model)
        proto, path = model, None
    else:
        proto, path = load_model(model), str(model)
    proto, _ = prepare(proto)
    if input_shapes is None or isinstance(input_shapes, dict):
        specs = input_shapes or {}
    else:
        specs = parse_shape_specs(list(input_shapes))
    spec = resolve_inputs(proto, specs)
    return Loaded(proto, spec, analyze_index(GraphIndex(proto, spec), exclude=exclude), path)


def reanalyze(model: onnx.ModelProto, spec: InputSpec, exclude=()) -> Analysis:
    return analyze_index(GraphIndex(model, spec), exclude=exclude)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def member_key(m) -> tuple:
    return (m.tensor, m.axis, m.offset, m.inner)


def match_group(group: Group, analysis: Analysis) -> Group | None:
    """The group of ``analysis`` (of an edited copy of the model) that carries ``group``'s members."""
    votes: dict[int, int] = {}
    by_key: dict[tuple, list[Group]] = {}
    for g in analysis.groups:
        for m in g.members:
            by_key.setdefault(member_key(m), []).append(g)
    for m in group.members:
        for g in by_key.get(member_key(m), []):
            if g.size == group.size:
                votes[g.id] = votes.get(g.id, 0) + 1
    if not votes:
        return None
    return analysis.group(max(votes, key=votes.get))


def channel_slice(arr: np.ndarray, member, c: int) -> np.ndarray:
    """Channel ``c`` of a member: its positions along the member's axis, all other axes whole."""
    lo = member.offset + c * member.inner
    return np.take(arr, np.arange(lo, lo + member.inner), axis=member.axis)


def index_along(member, c: int, ndim: int) -> tuple:
    lo = member.offset + c * member.inner
    idx = [slice(None)] * ndim
    idx[member.axis] = slice(lo, lo + member.inner)
    return tuple(idx)


def is_bias(member) -> bool:
    """A producer member that is a bias (added after the contraction), not a filter."""
    return member.op_type in ("Conv", "ConvTranspose", "Gemm") and member.slot == 2


class ConstEditor:
    """Batch edits of constants in a model copy; a constant used by several nodes is never edited in
    place for one of them (``set_for_node`` gives that node a fresh initializer)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
        self.const_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
        self.uses: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        for o in model.graph.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        self.names = set(self.inits) | {o for n in model.graph.node for o in n.output} | \
            {i.name for i in model.graph.input}
        self._n = 0
        #: whether an edit wrote float16/bfloat16 values (computed ones, rounded to 11 bits)
        self.wrote_half = False

    def _note(self, arr: np.ndarray) -> None:
        if arr.dtype == np.float16 or arr.dtype.name == "bfloat16":
            self.wrote_half = True

    def get(self, name: str) -> np.ndarray:
        if name in self.inits:
            return numpy_helper.to_array(self.model.graph.initializer[self.inits[name]])
        value = constant_node_value(self.const_nodes[name])  # value, value_float(s), value_int(s), sparse
        if value is None:
            raise KeyError(name)
        return value

    def set(self, name: str, arr: np.ndarray) -> None:
        self._note(arr)
        tensor = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        if name in self.inits:
            self.model.graph.initializer[self.inits[name]].CopyFrom(tensor)
        else:
            node = self.const_nodes[name]
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", tensor))

    def fresh(self, base: str) -> str:
        while True:
            self._n += 1
            name = f"{base}__exact{self._n}"
            if name not in self.names:
                self.names.add(name)
                return name

    def add(self, base: str, arr: np.ndarray) -> str:
        self._note(arr)
        name = self.fresh(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        self.inits[name] = len(self.model.graph.initializer) - 1
        self.uses[name] = 1
        return name

    def set_for_node(self, node: onnx.NodeProto, k: int, arr: np.ndarray) -> None:
        """Input k of ``node`` takes value ``arr`` (a new initializer when absent or shared)."""
        while len(node.input) <= k:
            node.input.append("")
        name = node.input[k]
        if name and self.uses.get(name, 0) == 1 and (name in self.inits or name in self.const_nodes):
            self.set(name, arr)
            return
        if name:
            self.uses[name] -= 1
        node.input[k] = self.add(name or f"{node.name or node.op_type}_in{k}", arr)


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    return _finalize(model, what="transformed")


def remove_channels(model: onnx.ModelProto, spec: InputSpec, remove: dict[int, list[int]],
                    groups: dict[int, Group]) -> tuple[onnx.ModelProto, int, int]:
    """Remove channels (group id of the *original* analysis -> channel indices) from an edited copy
    with the normal surgery on a fresh analysis. Returns (model, MACs after, params after)."""
    fresh = reanalyze(model, spec)
    keep: dict[int, list[int]] = {}
    for gid, drop in remove.items():
        if not drop:
            continue
        new = match_group(groups[gid], fresh)
        if new is None or not new.prunable:
            why = "not found" if new is None else "; ".join(new.reasons)
            raise VerificationError(f"internal: group {gid} cannot be re-found in the edited model ({why})")
        dropped = set(drop)
        keep[new.id] = [c for c in range(new.size) if c not in dropped]
    if not keep:
        macs, params, _ = count(fresh.index)
        return model, macs, params
    result = apply_plan(fresh, keep)
    macs, params, _ = count(fresh.index, result.context.new_shape)
    out = result.model
    drop_unused(out)
    return out, macs, params


def prove(original: onnx.ModelProto, candidate: onnx.ModelProto, spec: InputSpec, what: str,
          report: dict, tolerance: float = EXACT_TOLERANCE, seed: int = 0, skip: bool = False,
          rounded_half: bool = False) -> None:
    """Compare against the unmasked original (at a second input shape too, for dynamic dims); fill
    report['verify']; raise when it fails. ``skip`` (``--no-verify``): record that the proof was
    skipped instead. ``rounded_half``: the transform wrote computed float16/bfloat16 values
    (ConstEditor.wrote_half), which are allowed their rounding (HALF_EXACT_TOLERANCE)."""
    ver = None
    if not skip:
        if rounded_half:
            tolerance = max(tolerance, HALF_EXACT_TOLERANCE)
        reference = copy_model(original)
        reference.ir_version = candidate.ir_version
        del reference.graph.value_info[:]
        ver = verify(reference, candidate, spec, tolerance=tolerance, seed=seed,
                     alternates=alternate_specs(original, spec))
    report["verify"] = ver.to_dict() if ver else {"passed": None, "skipped": True}
    report["max_rel_err"] = ver.max_rel_err if ver else None
    t0 = report.pop("_t0", None)
    if t0 is not None:
        report["seconds"] = round(time.perf_counter() - t0, 3)
    if ver is not None and not ver.passed:
        why = ver.reason or f"max relative error {ver.max_rel_err:.3g} > {tolerance:g}"
        raise VerificationError(f"{what} does not reproduce the original model: {why}; nothing was written",
                                report=report)


def base_report(transform: str, loaded: Loaded) -> dict:
    macs, params, _ = count(loaded.analysis.index)
    return {"transform": transform, "input": loaded.path,
            "input_shapes": {k: list(v) for k, v in loaded.spec.shapes.items()},
            "macs_before": macs, "params_before": params, "groups": [], "channels_removed": 0,
            "_t0": time.perf_counter()}


def close_report(report: dict, macs_after: int, params_after: int) -> dict:
    report["macs_after"] = macs_after
    report["params_after"] = params_after
    return report


def consumer_members(group: Group, label: str) -> list:
    return [m for m in group.members if m.role == CONSUMER and m.node == label]


def producer_members(group: Group) -> list:
    return [m for m in group.members if m.role == PRODUCER]


def group_positions(analysis: Analysis, tensor: str, axis: int, gid: int) -> list[tuple[int, int]]:
    """(offset, inner) of every segment of group ``gid`` along ``axis`` of ``tensor``."""
    lay = analysis.ctx.layout(tensor, axis)
    out, pos = [], 0
    table = analysis.ctx.table
    for g, inner in lay or ():
        r = table.find(g)
        if r == gid:
            out.append((pos, inner))
        pos += table.size(g) * inner
    return out


def consume_points_of(analysis: Analysis, gid: int) -> list[tuple[object, onnx.NodeProto, list[tuple[int, int]]]]:
    """Consume points where group ``gid``'s channels are contracted: (point, node, segments)."""
    out = []
    nodes = analysis.index.nodes
    for cp in analysis.consume_points:
        node = nodes[cp.node_index]
        segs = group_positions(analysis, node.input[cp.input_index], cp.axis, gid)
        if segs:
            out.append((cp, node, segs))
    return out
