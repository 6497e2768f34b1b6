"""What the proof compares besides the graph's outputs, and on what scale.

The proof's measure per compared tensor is max|a - b| / max|a|. Two kinds of output make that one
number too weak or too strict:

* **An output that concatenates quantities of different scales** (ultralytics YOLO's ``output0``:
  box coordinates up to ~500 pixels beside class probabilities) is measured on its largest part's
  scale, so an error of 0.04 in a probability passes under 1e-4 x 500. Each part of such a
  ``Concat`` (looked for through ops that only move values: Reshape, Transpose, ...) is therefore
  compared as a tensor of its own, on its own scale.
* **A probability** (the output of Sigmoid, Softmax, Tanh, HardSigmoid) is computed to an absolute
  precision, not a relative one: onnxruntime's Sigmoid is good to ~1e-7, an ulp of 1, whatever its
  result. An untrained detector's scores sit at 1e-5 ... 2e-4, so two correct models differ there by
  1e-3 relative. Such a tensor, and any tensor whose values are picked from such tensors (ReduceMax,
  Gather, TopK, a Slice or a Split output that falls inside the probabilities of a Concat, ...), is measured on the scale
  of the op's range, 1, where its own maximum is smaller (:func:`floors`). So that a wrong cut is
  still seen where the probabilities are tiny, the op's input (the logits) is compared as well, on
  its own scale.

Only tensors that keep every channel (the plan's ``uncut``) and that the pruned model computes under
the same name are added; nothing here can make the proof pass a tensor it compared before on a
smaller scale than before: a part is an extra tensor, and a floor applies only where the values are
probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.ir.graph import node_attr

#: ops that only move or relabel values: an output made by them from a Concat is that Concat's parts
LAYOUT_OPS = frozenset({"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
#: ops whose output lies in [0, 1] or [-1, 1] and is computed to an absolute precision
BOUNDED_OPS = frozenset({"Sigmoid", "HardSigmoid", "Softmax", "Tanh"})
#: ops whose (first, float) output is made of values of the inputs listed (by position; None: all)
SELECTING_OPS: dict[str, tuple[int, ...] | None] = {
    **{op: (0,) for op in LAYOUT_OPS},
    "Expand": (0,), "Tile": (0,), "Gather": (0,), "GatherElements": (0,), "GatherND": (0,),
    "ReduceMax": (0,), "ReduceMin": (0,), "TopK": (0,), "Split": (0,),
    "Max": None, "Min": None, "Concat": None, "Where": (1, 2),
}
#: the floor of the scale a tensor of probabilities is measured on (their range)
PROBABILITY_SCALE = 1.0
#: a part is measured on its own scale, but never on one below this fraction of the whole's: at most
#: 1000x stricter than the whole output (a part of near-zero values, from an untrained head, would
#: otherwise be measured against its own rounding)
PART_FLOOR = 1e-3
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.BFLOAT16})
_MAX_DEPTH = 64  # how far back a part or a probability is looked for


class _Graph:
    """The producers, constants and (where inferred) shapes of a model's main graph."""

    def __init__(self, model: onnx.ModelProto):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # noqa: BLE001 - shapes only refine the analysis
            inferred = model
        g = inferred.graph
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consts = {t.name: t for t in g.initializer}
        self.consts.update({n.output[0]: n.attribute[0].t for n in g.node
                            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
        self.shapes: dict[str, list[int | None]] = {}
        self.elem: dict[str, int] = {t.name: t.data_type for t in self.consts.values()}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            t = vi.type.tensor_type
            if t.elem_type:
                self.elem[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]

    def is_float(self, name: str) -> bool:
        """Float, or of a type shape inference did not find."""
        elem = self.elem.get(name)
        return elem is None or elem in _FLOAT_TYPES

    def ints(self, name: str) -> list[int] | None:
        t = self.consts.get(name)
        return [int(v) for v in numpy_helper.to_array(t).reshape(-1)] if t is not None else None

    def length(self, name: str, axis: int) -> int | None:
        shape = self.shapes.get(name)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        return shape[axis]

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return len(shape) if shape is not None else None


def _through_layout(g: _Graph, name: str) -> onnx.NodeProto | None:
    """The first node before ``name`` that is not a layout op (None: a graph input or constant)."""
    for _ in range(_MAX_DEPTH):
        node = g.producer.get(name)
        if node is None or node.op_type not in LAYOUT_OPS:
            return node
        name = node.input[0]
    return None


def _parts(g: _Graph, name: str, depth: int = 0) -> list[str]:
    """The computed inputs of the Concat that makes ``name`` (through layout ops), nested Concats'
    parts included; [] when ``name`` is no such concatenation."""
    node = _through_layout(g, name)
    if node is None or node.op_type != "Concat" or depth > _MAX_DEPTH:
        return []
    if len([x for x in node.input if x]) < 2:
        return []
    computed = [x for x in node.input if x and x not in g.consts and x in g.producer]
    out: list[str] = []
    for x in computed:
        out.append(x)
        out += _parts(g, x, depth + 1)
    return out


class _Probabilities:
    """Which tensors hold only values of a bounded op's output (:data:`BOUNDED_OPS`)."""

    def __init__(self, g: _Graph):
        self.g = g
        self.memo: dict[str, bool] = {}

    def __call__(self, name: str, depth: int = 0) -> bool:
        if name in self.memo:
            return self.memo[name]
        self.memo[name] = False  # a cycle (there is none in a valid graph) proves nothing
        self.memo[name] = self._bounded(name, depth)
        return self.memo[name]

    def _bounded(self, name: str, depth: int) -> bool:
        node = self.g.producer.get(name)
        if node is None or depth > _MAX_DEPTH:
            return False
        if node.op_type in BOUNDED_OPS:
            return node.output[0] == name
        if node.op_type == "Slice":
            return self(node.input[0], depth + 1) or self._slice_bounded(node, depth)
        if node.op_type == "Split":
            return self(node.input[0], depth + 1) or self._split_bounded(node, name, depth)
        if node.op_type == "Cast":
            return int(node_attr(node, "to", 0)) in _FLOAT_TYPES and self(node.input[0], depth + 1)
        if node.op_type not in SELECTING_OPS or (node.op_type == "TopK" and node.output[0] != name):
            return False
        which = SELECTING_OPS[node.op_type]
        ins = [x for k, x in enumerate(node.input) if x and (which is None or k in which)]
        return bool(ins) and all(self(x, depth + 1) for x in ins)

    def sources(self, name: str) -> list[onnx.NodeProto]:
        """The bounded ops whose outputs ``name``'s values are picked from (a probability's logits
        are those ops' inputs)."""
        found: dict[str, onnx.NodeProto] = {}
        stack, seen = [(name, 0)], set()
        while stack:
            x, depth = stack.pop()
            node = self.g.producer.get(x)
            if node is None or x in seen or depth > _MAX_DEPTH:
                continue
            seen.add(x)
            if node.op_type in BOUNDED_OPS:
                found[node.output[0]] = node
                continue
            which = (0,) if node.op_type in ("Slice", "Cast") else SELECTING_OPS.get(node.op_type, ())
            stack += [(i, depth + 1) for k, i in enumerate(node.input) if i and (which is None or k in which)]
        return list(found.values())

    def _slice_bounded(self, node: onnx.NodeProto, depth: int) -> bool:
        """A Slice (steps 1) along one axis whose range falls inside bounded parts of a Concat."""
        g = self.g
        starts = g.ints(node.input[1]) if len(node.input) > 1 else None
        ends = g.ints(node.input[2]) if len(node.input) > 2 else None
        rank = g.rank(node.input[0])
        if starts is None or ends is None or len(starts) != 1 or rank is None:
            return False
        axes = g.ints(node.input[3]) if len(node.input) > 3 and node.input[3] else [0]
        steps = g.ints(node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
        if axes is None or steps != [1]:
            return False
        axis = axes[0] % rank
        length = g.length(node.input[0], axis)
        if length is None:
            return False
        lo = max(0, min(length, starts[0] + length if starts[0] < 0 else starts[0]))
        hi = max(0, min(length, ends[0] + length if ends[0] < 0 else ends[0]))
        return lo < hi and self._range_bounded(node.input[0], axis, lo, hi, depth + 1)

    def _split_bounded(self, node: onnx.NodeProto, name: str, depth: int) -> bool:
        """Output ``name`` of a Split is a range of its input's axis: bounded where that range falls
        inside bounded parts of a Concat (``torch.split`` exports as Split: YOLOv10's NMS-free head
        splits boxes from scores with it where the NMS export slices)."""
        g = self.g
        rank = g.rank(node.input[0])
        if rank is None:
            return False
        axis = int(node_attr(node, "axis", 0)) % rank
        length = g.length(node.input[0], axis)
        if length is None:
            return False
        outputs = list(node.output)
        if len(node.input) > 1 and node.input[1]:
            sizes = g.ints(node.input[1])
        elif node_attr(node, "split", None) is not None:
            sizes = [int(v) for v in node_attr(node, "split", None)]
        else:  # equal parts (opset 18: the last one smaller when the length does not divide)
            step = -(-length // len(outputs))
            sizes = [max(0, min(step, length - k * step)) for k in range(len(outputs))]
        if sizes is None or len(sizes) != len(outputs) or sum(sizes) != length:
            return False
        k = outputs.index(name)
        lo = sum(sizes[:k])
        return sizes[k] > 0 and self._range_bounded(node.input[0], axis, lo, lo + sizes[k], depth + 1)

    def _range_bounded(self, name: str, axis: int, lo: int, hi: int, depth: int) -> bool:
        """Positions [lo, hi) of ``axis`` of ``name`` hold only bounded values."""
        if self(name, depth):
            return True
        node = self.g.producer.get(name)
        if node is None or depth > _MAX_DEPTH:
            return False
        if node.op_type == "Identity":
            return self._range_bounded(node.input[0], axis, lo, hi, depth + 1)
        if node.op_type == "Transpose":
            perm = node_attr(node, "perm", None)
            rank = self.g.rank(node.input[0])
            if rank is None:
                return False
            perm = list(perm) if perm is not None else list(reversed(range(rank)))
            return self._range_bounded(node.input[0], perm[axis], lo, hi, depth + 1)
        if node.op_type == "Concat":
            rank = self.g.rank(name)
            if rank is None:
                return False
            cat = int(node_attr(node, "axis", 0)) % rank
            ins = [x for x in node.input if x]
            if cat != axis:
                return all(self._range_bounded(x, axis, lo, hi, depth + 1) for x in ins)
            start = 0
            for x in ins:
                n = self.g.length(x, axis)
                if n is None:
                    return False
                a, b = max(lo, start), min(hi, start + n)
                if a < b and not self._range_bounded(x, axis, a - start, b - start, depth + 1):
                    return False
                start += n
            return True
        return False


@dataclass
class Comparison:
    """What the proof compares besides the outputs, and the floors of the scales it measures on."""

    extra: list[str] = field(default_factory=list)
    #: fixed floors: :data:`PROBABILITY_SCALE` for a tensor of probabilities
    floors: dict[str, float] = field(default_factory=dict)
    #: each part -> the compared tensor it is a part of (its floor: :data:`PART_FLOOR` of that one's scale)
    whole: dict[str, str] = field(default_factory=dict)

    def floors_for(self, names: Sequence[str], reference: Sequence) -> dict[str, float]:
        """The floor of each compared tensor's scale on one run, whose reference outputs (in the
        order of ``names``) are ``reference``."""
        at = dict(zip(names, reference))
        out = dict(self.floors)
        for part, whole in self.whole.items():
            x = np.asarray(at.get(whole, np.zeros(0)))
            if x.dtype.kind == "f" and x.size:
                finite = np.abs(x[np.isfinite(x)])
                if finite.size:
                    out[part] = max(out.get(part, 0.0), PART_FLOOR * float(finite.max()))
        return out


def extra_compared(model: onnx.ModelProto, pruned: onnx.ModelProto, compared: list[str],
                   uncut: Callable[[str], bool]) -> Comparison:
    """The tensors to compare besides ``compared`` (the reference ``model``'s outputs and pinned
    checkpoints): the parts of concatenated ones and, for a tensor of probabilities, the inputs of
    the ops that made them (logits); with the floors of their scales (:class:`Comparison`).
    Only tensors that keep every channel (``uncut``) and that ``pruned`` computes are added."""
    g = _Graph(model)
    produced = {o for n in pruned.graph.node for o in n.output if o}
    probabilities = _Probabilities(g)
    have = set(compared)
    extra: list[str] = []
    whole: dict[str, str] = {}

    def add(x: str) -> None:
        if x not in have and x in produced and g.is_float(x) and uncut(x):
            have.add(x)
            extra.append(x)

    for name in compared:
        for part in _parts(g, name):
            add(part)
            if part in extra:
                whole.setdefault(part, name)
    floors = {x: PROBABILITY_SCALE for x in compared + extra if probabilities(x)}
    for x in list(floors):  # the logits of probabilities: seen on their own scale
        for node in probabilities.sources(x):
            if node.input and node.input[0] in g.producer:
                add(node.input[0])
    return Comparison(extra, floors, whole)
