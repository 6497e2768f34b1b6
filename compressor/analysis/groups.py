"""Walk the graph once, apply each op's rule, and collect the final coupled channel groups."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from compressor.analysis.context import PRODUCER, AnalysisContext, Barrier, ConsumePoint
from compressor.analysis.layout import LayoutError, Layout
from compressor.analysis.registry import get_rule, no_rule_reason
from compressor.analysis.shape_reads import guard_shape_reads
from compressor.ir.graph import GraphIndex
from compressor.ir.model_io import default_opset


@dataclass(frozen=True)
class Member:
    """A constant that carries a group's channels: channel c of the group occupies positions
    [offset + c*inner, offset + (c+1)*inner) along ``axis`` of ``tensor``."""

    tensor: str
    axis: int
    offset: int
    inner: int
    role: str
    node: str
    op_type: str
    slot: int


@dataclass
class Group:
    id: int
    size: int
    prunable: bool
    reasons: list[str]
    members: list[Member] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    origin: str = ""

    def to_dict(self) -> dict:
        return {
            "id": self.id, "size": self.size, "prunable": self.prunable, "reasons": self.reasons,
            "origin": self.origin, "nodes": self.nodes,
            "members": [{"tensor": m.tensor, "axis": m.axis, "offset": m.offset, "inner": m.inner,
                         "role": m.role, "node": m.node} for m in self.members],
        }


@dataclass
class Analysis:
    index: GraphIndex
    ctx: AnalysisContext
    groups: list[Group]
    barriers: list[Barrier]

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group(self, gid: int) -> Group:
        return self._by_id[gid]

    def __post_init__(self) -> None:
        self._by_id = {g.id: g for g in self.groups}

    def layout_of(self, tensor: str, axis: int) -> Layout | None:
        return self.ctx.layout(tensor, axis)

    @property
    def consume_points(self) -> list[ConsumePoint]:
        return self.ctx.consume_points


def analyze_index(index: GraphIndex, exclude: list[str] | tuple[str, ...] = (), prune_norms: bool = False) -> Analysis:
    """Run every node's rule in order. A rule that fails on a node turns it into a barrier
    (set COMPRESSOR_STRICT_RULES=1 to raise instead, as the tests do). ``prune_norms=False`` keeps
    the groups that a LayerNorm or a GroupNorm with one group normalises whole (see
    rules/normalization.py, rules/groupnorm.py)."""
    strict = os.environ.get("COMPRESSOR_STRICT_RULES") == "1"
    opset = default_opset(index.model)
    ctx = AnalysisContext(index=index, opset=opset, prune_norms=prune_norms)
    for i, node in enumerate(index.nodes):
        ctx.node_index = i
        rule = get_rule(node.op_type, node.domain, opset)
        if rule is None:
            ctx.barrier(node, no_rule_reason(node.op_type, node.domain))
            continue
        try:
            rule.analyze(node, ctx)
        except LayoutError as exc:
            ctx.barrier(node, str(exc))
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            if strict:
                raise
            ctx.barrier(node, f"rule could not analyse this node ({type(exc).__name__}: {exc})")
    guard_shape_reads(ctx)
    for name in index.output_names:
        ctx.freeze_tensor(name, f"reaches graph output '{name}'")
    groups = _collect(ctx)
    _apply_exclude(groups, exclude)
    return Analysis(index=index, ctx=ctx, groups=groups, barriers=ctx.barriers)


def _collect(ctx: AnalysisContext) -> list[Group]:
    table = ctx.table
    found: dict[int, Group] = {}
    for tensor, axes in ctx.layout_map.items():
        for ax, lay in axes.items():
            for g, _ in table.normalize(lay):
                r = table.find(g)
                if r not in found:
                    info = table.info[r]
                    found[r] = Group(id=r, size=info.size, prunable=False, reasons=list(info.frozen),
                                     origin=info.origin)
    for (tensor, axis), rec in ctx.members.items():
        lay = ctx.layout(tensor, axis)
        pos = 0
        for g, inner in lay:
            r = table.find(g)
            found[r].members.append(Member(tensor, axis, pos, inner, rec.role, rec.node, rec.op_type, rec.slot))
            pos += table.size(g) * inner
    origin_nodes: dict[int, set[str]] = {}
    for g, nodes in ctx.group_nodes.items():
        for leaf in table.leaves(g):
            origin_nodes.setdefault(table.find(leaf), set()).update(nodes)
    for r, grp in found.items():
        grp.nodes = sorted(origin_nodes.get(r, ()))
        has_producer = any(m.role == PRODUCER for m in grp.members)
        if not grp.reasons and not has_producer:
            grp.reasons.append("no weights create these channels")
        if not grp.reasons and grp.size < 2:
            grp.reasons.append("a single channel cannot be pruned")
        grp.prunable = not grp.reasons
    return sorted(found.values(), key=lambda g: g.id)


def _apply_exclude(groups: list[Group], patterns) -> None:
    for pat in patterns or ():
        for g in groups:
            names = {m.tensor for m in g.members} | set(g.nodes)
            hit = next((n for n in sorted(names) if fnmatch.fnmatchcase(n, pat)), None)
            if hit is not None:
                g.reasons.append(f"excluded by --exclude '{pat}' ({hit})")
                g.prunable = False
