"""Groups removed whole: the layers that only they feed leave the graph.

A plan may keep no channel of a group (``--drop-layers``). Every tensor whose channel axis then
holds nothing *vanishes*, and so does every node all of whose outputs vanish (a DenseNet layer's
convs, a residual branch's convs, BNs and activations). What reads a vanished tensor from outside
that region is rewritten exactly:

* a ``Concat`` drops that input (a DenseNet layer leaves the concatenation);
* a ``Conv``, ``Gemm`` or ``MatMul`` that sums over the vanished channels computes its bias alone
  (or zeros): a constant, broadcast over the positions. That constant is carried forward through
  element-wise ops, transposes, BN and 1x1 convs with constant operands (evaluated here) until it
  meets a live tensor of the full output shape in an element-wise binary op (the residual ``Add``),
  where it becomes that op's constant operand: a residual block reduces to ``x + b``.

Anything else that reads a vanished tensor (a reshape, a shape read, a graph output, a spatial op
on the constant) makes the removal impossible: :func:`plan_drop` raises :class:`DropError` with the
reason, and the group is kept (the planner asks :func:`removal_blocker` first).

The mask oracle covers this unchanged: masking every channel of a group out of its consumers is
the same function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import onnx

from compressor.analysis.groups import Analysis
from compressor.ir.graph import node_attr, subgraph_outer_refs

#: One-input (plus constant parameters) element-wise ops a constant is carried through.
UNARY = {"Relu", "Sigmoid", "Tanh", "Identity", "Erf", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish",
         "Neg", "Softplus", "Elu", "Selu", "Gelu", "Cast", "Sqrt", "Abs", "Exp", "Mish", "Swish"}
#: Broadcasting binary ops: carried through with a constant other operand, or where the constant
#: meets a live tensor of the op's full output shape.
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"}
MEET = {"Add", "Sub", "Mul", "Div", "Max", "Min"}


class DropError(Exception):
    """The removal cannot be expressed exactly; the message says which node stops it."""


@dataclass
class DropEdits:
    concat_drops: list[tuple[int, int]] = field(default_factory=list)  # (node index, input slot)
    substitutions: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (node, slot, value)


def vanished_tensors(analysis: Analysis, removed: set[int]) -> set[str]:
    """Activations (not weights) whose channel layout along some axis holds only groups in
    ``removed``."""
    table = analysis.ctx.table
    out: set[str] = set()
    if not removed:
        return out
    for tensor, axes in analysis.ctx.layout_map.items():
        if analysis.index.is_const(tensor):
            continue
        for lay in axes.values():
            leaves = table.normalize(lay)
            if leaves and all(table.find(g) in removed for g, _ in leaves):
                out.add(tensor)
                break
    return out


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


def _reducing(node: onnx.NodeProto, slots: list[int], const: Callable) -> bool:
    """Does ``node`` sum over the channels of its vanished data input (slot 0) with constant weights?"""
    return (node.op_type in ("Conv", "Gemm", "MatMul") and slots == [0] and len(node.input) > 1
            and const(node.input[1]) is not None
            and not (node.op_type == "Gemm" and node_attr(node, "transA", 0)))


def _bias_only(node: onnx.NodeProto, const: Callable, rank: int) -> np.ndarray:
    """What a reducing consumer computes with no input channels: its bias (or zeros), broadcastable."""
    w = const(node.input[1])
    if node.op_type == "Conv":
        m = w.shape[0]
        b = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        v = np.zeros(m, dtype=w.dtype) if b is None else np.asarray(b, dtype=w.dtype)
        return v.reshape([1, m] + [1] * (rank - 2))
    if node.op_type == "MatMul":
        return np.zeros([1] * (rank - 1) + [w.shape[-1]], dtype=w.dtype)
    n = w.shape[0] if node_attr(node, "transB", 0) else w.shape[1]
    c = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    v = np.zeros((1, n), dtype=w.dtype)
    if c is not None:
        v = v + float(node_attr(node, "beta", 1.0)) * np.asarray(c, dtype=w.dtype)
    return v.astype(w.dtype)


def _foldable(node: onnx.NodeProto, const: Callable) -> bool:
    op = node.op_type
    if op in UNARY or op in BINARY or op in ("Transpose", "BatchNormalization"):
        return True
    if op in ("MatMul", "Gemm"):
        return len(node.input) > 1 and const(node.input[1]) is not None
    if op == "Conv":  # only a 1x1, unpadded conv maps a broadcast constant to a broadcast constant
        w = const(node.input[1]) if len(node.input) > 1 else None
        pads = node_attr(node, "pads", None) or []
        return (w is not None and all(k == 1 for k in w.shape[2:]) and not any(pads)
                and node_attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID"))
    return False


_NUMPY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Max": np.maximum,
    "Min": np.minimum, "Relu": lambda x: np.maximum(x, 0), "Neg": np.negative, "Identity": lambda x: x,
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Tanh": np.tanh, "Abs": np.abs, "Exp": np.exp, "Sqrt": np.sqrt,
}


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset) -> list[np.ndarray]:
    """The node on constant inputs: numpy for the common element-wise ops and Transpose (the
    reference evaluator costs milliseconds per call, and the planner checks many removals)."""
    args = [feeds[x] for x in node.input if x]
    fn = _NUMPY.get(node.op_type)
    if fn is not None and len(args) == (1 if node.op_type in ("Relu", "Neg", "Identity", "Sigmoid", "Tanh", "Abs",
                                                              "Exp", "Sqrt") else 2):
        out = fn(*args)
        return [np.asarray(out, dtype=np.result_type(*args))]
    if node.op_type == "Transpose":
        perm = node_attr(node, "perm", None)
        return [np.transpose(args[0], perm)]
    from compressor.ir.fold import _evaluate as evaluate

    return evaluate(node, feeds, opset)


def plan_drop(nodes: list[onnx.NodeProto], const: Callable[[str], np.ndarray | None],
              shape: Callable[[str], tuple | None], vanished: set[str], outputs: set[str], opset) -> DropEdits:
    """The edits that take the vanished region out of a graph whose nodes are in topological order.
    ``const`` gives constant values and ``shape`` the shapes of the graph being edited (the pruned
    shapes in surgery, whose constants are sliced).
    Raises DropError when some reader of the region cannot be rewritten exactly."""
    edits = DropEdits()
    known: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray | None:
        return known[name] if name in known else const(name)

    for i, node in enumerate(nodes):
        names = [x for x in node.input if x]
        outs = [o for o in node.output if o]
        if any(o in vanished for o in outs) and not all(o in vanished for o in outs):
            raise DropError(f"{_label(node)} ({node.op_type}) would write a tensor with no channels beside its "
                            "other outputs (an output of a multi-output node cannot be removed alone)")
        if outs and all(o in vanished for o in outs):
            continue  # inside the removed region: deleted with it
        hidden = sorted(x for x in subgraph_outer_refs(node) if x in vanished or x in known)
        if hidden:  # a control-flow body reads it by name: no input slot to rewrite
            raise DropError(f"{_label(node)} ({node.op_type}) reads '{hidden[0]}' inside a subgraph, which would "
                            "have no channels left")
        if not any(x in vanished or x in known for x in names):
            continue
        van = [k for k, x in enumerate(node.input) if x in vanished]
        if van:
            if node.op_type == "Concat":
                if any(x in known for x in node.input):
                    raise DropError(f"{_label(node)} (Concat) would concatenate a constant that stands for a whole "
                                    "tensor (a layer whose every input was removed)")
                edits.concat_drops.extend((i, k) for k in van)
                if len(van) == len([x for x in node.input if x]):
                    raise DropError(f"{_label(node)} would concatenate nothing")
                continue
            if _reducing(node, van, const):
                out = node.output[0]
                known[out] = _bias_only(node, const, len(shape(out) or ()) or 2)
                continue
            raise DropError(f"{_label(node)} ({node.op_type}) reads '{node.input[van[0]]}', which would have "
                            "no channels left")
        live = [k for k, x in enumerate(node.input) if x and value(x) is None]
        if not live:
            if not _foldable(node, const) or len(outs) != 1:
                raise DropError(f"{_label(node)} ({node.op_type}) would compute on a constant that stands for "
                                "a whole tensor; it cannot be carried through this op")
            feeds = {x: value(x) for x in names}
            known[outs[0]] = np.asarray(_evaluate(node, feeds, opset)[0])
            continue
        if node.op_type in MEET and len(live) == 1 and len(node.input) == 2:
            other, out = node.input[live[0]], node.output[0]
            c = known.get(node.input[1 - live[0]])
            full = shape(out)
            if (c is not None and full is not None and shape(other) == full
                    and len(c.shape) <= len(full) and _broadcasts(c.shape, full)):
                edits.substitutions.append((i, 1 - live[0], c))
                continue
        raise DropError(f"{_label(node)} ({node.op_type}) mixes the removed layers' constant with a live "
                        "tensor in a way that changes its shape")
    for o in outputs:
        if o in vanished or o in known:
            raise DropError(f"graph output '{o}' would be removed or constant")
    return edits


def _broadcasts(small: tuple, full: tuple) -> bool:
    s = (1,) * (len(full) - len(small)) + tuple(small)
    return all(a in (1, b) for a, b in zip(s, full))


class RemovalEffect(NamedTuple):
    why: str | None  # why the removal cannot be done exactly, or None
    gone: set[str]  # labels of the nodes it takes out: the vanished region and what only it read
    added: int  # constant elements it adds (the biases that stand for removed branches)
    left: tuple[str, ...] = ()  # tensors written by the constant Adds it leaves (absorb.py could not place them)
    made: int = 0  # nodes absorb.py makes that stay (a constant carried past a pool)

    @property
    def nodes(self) -> int:
        """How many nodes fewer the graph has (what ``removed_whole.nodes`` reports)."""
        return len(self.gone) - self.made


def removal_effect(analysis: Analysis, removed: set[int]) -> RemovalEffect:
    """Removing the groups in ``removed`` whole, checked on the original graph (its weights give the
    same shapes of constants as the pruned model's, up to the pruned channel counts)."""
    index = analysis.index
    vanished = vanished_tensors(analysis, removed)
    for point in analysis.ctx.norm_points:  # a norm pruned through (LayerNorm, GroupNorm(1)) needs a channel
        node = index.nodes[point.node_index]
        if node.input[0] in vanished:
            return RemovalEffect(f"{_label(node)} ({node.op_type}) normalises these channels and would be left "
                                 "with none", set(), 0)
    try:
        edits = plan_drop(index.nodes, index.const, index.shape, vanished, set(index.output_names),
                          index.model.opset_import)
    except DropError as exc:
        return RemovalEffect(str(exc), set(), 0)
    except Exception as exc:  # an op the reference evaluator cannot run on the constant
        return RemovalEffect(f"the removed layers' constant could not be carried forward ({type(exc).__name__}: "
                             f"{exc})", set(), 0)
    cut = {(i, k) for i, k in edits.concat_drops} | {(i, k) for i, k, _ in edits.substitutions}
    dead = _dead(index.nodes, index.output_names, set())
    gone = _dead(index.nodes, index.output_names, cut) - dead
    gone |= {i for i in dead if any(o in vanished for o in index.nodes[i].output if o)}  # as drop_vanished
    dropped_into = {i for i, _ in edits.concat_drops}
    keep = _concat_names_kept(index.nodes, index.output_names, {index.nodes[i].output[0] for i in dropped_into})
    for i in dropped_into:  # left with one input: bypassed (_bypass_single_concats)
        node = index.nodes[i]
        if len([x for k, x in enumerate(node.input) if x and (i, k) not in cut]) == 1 and node.output[0] not in keep:
            gone.add(i)
    added, left, made = 0, [], 0
    if edits.substitutions:  # the constant Adds absorbed into the biases before them (surgery/absorb.py)
        from compressor.surgery.absorb import absorbed

        taken, added, left, made = absorbed([(i, n) for i, n in enumerate(index.nodes) if i not in gone],
                                list(index.output_names), {(i, k): v for i, k, v in edits.substitutions},
                                index.const, index.shape)
        gone |= taken
    return RemovalEffect(None, {index.node_label(index.nodes[i]) for i in gone}, added, tuple(left), made)


def removal_blocker(analysis: Analysis, removed: set[int]) -> str | None:
    """Why removing the groups in ``removed`` whole cannot be done exactly, or None if it can."""
    return removal_effect(analysis, removed).why


def _dead(nodes, outputs, cut: set[tuple[int, int]]) -> set[int]:
    """Indices of nodes none of whose outputs is read, with the input edges in ``cut`` not reading."""
    used = set(outputs)
    dead: set[int] = set()
    for i in reversed(range(len(nodes))):
        node = nodes[i]
        if any(o in used for o in node.output if o):
            used.update(x for k, x in enumerate(node.input) if x and (i, k) not in cut)
            used.update(subgraph_outer_refs(node))
        else:
            dead.add(i)
    return dead


def dead_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of nodes none of whose outputs is read (by a node or as a graph output)."""
    return _dead(graph.node, [o.name for o in graph.output], set())


def drop_vanished(model: onnx.ModelProto, vanished: set[str], shape: Callable[[str], tuple | None],
                  replace_input: Callable[[onnx.NodeProto, int, np.ndarray], None],
                  add_input: Callable[[onnx.NodeProto, np.ndarray], None] | None = None) -> int:
    """Take the vanished region out of the pruned ``model`` in place; returns the nodes removed.
    Nodes that were dead before stay (this edit removes only what it made dead), except those that
    write or read a vanished tensor. With
    ``add_input``, the constant ``Add`` nodes left where removed branches met live tensors are
    merged and absorbed into the biases before them (surgery/absorb.py)."""
    from onnx import numpy_helper

    from compressor.ir.graph import drop_unused

    g = model.graph
    consts: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
    cnodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
    cache: dict[str, np.ndarray] = {}

    def const(name: str) -> np.ndarray | None:
        if name in cache:
            return cache[name]
        if name in consts:
            v = numpy_helper.to_array(consts[name])
        elif name in cnodes:
            from compressor.ir.shapes import constant_node_value
            v = constant_node_value(cnodes[name])
        else:
            return None
        cache[name] = v
        return v

    before = dead_nodes(g)
    try:
        edits = plan_drop(list(g.node), const, shape, vanished, {o.name for o in g.output}, model.opset_import)
    except DropError as exc:
        from compressor.errors import CompressorError
        raise CompressorError(f"a group cannot be removed whole: {exc}") from None
    for i, k, v in edits.substitutions:
        replace_input(g.node[i], k, v)
    met = [g.node[i].output[0] for i, _, _ in edits.substitutions]  # before the indices shift
    for i, k in sorted(edits.concat_drops, reverse=True):
        del g.node[i].input[k]
    concats = [g.node[i].output[0] for i in sorted({i for i, _ in edits.concat_drops})]
    after = dead_nodes(g) - before
    # a node that was dead before stays, unless it writes a tensor with no channels left (its
    # group was removed: a dead layer's output costs nothing, so an allocation removes it first)
    # or reads one (a dead branch off a removed layer: nothing would compute its input)
    after |= {i for i in before if any(o in vanished for o in g.node[i].output if o)
              or any(x in vanished for x in g.node[i].input if x)}
    gone = {o for i in after for o in g.node[i].output if o}
    while True:  # and the dead nodes downstream of those, which would read nothing
        more = {i for i in before - after if any(x in gone for x in g.node[i].input if x)}
        if not more:
            break
        after |= more
        gone |= {o for i in more for o in g.node[i].output if o}
    for i in sorted(after, reverse=True):
        del g.node[i]
    singles = _bypass_single_concats(g, set(concats))
    left = next((o for n in g.node for o in n.output if o in vanished), None)
    if left is not None:  # a reader plan_drop missed: never hand on a tensor with no channels
        from compressor.errors import CompressorError
        raise CompressorError(f"internal: '{left}' has no channels left but is still computed after removing "
                              "the groups whole")
    absorbed = 0
    if add_input is not None and edits.substitutions:
        from compressor.surgery.absorb import absorb_constant_adds

        absorbed = absorb_constant_adds(model.graph, met, shape, replace_input, add_input)
    drop_unused(model)
    return len(after) + singles + absorbed


def _concat_names_kept(nodes, graph_outputs, concats: set[str]) -> set[str]:
    """The concat outputs that stay written (as an Identity) when the concat is left with one
    input: graph outputs, and every concat if a subgraph may read it by name."""
    subgraphs = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute)
    return set(graph_outputs) | (concats if subgraphs else set())


def _bypass_single_concats(g: onnx.GraphProto, outputs: set[str]) -> int:
    """The concats writing ``outputs`` that are left with one input are that input: their readers
    read it directly (an Identity stays where the concat wrote a graph output, or a subgraph may
    read it). Returns the nodes removed."""
    keep_names = _concat_names_kept(g.node, [o.name for o in g.output], outputs)
    removed = []
    for i, node in enumerate(g.node):
        if node.op_type != "Concat" or node.output[0] not in outputs:
            continue
        ins = [x for x in node.input if x]
        if len(ins) != 1:
            continue
        out = node.output[0]
        if out in keep_names:
            node.op_type = "Identity"
            del node.attribute[:]
            del node.input[:]
            node.input.append(ins[0])
            continue
        for n in g.node:
            for k, x in enumerate(n.input):
                if x == out:
                    n.input[k] = ins[0]
        removed.append(i)
    for i in reversed(removed):
        del g.node[i]
    return len(removed)


def removable_groups(analysis: Analysis) -> list[int]:
    """The prunable groups that can each be removed whole (alone)."""
    return [g.id for g in analysis.prunable if removal_blocker(analysis, {g.id}) is None]


def removable_together(analysis: Analysis, candidates: list[int] | None = None) -> set[int]:
    """A set of groups that can be removed whole together: ``candidates`` (default: every group
    removable alone) added one by one while the set stays removable."""
    chosen: set[int] = set()
    for gid in removable_groups(analysis) if candidates is None else candidates:
        if removal_blocker(analysis, chosen | {gid}) is None:
            chosen.add(gid)
    return chosen
