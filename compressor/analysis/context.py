"""The state that rules read and write while the graph is walked in topological order."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx

from compressor.analysis.layout import GroupTable, Layout, LayoutError
from compressor.ir.graph import GraphIndex, node_attr, subgraph_outer_refs

#: Roles of constants that carry a group's channels.
PRODUCER, CONSUMER, PARAM = "producer", "consumer", "param"


@dataclass
class MemberRecord:
    tensor: str
    axis: int
    role: str
    node: str
    op_type: str
    slot: int


@dataclass
class ConsumePoint:
    """A node input that contracts (sums) over a tracked axis: where the oracle masks channels."""

    node_index: int
    input_index: int
    axis: int


@dataclass
class NormPoint:
    """A normalisation whose statistics run over a tracked axis (LayerNorm over the channels, a
    GroupNorm with one group over the channels and every position).

    Removing channels removes them from the statistics; the oracle's reference therefore computes
    this node over the kept channels only (a masked decomposition) instead of zero-masking its input.
    """

    node_index: int
    axis: int
    #: a normalisation written out in several nodes, whose first node is ``node_index`` (a LayerNorm
    #: in elementary ops, rules/layernorm_decomposed.py: its first ReduceMean; the exporters'
    #: GroupNorm(1), rules/groupnorm.py: the Reshape into one group): the indices of the other
    #: nodes, which the reference replaces too, its epsilon, and the tensor it writes (the
    #: normalised values, before any affine done in nodes of its own). Empty / None for a
    #: LayerNormalization or GroupNormalization node.
    also: tuple[int, ...] = ()
    epsilon: float | None = None
    output: str | None = None
    #: the axes the statistics run over besides ``axis``, every position of them (a GroupNorm with
    #: one group: the spatial axes); empty for a LayerNorm
    spatial: tuple[int, ...] = ()
    #: a written-out region's own scale and bias (the exporters' InstanceNormalization's, one value
    #: each), applied by the reference after the normalisation; None where there is none
    scale: str | None = None
    bias: str | None = None


@dataclass
class ShapePin:
    """Input ``slot`` of node ``node_index`` reads a small value computed from channel counts at run
    time (Swin's attention scale ``(C // heads) ** -0.5`` from ``x.shape[-1]``). Surgery replaces
    that input by the value the original model computes, so pruning the channels cannot change it."""

    node_index: int
    slot: int
    value: np.ndarray
    #: the channel counts (tensor, axis) the value is computed from: pinned only when one changes
    reads: tuple[tuple[str, int], ...] = ()


@dataclass
class Widening:
    """Input ``slot`` of node ``node_index`` mixes the positions of tracked ``axis`` (ECA's 1-D conv
    over the channels, LRN) and its first output carries them one for one at
    ``out_axis``. The pruned model widens the input back to every channel, zeros where channels were
    removed, before the node, and takes the kept channels of its output after it
    (surgery/widen.py): the node then computes exactly what it computes in the masked original,
    whose removed channels are zeroed at this input (it is a consume point). It runs at full width;
    everything around it is pruned."""

    node_index: int
    slot: int
    axis: int
    out_axis: int


@dataclass
class Barrier:
    node: str
    op_type: str
    reason: str


@dataclass
class AnalysisContext:
    index: GraphIndex
    opset: int
    table: GroupTable = field(default_factory=GroupTable)
    layout_map: dict[str, dict[int, Layout]] = field(default_factory=dict)
    members: dict[tuple[str, int], MemberRecord] = field(default_factory=dict)
    consume_points: list[ConsumePoint] = field(default_factory=list)
    norm_points: list[NormPoint] = field(default_factory=list)
    shape_pins: list[ShapePin] = field(default_factory=list)
    widenings: list[Widening] = field(default_factory=list)
    #: groups standing for the positions of a tensor no rule tracks, concatenated beside pruned
    #: ones (a detector head's anchors): no layer's channels, left out of the report's ``unprunable``
    placeholders: set[int] = field(default_factory=set)
    #: prune through LayerNorm over the channel axis and GroupNorm with one group (statistics over
    #: the kept channels) instead of freezing the groups they normalise
    prune_norms: bool = False
    barriers: list[Barrier] = field(default_factory=list)
    group_nodes: dict[int, set[str]] = field(default_factory=dict)
    node_index: int = -1

    # ---- graph facts ------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.index.shape(name)

    def rank(self, name: str) -> int | None:
        return self.index.rank(name)

    def is_const(self, name: str) -> bool:
        return self.index.is_const(name)

    def const(self, name: str) -> np.ndarray | None:
        return self.index.const(name)

    def value(self, name: str) -> np.ndarray | None:
        return self.index.value(name)

    attr = staticmethod(node_attr)

    def label(self, node: onnx.NodeProto) -> str:
        return self.index.node_label(node)

    # ---- layouts ----------------------------------------------------------
    def layouts(self, name: str) -> dict[int, Layout]:
        d = self.layouts_raw(name)
        return {ax: self.table.normalize(lay) for ax, lay in d.items()}

    def layouts_raw(self, name: str) -> dict[int, Layout]:
        return self.layout_map.get(name, {})

    def layout(self, name: str, axis: int) -> Layout | None:
        lay = self.layout_map.get(name, {}).get(axis)
        return None if lay is None else self.table.normalize(lay)

    def tracked(self, name: str) -> bool:
        return bool(self.layout_map.get(name))

    def set_layout(self, name: str, axis: int, layout: Layout) -> Layout:
        """Attach a layout to (tensor, axis); if one is there already, the two are unified."""
        rank = self.rank(name)
        if rank is not None and axis < 0:
            axis += rank
        cur = self.layout_map.setdefault(name, {}).get(axis)
        if cur is not None:
            layout = self.unify(cur, layout, f"tensor '{name}' axis {axis}")
        self.layout_map[name][axis] = layout
        return layout

    def unify(self, a: Layout, b: Layout, where: str) -> Layout:
        try:
            return self.table.unify(a, b)
        except LayoutError as exc:
            reason = f"incompatible channel layouts at {where}: {exc}"
            self.freeze_layout(a, reason)
            self.freeze_layout(b, reason)
            return self.table.normalize(a)

    def new_group(self, name: str, axis: int, size: int | None = None, node: onnx.NodeProto | None = None,
                  frozen: str | None = None) -> Layout:
        if size is None:
            size = self.shape(name)[axis]
        origin = self.label(node) if node is not None else name
        gid = self.table.new(size, origin=origin, frozen=frozen)
        lay: Layout = ((gid, 1),)
        self.set_layout(name, axis, lay)
        return lay

    def bind(self, name: str, axis: int, layout: Layout, role: str, node: onnx.NodeProto, slot: int) -> None:
        """Give (tensor, axis) a layout; constants become members of its groups with ``role``."""
        rank = self.rank(name)
        if rank is not None and axis < 0:
            axis += rank
        whole = self._read_whole(name, axis, node) if self.is_const(name) else None
        layout = self.set_layout(name, axis, layout)
        if whole is not None:  # surgery slices a constant for every reader: that one would change
            self.freeze_layout(layout, f"constant '{name}' is also read whole by {whole.op_type} "
                                       f"'{self.label(whole)}' (its axis {axis} carries no channels there)")
        if self.is_const(name):
            key = (name, axis)
            if key not in self.members:
                self.members[key] = MemberRecord(name, axis, role, self.label(node), node.op_type, slot)
        for g, _ in self.table.normalize(layout):
            self.group_nodes.setdefault(self.table.find(g), set()).add(self.label(node))

    def _read_whole(self, name: str, axis: int, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """A node analysed before this one, other than ``node``, that read the constant ``name``
        while its axis ``axis`` carried no channels (a Shape's reads are checked after the walk)."""
        if self.layout(name, axis) is not None:
            return None
        position = self._positions
        return next((n for n, _ in self.index.consumers.get(name, ())
                     if n is not node and n.op_type != "Shape" and position.get(id(n), -1) < self.node_index
                     and position.get(id(n), -1) >= 0), None)

    def join(self, node: onnx.NodeProto, operands: list[tuple[str, int]], out: str | None, out_axis: int,
             what: str) -> Layout | None:
        """Operands ``(tensor, axis)`` that carry the same channels (residual adds, concat's other
        axes, batch axes): tracked layouts are unified, constants become PARAM members, an untracked
        run-time operand freezes the channels. The result is set on ``out`` at ``out_axis``."""
        lays = [(x, ax, self.layout(x, ax)) for x, ax in operands]
        tracked = [lay for _, _, lay in lays if lay is not None]
        if not tracked:
            return None
        where = f"{node.op_type} '{self.label(node)}' {what}"
        lay = tracked[0]
        for other in tracked[1:]:
            lay = self.unify(lay, other, where)
        for x, ax, cur in lays:
            if cur is not None:
                continue
            if self.is_const(x):
                self.bind(x, ax, lay, PARAM, node, list(node.input).index(x))
            elif not self.adopt(x, ax, lay, node):
                self.freeze_layout(lay, f"{where} combines channels with untracked tensor '{x}'")
        if out is not None:
            self.set_layout(out, out_axis, lay)
        return lay

    def adopt(self, name: str, axis: int, layout: Layout, reader: onnx.NodeProto, commit: bool | None = None,
              depth: int | None = None) -> bool:
        """Give axis ``axis`` of the untracked run-time tensor ``name``, which node ``reader`` couples
        with ``layout``, that layout after the fact, where its producer's rule says the axis can carry
        any channels exactly (Rule.adopt: copies of one value broadcast along it, such as
        ``F.normalize``'s norm expanded to the channels; or positions of constants, sliced with the
        channels, such as Swin's position bias plus its window mask). No other reader of ``name``
        may have been analysed yet (it took the axis as untracked). ``commit=None``: check the whole
        chain first, then set it; returns whether it was done."""
        if depth is None:
            depth = self._adopt_depth
        if commit is None:
            return self.adopt(name, axis, layout, reader, False, depth) and \
                self.adopt(name, axis, layout, reader, True, depth)
        rank = self.rank(name)
        if depth > 8 or rank is None or self.is_const(name) or name in self.index.output_names:
            return False
        axis %= rank
        current = self.layout(name, axis)
        if current is not None:  # set already (by this commit, through another path): consistent?
            return current == self.table.normalize(layout)
        found = self.index.producer.get(name)
        if found is None:
            return False
        position = self._positions
        # a Shape read before is fine: what it computes is checked after the walk (shape_reads.py),
        # except where a rule analysed before (not one of this adoption's readers, whose own
        # Rule.adopt checks its entry) took it as a length that stays: a Reshape target, an Expand
        # shape...
        earlier = [n for n, _ in self.index.consumers.get(name, ())
                   if n is not reader and position.get(id(n), -1) <= self.node_index]
        if any(n.op_type != "Shape" for n in earlier):
            return False
        from compressor.analysis.shape_reads import checked_uses

        chain = {id(n) for n in self._adopt_chain} | {id(reader)}
        if any(position.get(id(c), -1) <= self.node_index and id(c) not in chain
               for n in earlier for c, _ in checked_uses(self.index, n.output[0])):
            return False
        from compressor.analysis.registry import get_rule

        producer = found[1]
        rule = get_rule(producer.op_type, producer.domain, self.opset)
        if rule is None:
            return False
        self._adopt_depth = depth + 1  # the rule's own ctx.adopt calls go one level deeper
        chain = self._adopt_chain
        self._adopt_chain = chain + (reader,)
        try:
            return rule.adopt(producer, self, name, axis, layout, commit)
        finally:
            self._adopt_depth = depth
            self._adopt_chain = chain

    #: how deep the adoption now asking is (Rule.adopt calls ctx.adopt for its inputs)
    _adopt_depth: int = field(default=0, repr=False)
    #: the readers the adoption now asking went through (their rules checked their own entries)
    _adopt_chain: tuple = field(default=(), repr=False)

    @cached_property
    def _positions(self) -> dict[int, int]:
        return {id(n): i for i, n in enumerate(self.index.nodes)}

    def copy_layouts(self, src: str, dst: str, axis_map: dict[int, int] | None = None,
                     node: onnx.NodeProto | None = None) -> None:
        """dst carries src's channels: each tracked src axis a appears at dst axis axis_map[a].

        An axis whose length differs between src and dst (a pool's spatial axis, a resize) cannot
        carry the channels one-to-one: its groups are frozen instead.
        """
        s_shape, d_shape = self.shape(src), self.shape(dst)
        for ax, lay in self.layouts(src).items():
            to = ax if axis_map is None else axis_map.get(ax)
            if to is None:
                continue
            if s_shape is None or d_shape is None or to >= len(d_shape) or s_shape[ax] != d_shape[to]:
                where = f" at {node.op_type} node '{self.label(node)}'" if node is not None else ""
                self.freeze_layout(lay, f"axis {ax} of '{src}' changes length{where}")
                continue
            self.set_layout(dst, to, lay)

    # ---- freezing ---------------------------------------------------------
    def freeze_layout(self, layout: Layout, reason: str) -> None:
        for g, _ in self.table.normalize(layout):
            self.table.freeze(g, reason)

    def freeze_tensor(self, name: str, reason: str) -> bool:
        lays = self.layouts(name)
        for lay in lays.values():
            self.freeze_layout(lay, reason)
        return bool(lays)

    def barrier(self, node: onnx.NodeProto, reason: str) -> None:
        """Freeze every group that reaches this node; its outputs carry no tracked channels. The node
        is reported when it froze a group or reads the model's data (a graph input or what was
        computed from one, such as another barrier's output), not when it only computes constants
        or shapes."""
        reads = [x for x in node.input if x] + sorted(subgraph_outer_refs(node))
        touched = False
        for name in reads + [y for y in node.output if y]:
            touched |= self.freeze_tensor(name, f"{node.op_type} node '{self.label(node)}': {reason}")
        if touched or any(x in self.data_path for x in reads):
            self.barriers.append(Barrier(self.label(node), node.op_type, reason))

    @cached_property
    def data_path(self) -> frozenset[str]:
        """Tensors that carry the model's data: the graph inputs and every output of a node that
        reads one, except Shape and Size, whose outputs describe the data rather than carry it."""
        data = set(self.index.input_names)
        for node in self.index.nodes:
            if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
                continue
            if any(x in data for x in node.input) or (subgraph_outer_refs(node) & data):
                data.update(y for y in node.output if y)
        return frozenset(data)

    def norm_point(self, node: onnx.NodeProto, axis: int, also: tuple[int, ...] = (), epsilon: float | None = None,
                   output: str | None = None, spatial: tuple[int, ...] = (), scale: str | None = None,
                   bias: str | None = None) -> None:
        """This node normalises over ``axis`` of its first input, which carries channels (and over
        every position of ``spatial``; with ``also``, ``epsilon``, ``output``, ``scale`` and
        ``bias``: a normalisation written out in several nodes that starts here, see NormPoint).
        The node is named among its channels' nodes (``--exclude``, ``compress inspect``)."""
        self.norm_points.append(NormPoint(self.node_index, axis, tuple(also), epsilon, output, tuple(spatial),
                                          scale, bias))
        lay = self.layout(node.input[0], axis)
        for g, _ in lay or ():
            self.group_nodes.setdefault(self.table.find(g), set()).add(self.label(node))

    def consume(self, node: onnx.NodeProto, input_index: int, axis: int) -> None:
        rank = self.rank(node.input[input_index])
        if axis < 0 and rank is not None:
            axis += rank
        if self.layout(node.input[input_index], axis) is not None:
            self.consume_points.append(ConsumePoint(self.node_index, input_index, axis))

    @cached_property
    def _all_static(self) -> bool:
        """Does every graph input declare every length (so every tensor's lengths are fixed)?"""
        return all(self.index.declared_dims.get(name) is not None and None not in self.index.declared_dims[name]
                   for name in self.index.input_names)

    def static_length(self, name: str, axis: int) -> bool:
        """Is axis ``axis`` of ``name`` as long at every input shape (not computed from a dynamic
        input length such as the batch)? Decided by onnx's inference from the declared inputs, else
        by the tensor's shape at a second input shape; unknown counts as dynamic."""
        if self._all_static:
            return True
        dims = self.index.declared_dims.get(name)
        if dims is not None and 0 <= axis < len(dims) and dims[axis] is not None:
            return True
        other, here = self.index.alternate_shapes, self.shape(name)  # as long at a second input shape?
        there = None if other is None else other.get(name)
        return here is not None and there is not None and len(there) == len(here) and there[axis] == here[axis]

    def widen(self, node: onnx.NodeProto, slot: int, axis: int, out_axis: int) -> bool:
        """Prune around ``node``, which mixes the positions of tracked ``axis`` of input ``slot``,
        instead of freezing the channels there (see Widening): possible where the node's first
        output has that axis, as long, at ``out_axis``. Returns whether it was done."""
        x, y = node.input[slot], node.output[0]
        xs, ys = self.shape(x), self.shape(y)
        lay = self.layout(x, axis)
        if lay is None or xs is None or ys is None or not 0 <= out_axis < len(ys) or xs[axis] != ys[out_axis]:
            return False
        if not self.static_length(x, axis):  # its Pad/Gather indices are built at this length
            return False
        if any(w.node_index == self.node_index for w in self.widenings):
            return False  # one axis per node is widened; channels on another axis it mixes freeze
        self.consume(node, slot, axis)
        for g, _ in self.table.normalize(lay):  # --exclude and `compress inspect` see the node
            self.group_nodes.setdefault(self.table.find(g), set()).add(self.label(node))
        self.widenings.append(Widening(self.node_index, slot, axis, out_axis))
        self.set_layout(y, out_axis, lay)
        return True
