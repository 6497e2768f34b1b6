"""Where the entries of a computed shape vector come from (a helper for rules, not a rule).

Exporters compute Reshape targets and Resize sizes at run time: ``Shape -> Gather -> Unsqueeze ->
Concat`` (``x.view(x.size(0), -1)``), ``Shape -> Slice -> Concat`` (``F.interpolate(size=...)``),
with literal constants mixed in (``x.view(n, 12, 64)``). Each entry of such a vector is traced to
one of:

- ``dim``: ``Shape(tensor)[axis]``, which adapts by itself when that axis is pruned;
- ``const``: a literal;
- ``unknown``: arithmetic or anything else not followed.

``where`` names the Concat operand that holds an entry (a constant, or a computed one-element
operand), so surgery can state the pruned channel count there, which is static.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from compressor.analysis.context import AnalysisContext

MAX_DEPTH = 12
_UNARY = {"Neg", "Abs", "Floor", "Ceil", "Sqrt", "Reciprocal", "Round", "Exp", "Log"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Mod", "Pow", "Max", "Min"}


@dataclass(frozen=True)
class Entry:
    kind: str  # "dim" | "const" | "unknown"
    value: int | None = None
    tensor: str | None = None
    axis: int | None = None
    #: (node index of the Concat, its input slot, flat index in that operand) for literals
    where: tuple[int, int, int] | None = None
    #: the ``(tensor, axis)`` lengths the value is computed from (a ``dim`` reads its own, a
    #: literal none); None where the computation was not followed (see :func:`entry_deps`)
    deps: frozenset | None = None


def _attr(node, name, default=None):
    return AnalysisContext.attr(node, name, default)


def trace(ctx: AnalysisContext, name: str, depth: int = 0) -> list[Entry] | None:
    """Entries of the 1-D (or scalar) int tensor ``name``, or None when its length is unknown."""
    index = ctx.index
    if index.is_const(name):
        v = np.asarray(index.const(name)).reshape(-1)
        return [Entry("const", int(a), deps=frozenset()) if float(a).is_integer() else
                Entry("unknown", deps=frozenset()) for a in v]
    prod = index.producer.get(name)
    known = index.value(name)
    if known is not None:
        fallback = [Entry("unknown") for _ in np.asarray(known).reshape(-1)]
    else:  # the length alone, from the inferred shape (a scalar counts as one entry)
        shape = ctx.shape(name)
        fallback = None if shape is None or len(shape) > 1 else [Entry("unknown")] * (shape[0] if shape else 1)
    if prod is None or depth > MAX_DEPTH:
        return fallback
    idx, node = prod
    op = node.op_type
    if op == "Shape":
        shape = ctx.shape(node.input[0])
        if shape is None:
            return fallback
        r = len(shape)
        start = int(_attr(node, "start", 0))
        end = _attr(node, "end", None)
        start = max(0, start + r if start < 0 else start)
        end = r if end is None else max(0, min(r, int(end) + r if int(end) < 0 else int(end)))
        return [Entry("dim", tensor=node.input[0], axis=a, deps=frozenset({(node.input[0], a)}))
                for a in range(start, end)]
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
        return trace(ctx, node.input[0], depth + 1)
    if op in _UNARY or op in _BINARY:
        # arithmetic on shape values (C // heads, sqrt(head_dim)): the result is computed, but
        # which lengths it reads is known entry by entry
        parts = [trace(ctx, x, depth + 1) for x in node.input[:2 if op in _BINARY else 1]]
        if any(p is None for p in parts):
            return fallback
        n = max(len(p) for p in parts)
        if any(len(p) not in (1, n) for p in parts):
            return fallback
        out = []
        for i in range(n):
            ds = [p[i if len(p) > 1 else 0].deps for p in parts]
            out.append(Entry("unknown", deps=None if any(d is None for d in ds) else frozenset().union(*ds)))
        return out
    if op == "Gather" and int(_attr(node, "axis", 0)) == 0:
        src = trace(ctx, node.input[0], depth + 1)
        ind = index.const(node.input[1])
        if src is None or ind is None:
            return fallback
        try:
            return [src[int(i)] for i in np.asarray(ind).reshape(-1)]
        except IndexError:
            return fallback
    if op == "Slice":
        src = trace(ctx, node.input[0], depth + 1)
        vals = []
        for k in (1, 2, 3, 4):
            n = node.input[k] if len(node.input) > k else ""
            vals.append(None if not n else index.const(n))
        if ctx.opset < 10:
            vals = [_attr(node, "starts"), _attr(node, "ends"), _attr(node, "axes"), None]
        starts, ends, axes, steps = vals
        if src is None or starts is None or ends is None:
            return fallback
        if axes is not None and [int(a) for a in np.asarray(axes).reshape(-1)] not in ([0], [-1]):
            return fallback
        step = 1 if steps is None else int(np.asarray(steps).reshape(-1)[0])
        s, e = int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0])
        return src[slice(s, e, step)]
    if op == "Concat" and int(_attr(node, "axis", 0)) in (0, -1):
        out: list[Entry] = []
        for slot, x in enumerate(node.input):
            part = trace(ctx, x, depth + 1)
            if part is None:
                return fallback
            if index.is_const(x):
                part = [replace(e, where=(idx, slot, i)) for i, e in enumerate(part)]
            elif len(part) == 1:  # a computed one-element operand can be replaced by a literal
                part = [replace(part[0], where=(idx, slot, 0))]
            out.extend(part)
        return out
    return fallback


def entry_deps(ctx: AnalysisContext, entry: Entry, source: str) -> set[tuple[str, int]]:
    """The channel axes (tracked ``(tensor, axis)``) whose length the value of ``entry`` (an entry
    of the vector ``source``) may read. Batch and spatial axes carry no channels and never count.

    Known entry by entry where :func:`trace` followed the computation (``deps``); otherwise every
    tracked axis a Shape node upstream reads (of the Concat operand holding the entry, or of the
    whole vector): conservative, a read is a dependency.
    """
    if entry.deps is not None:
        return {(t, a) for t, a in entry.deps if ctx.layout(t, a) is not None}
    if entry.where is not None:
        node_idx, slot, _ = entry.where
        source = ctx.index.nodes[node_idx].input[slot]
    return shape_reads(ctx, source)


def value_deps(ctx: AnalysisContext, name: str) -> set[tuple[str, int]]:
    """The channel axes whose lengths the small computed value ``name`` reads."""
    entries = trace(ctx, name)
    if entries is None:
        return shape_reads(ctx, name)
    out: set[tuple[str, int]] = set()
    for e in entries:
        out |= entry_deps(ctx, e, name)
    return out


def shape_reads(ctx: AnalysisContext, start: str) -> set[tuple[str, int]]:
    """Every tracked ``(tensor, axis)`` that a Shape node upstream of ``start`` reads: the
    conservative answer when the computation of ``start`` cannot be followed entry by entry."""
    index = ctx.index
    deps: set[tuple[str, int]] = set()
    seen, stack = set(), [start]
    while stack and len(seen) < 64 * MAX_DEPTH:
        name = stack.pop()
        if name in seen or not name or index.is_const(name):
            continue
        seen.add(name)
        prod = index.producer.get(name)
        if prod is None:
            continue
        node = prod[1]
        if node.op_type == "Shape":
            x = node.input[0]
            for ax in ctx.layouts(x):
                deps.add((x, ax))
            continue
        stack.extend(node.input)
    return deps


def adapts(ctx: AnalysisContext, entry: Entry, layout, where: str) -> bool:
    """Can ``entry`` state the pruned length of an axis with ``layout``?

    A literal -1 does. An entry that surgery can replace (a literal, or any one-element operand of
    the Concat that builds the vector: ``x.reshape(B, N, C)`` with C read from another tensor) does:
    the channel count after pruning is static. Otherwise a ``Shape(t)[k]`` entry does when t's
    axis k carries the same channels: the two layouts are unified so they lose the same channels.
    """
    if entry.kind == "const" and entry.value == -1:
        return True
    if entry.where is not None:
        return True
    if entry.kind == "dim":
        src = ctx.layout(entry.tensor, entry.axis)
        if src is None:
            return False
        ctx.unify(src, layout, where)
        return True
    return False


def rewrite_literal(ctx, entry: Entry, new_value: int) -> None:
    """Surgery: make the Concat operand that holds ``entry`` state ``new_value``."""
    if entry.where is None or (entry.kind == "const" and entry.value in (-1, new_value)):
        return
    node_idx, slot, flat = entry.where
    node = ctx.model.graph.node[node_idx]
    name = node.input[slot]
    if entry.kind != "const":  # a computed one-element operand becomes a literal
        shape = ctx.index.shape(name)
        ctx.replace_input(node, slot, np.full(shape if shape is not None else (1,), new_value, np.int64))
        return
    cur = ctx.value(name) if ctx.index.is_const(name) else None
    if cur is None:
        # an earlier rewrite already replaced it: read the replacement
        from onnx import numpy_helper

        init = {t.name: t for t in ctx.model.graph.initializer}
        cur = numpy_helper.to_array(init[name])
    arr = np.array(cur, copy=True)
    flat_view = arr.reshape(-1)
    flat_view[flat] = new_value
    ctx.replace_input(node, slot, flat_view.reshape(arr.shape))
