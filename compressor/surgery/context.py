"""What a rule's ``rewrite`` sees: old and new shapes, kept positions, and safe edit helpers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.analysis.groups import Analysis
from compressor.analysis.layout import kept_count, positions
from compressor.ir.graph import node_attr, subgraph_outer_refs


class SurgeryContext:
    def __init__(self, analysis: Analysis, keep: dict[int, list[int]], model: onnx.ModelProto, opset: int):
        self.analysis = analysis
        self.index = analysis.index
        self.table = analysis.ctx.table
        self.keep = keep
        self.model = model
        self.opset = opset
        self._kept_cache: dict[tuple[str, int], list[int] | None] = {}
        self._shape_cache: dict[str, tuple[int, ...]] = {}
        #: tensors surgery added with an axis back at its original length (a widened input, a
        #: widened node's output before the cut: surgery/widen.py): (old shape, new shape)
        self.full_width: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # names taken: the input model's initializers (apply_plan adds them to ``model`` after this)
        self._names = ({t.name for t in analysis.index.model.graph.initializer}
                       | {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
                       | {v.name for v in model.graph.input})
        self._counter = 0
        #: constants an input was pointed away from (replace_input): dropped when nothing reads them
        self.replaced: set[str] = set()
        #: fresh initializer name -> the name it replaced (restore_names gives it back where free)
        self.fresh_of: dict[str, str] = {}
        #: nodes a rewrite adds after the node that now writes the first name (splice_followers)
        self.followers: list[tuple[str, list[onnx.NodeProto]]] = []

    # ---- reading -----------------------------------------------------------
    def kept(self, tensor: str, axis: int) -> list[int] | None:
        key = (tensor, axis)
        if key not in self._kept_cache:
            lay = self.analysis.ctx.layout_map.get(tensor, {}).get(axis)
            self._kept_cache[key] = None if lay is None else positions(self.table, lay, self.keep)
        return self._kept_cache[key]

    def old_shape(self, tensor: str) -> tuple[int, ...]:
        if tensor in self.full_width:
            return self.full_width[tensor][0]
        return self.index.shape(tensor)

    def new_shape(self, tensor: str) -> tuple[int, ...]:
        """The tensor's shape after the plan: each axis with a layout shrinks to its kept count
        (counted from the layout, without listing the kept positions)."""
        cached = self._shape_cache.get(tensor)
        if cached is not None:
            return cached
        if tensor in self.full_width:
            return self.full_width[tensor][1]
        shape = list(self.index.shape(tensor))
        for ax, lay in self.analysis.ctx.layout_map.get(tensor, {}).items():
            n = kept_count(self.table, lay, self.keep)
            if n is not None:
                shape[ax] = n
        out = self._shape_cache[tensor] = tuple(shape)
        return out

    def value(self, name: str) -> np.ndarray | None:
        return self.index.value(name)

    def rank(self, name: str) -> int | None:
        return self.index.rank(name)

    def is_const(self, name: str) -> bool:
        return self.index.is_const(name)

    attr = staticmethod(node_attr)

    # ---- editing -----------------------------------------------------------
    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        self.remove_attr(node, name)
        node.attribute.append(helper.make_attribute(name, value))

    @staticmethod
    def remove_attr(node: onnx.NodeProto, name: str) -> None:
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                return

    def fresh(self, base: str) -> str:
        """A tensor or node name not taken in the model."""
        while True:
            self._counter += 1
            name = f"{base}__pruned{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def replace_input(self, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
        """Point input k of ``node`` at a new initializer (never edits a possibly shared one)."""
        old = self.index.value(node.input[k]) if node.input[k] else None
        if old is not None:
            value = np.asarray(value).astype(old.dtype)
        base = (node.name or node.op_type) + f"_in{k}"
        if node.input[k]:
            name = self.fresh(node.input[k])
        elif base not in self._names:  # a constant the node did not have: named after it
            name = base
            self._names.add(name)
        else:
            name = self.fresh(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        if node.input[k]:
            self.replaced.add(node.input[k])
            self.fresh_of[name] = node.input[k]
        node.input[k] = name

    def restore_names(self, model: onnx.ModelProto) -> int:
        """Give each constant replace_input wrote the name of the one it replaced where that name is
        free again (nothing reads the old constant any more: drop_unused removed it), so that a
        layer's weights keep their names; returns how many were renamed."""
        if not self.fresh_of:
            return 0
        g = model.graph
        taken = ({t.name for t in g.initializer} | {o for n in g.node for o in n.output}
                 | {v.name for v in g.input} | {v.name for v in g.output})
        for n in g.node:
            taken |= subgraph_outer_refs(n)
        rename: dict[str, str] = {}
        for new, old in self.fresh_of.items():  # in creation order: a chain new2 -> new1 -> old
            while old in self.fresh_of and old not in taken:
                old = self.fresh_of[old]
            if new in taken and old not in taken and new not in rename.values():
                rename[new] = old
                taken.add(old)
        if not rename:
            return 0
        for t in g.initializer:
            if t.name in rename:
                t.name = rename[t.name]
        for n in g.node:
            for i, x in enumerate(n.input):
                if x in rename:
                    n.input[i] = rename[x]
        self.fresh_of = {}
        return len(rename)

    def add_input(self, node: onnx.NodeProto, value: np.ndarray) -> None:
        node.input.append("")
        self.replace_input(node, len(node.input) - 1, value)

    def constant(self, base: str, value: np.ndarray) -> str:
        """A new initializer holding ``value``; its name."""
        name = self.fresh(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def follow(self, node: onnx.NodeProto, k: int, op_type: str, operand: np.ndarray,
               *more: tuple[str, np.ndarray]) -> None:
        """Apply ``op_type(output, operand)`` (then each further ``(op_type, operand)`` of ``more``
        in turn) to output k of ``node`` under the output's own name (``node`` then writes a fresh
        name that the new nodes read): a reduction that now sees fewer channels rescaled to what the
        masked original computes. Spliced in by splice_followers."""
        out = node.output[k]
        mid = self.fresh(out)
        node.output[k] = mid
        base = node.name or node.op_type
        steps = [(op_type, operand), *more]
        nodes, cur = [], mid
        for j, (op, value) in enumerate(steps):
            c = self.constant(f"{base}_{op.lower()}", value)
            nxt = out if j == len(steps) - 1 else self.fresh(f"{base}_{op.lower()}_out")
            nodes.append(helper.make_node(op, [cur, c], [nxt], name=self.fresh(f"{base}_{op}")))
            cur = nxt
        self.follow_nodes(mid, nodes)

    def follow_nodes(self, after: str, nodes: list[onnx.NodeProto]) -> None:
        """Insert ``nodes`` right after the node that writes ``after`` (at the start of the graph
        for a graph input or a constant); spliced in by splice_followers."""
        self.followers.append((after, list(nodes)))

    def splice_followers(self) -> None:
        """Insert the nodes :meth:`follow` made right after the nodes they follow (in place: node
        indices before this point stay valid, so it runs after every index-based edit)."""
        if not self.followers:
            return
        pending = list(self.followers)
        while pending:
            # a follower whose anchor another pending follower writes (a widened node's output read
            # by the next one, a rescaled mean's) waits until that one is in the graph
            later = {o for _, nodes in pending for n in nodes for o in n.output}
            ready = [f for f in pending if f[0] not in later]
            if not ready:  # pragma: no cover - followers are made from acyclic edits
                raise RuntimeError("internal: follower nodes read each other in a cycle")
            pending = [f for f in pending if f[0] in later]
            where = {o: i for i, n in enumerate(self.model.graph.node) for o in n.output}
            for mid, nodes in sorted(ready, key=lambda f: where.get(f[0], -1), reverse=True):
                at = where.get(mid, -1) + 1
                for j, n in enumerate(nodes):
                    self.model.graph.node.insert(at + j, n)
        self.followers = []
