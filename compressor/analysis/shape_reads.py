"""Channel counts that a Shape node reads at run time: pin them or freeze them.

Pruning changes the value of ``Shape(x)[c]`` at run time. Where that value only builds a Reshape
target, Resize sizes or Slice bounds, those rules have made it adapt or pinned it. Anywhere else
(the attention scale ``(C // heads) ** -0.5`` of torchvision's Swin, an Expand, a graph output) it
would silently change the model. Such a use is **pinned** when its value can be computed here from
the static shapes and depends on channel counts only (evaluated a second time with every other
dimension changed: same value): surgery then feeds the original value as a constant, which is
what the masked original computes. Otherwise the channels it reads stay whole, and the report
names the reading node. Which lengths reach a use is traced entry by entry (ViT's
``sqrt(q.shape[-1])`` reads the head size, not the head count); where it cannot be, every tracked
axis read upstream counts.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from compressor.analysis.context import AnalysisContext, ShapePin
from compressor.ir.graph import GraphIndex, node_attr

#: Operand slots whose rules check a computed shape vector entry by entry (they adapt, pin or
#: freeze what it reads): Reshape's target, Resize's sizes, Slice's bounds, Expand's and
#: ConstantOfShape's shape.
CHECKED_SHAPE_SLOTS = frozenset({("Reshape", 1), ("Resize", 3), ("Slice", 1), ("Slice", 2), ("Slice", 3), ("Slice", 4),
                                 ("Expand", 1), ("ConstantOfShape", 0)})
#: A value of at most this many elements is shape arithmetic; a larger one is data.
SHAPE_VALUE_MAX = 16
#: Nodes a pinned value may be computed through (at most this many).
MAX_PIN_NODES = 64


def guard_shape_reads(ctx: AnalysisContext) -> None:
    from compressor.analysis.rules._shape_source import value_deps

    index = ctx.index
    seen: set[str] = set()
    for node in index.nodes:
        if node.op_type != "Shape" or not ctx.layouts(node.input[0]):
            continue
        for operand, consumer, slot, use in unchecked_uses(index, node.output[0], seen):
            deps = value_deps(ctx, operand)
            if not deps:
                continue
            kind, value = classify(ctx, operand)
            if kind == "independent":
                continue  # traced to a Shape of these channels, but it reads only other sizes
            if kind == "channels" and consumer is not None:
                at = _node_index(index, consumer)
                if not any(p.node_index == at and p.slot == slot for p in ctx.shape_pins):
                    ctx.shape_pins.append(ShapePin(at, slot, value, tuple(sorted(deps))))
                continue
            for t, a in sorted(deps):
                ctx.freeze_layout(ctx.layout(t, a), f"its channel count (axis {a} of '{t}') is read into {use}")


def _node_index(index: GraphIndex, node: onnx.NodeProto) -> int:
    for out in node.output:
        if out and out in index.producer:
            return index.producer[out][0]
    return next(i for i, n in enumerate(index.nodes) if n is node or n == node)


def _small(shape) -> bool:
    """Shape arithmetic: a value of rank <= 2 (a pads matrix) with at most SHAPE_VALUE_MAX elements."""
    return shape is not None and len(shape) <= 2 and int(np.prod(shape, dtype=np.int64)) <= SHAPE_VALUE_MAX


def unchecked_uses(index: GraphIndex, start: str, seen: set[str]
                   ) -> list[tuple[str, onnx.NodeProto | None, int, str]]:
    """Follow a shape value through small arithmetic: every (operand, consumer, slot, label) that
    no rule checks (consumer None: a graph output). A consumer that also reads data (an input not
    computed from Shape reads and constants alone) is a use, whatever the size of its output: a
    size that follows the data (the candidates a detector's TopK kept, on the probe's input) is no
    measure of shape arithmetic, and past it the value cannot be evaluated from shapes."""
    uses, stack = [], [start]
    derived: dict[str, bool] = {}
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in index.output_names:
            uses.append((name, None, -1, f"graph output '{name}'"))
        for consumer, slot in index.consumers.get(name, ()):
            if (consumer.op_type, slot) in CHECKED_SHAPE_SLOTS:
                continue
            small = [_small(index.shape(out) if out else ()) for out in consumer.output]
            data = any(x and k != slot and not _shape_derived(index, x, derived) for k, x in enumerate(consumer.input))
            if slot < 0 or not all(small) or data:
                uses.append((name, consumer if slot >= 0 else None, slot,
                             f"{consumer.op_type} '{index.node_label(consumer)}'"))
            else:
                stack.extend(o for o in consumer.output if o)
    return uses


def checked_uses(index: GraphIndex, start: str) -> list[tuple[onnx.NodeProto, int]]:
    """Follow a shape value through small arithmetic: every (consumer, slot) that a rule checks
    (CHECKED_SHAPE_SLOTS) when it is analysed."""
    uses, stack, seen = [], [start], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for consumer, slot in index.consumers.get(name, ()):
            if (consumer.op_type, slot) in CHECKED_SHAPE_SLOTS:
                uses.append((consumer, slot))
            elif slot >= 0 and all(_small(index.shape(out) if out else ()) for out in consumer.output):
                stack.extend(o for o in consumer.output if o)
    return uses


def _shape_derived(index: GraphIndex, name: str, memo: dict[str, bool], budget: list[int] | None = None) -> bool:
    """Is ``name`` a constant, a Shape read, or small arithmetic on those alone (no graph input,
    no data)? At most MAX_PIN_NODES nodes are looked through for one question."""
    if name in memo:
        return memo[name]
    budget = [MAX_PIN_NODES] if budget is None else budget
    memo[name] = False  # while it is looked into (a valid graph has no cycle)
    if index.is_const(name):
        memo[name] = True
        return True
    prod = index.producer.get(name)
    if prod is None or not _small(index.shape(name)) or budget[0] <= 0:
        return False
    node = prod[1]
    if node.op_type in ("Shape", "Size"):
        memo[name] = True
        return True
    budget[0] -= 1
    memo[name] = all(_shape_derived(index, x, memo, budget) for x in node.input if x)
    return memo[name]


def classify(ctx: AnalysisContext, name: str) -> tuple[str, np.ndarray | None]:
    """How the small value ``name`` depends on the sizes it is computed from, by evaluating it
    from the static shapes and constants, then again with sizes changed:

    - ``("independent", v)``: the same with every channel count reduced (to C-1 and C//2, as pruning
      does): it reads only other sizes;
    - ``("channels", v)``: the same with every other size changed (two ways): it reads channel
      counts only, so the original value ``v`` can be pinned;
    - ``("unknown", None)``: it reads both, or cannot be evaluated here: the channels are frozen.
    """
    plan = _evaluation_plan(ctx, name)
    if plan is None:
        return "unknown", None
    value = _evaluate(ctx, name, plan, lambda x, ax, d, tracked: d)
    if value is None:
        return "unknown", None

    def same(dims) -> bool:
        other = _evaluate(ctx, name, plan, dims)
        return other is not None and other.shape == value.shape and bool(np.array_equal(other, value))

    if all(same(lambda x, ax, d, tracked, f=f: f(d) if ax in tracked else d)
           for f in (lambda d: max(d - 1, 1), lambda d: max(d // 2, 1))):
        return "independent", value
    if all(same(lambda x, ax, d, tracked, f=f: d if ax in tracked else f(d))
           for f in (lambda d: 2 * d + 1, lambda d: d + 7)):
        return "channels", value
    return "unknown", None


def _evaluation_plan(ctx: AnalysisContext, name: str):
    """The nodes, Shape reads and constants that compute ``name`` from static shapes, or None."""
    index = ctx.index
    nodes: dict[int, onnx.NodeProto] = {}
    shapes: dict[str, tuple[str, onnx.NodeProto]] = {}
    consts: dict[str, np.ndarray] = {}
    stack = [name]
    while stack:
        t = stack.pop()
        if not t or t in consts or t in shapes:
            continue
        if index.is_const(t):
            v = index.const(t)
            if v is None:
                return None
            consts[t] = np.asarray(v)
            continue
        prod = index.producer.get(t)
        if prod is None:
            return None  # a graph input's value: unknown here
        i, node = prod
        if node.op_type == "Shape":
            if index.shape(node.input[0]) is None:
                return None
            shapes[t] = (node.input[0], node)
            continue
        if not _small(index.shape(t)):
            return None
        if i not in nodes:
            if len(nodes) >= MAX_PIN_NODES or node.domain not in ("", "ai.onnx"):
                return None
            nodes[i] = node
            stack.extend(node.input)
    return nodes, shapes, consts


def _evaluate(ctx: AnalysisContext, name: str, plan, dims_of) -> np.ndarray | None:
    """``name`` evaluated with onnx's reference evaluator; Shape(x) reads ``dims_of(x, axis, d,
    tracked axes of x)`` for each static size d of x."""
    from onnx.reference import ReferenceEvaluator

    nodes, shapes, consts = plan
    feeds = dict(consts)
    for t, (x, node) in shapes.items():
        tracked = set(ctx.layouts(x))
        dims = [int(dims_of(x, ax, d, tracked)) for ax, d in enumerate(ctx.index.shape(x))]
        start, end = node_attr(node, "start", 0), node_attr(node, "end", None)
        feeds[t] = np.array(dims, dtype=np.int64)[start:end]
    if name in feeds:
        return feeds[name]
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    model = helper.make_model(helper.make_graph([nodes[i] for i in sorted(nodes)], "shape_value", inputs,
                                                [helper.make_empty_tensor_value_info(name)]),
                              opset_imports=list(ctx.index.model.opset_import))
    try:
        return np.asarray(ReferenceEvaluator(model).run([name], feeds)[0])
    except Exception:
        return None
