"""Where the entries of a computed shape vector come from (a helper for rules, not a rule).

Exporters compute Reshape targets and Resize sizes at run time: ``Shape -> Gather -> Unsqueeze ->
Concat`` (``x.view(x.size(0), -1)``), ``Shape -> Slice -> Concat`` (``F.interpolate(size=...)``),
``Shape[1] * Shape[2]`` (``x.view(b, c * h, w)``), with literal constants mixed in
(``x.view(n, 12, 64)``) and one-element values moved around by Reshape, Split, Cast. Each entry of
such a vector is traced to one of:

- ``dim``: ``Shape(tensor)[axis]``, which adapts by itself when that axis is pruned;
- ``const``: a literal;
- ``unknown``: computed; ``deps`` says which lengths it reads where that was followed, and
  ``prod`` its form where it is a product of literals and lengths.

An entry of a channel axis must state the pruned length at every input shape. It does when it is
-1, when it reads only channel counts and literals (its value after pruning is fixed by the plan:
surgery states it where ``where`` names the Concat operand holding it), when it is a product with
one channel length read at run time, or when it is a literal times batch/spatial lengths (surgery
scales the literal). An entry of any other axis must not change: one that reads channel counts is
restated by surgery only where it reads nothing else; otherwise its channels stay whole. A length
that is dynamic in the input model is never replaced by its value at the verification shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from compressor.analysis.context import AnalysisContext

MAX_DEPTH = 12
_UNARY = {"Neg", "Abs", "Floor", "Ceil", "Sqrt", "Reciprocal", "Round", "Exp", "Log"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Mod", "Pow", "Max", "Min"}
_REDUCE = {"ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin"}

Dim = tuple[str, int]


@dataclass(frozen=True)
class Product:
    """An entry computed as ``coef * prod(dims)``: literals times lengths read at run time."""

    coef: int
    dims: tuple[Dim, ...] = ()
    #: (node index, input slot) of the one-element constant Mul operand that is the only literal
    #: factor surgery can reach (None when there is none, or more than one)
    literal: tuple[int, int] | None = None


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
    #: the entry as a product of literals and lengths, where it is one
    prod: Product | None = None


def _attr(node, name, default=None):
    return AnalysisContext.attr(node, name, default)


def _ints(value) -> list[int] | None:
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def trace(ctx: AnalysisContext, name: str, depth: int = 0) -> list[Entry] | None:
    """Entries of the 1-D (or scalar) int tensor ``name``, or None when its length is unknown."""
    index = ctx.index
    if index.is_const(name):
        v = np.asarray(index.const(name)).reshape(-1)
        return [Entry("const", int(a), deps=frozenset(), prod=Product(int(a))) if float(a).is_integer() else
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
        return [Entry("dim", tensor=node.input[0], axis=a, deps=frozenset({(node.input[0], a)}),
                      prod=Product(1, ((node.input[0], a),)))
                for a in range(start, end)]
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Flatten"):
        return trace(ctx, node.input[0], depth + 1)
    if op == "Reshape":  # tf2onnx's Reshape(scalar, [1]) instead of Unsqueeze: the order is kept
        src = trace(ctx, node.input[0], depth + 1)
        out = ctx.shape(name)
        if src is None or out is None or len(out) > 1 or len(src) != (out[0] if out else 1):
            return fallback
        return src
    if op in _UNARY or op in _BINARY:
        # arithmetic on shape values (C // heads, sqrt(head_dim)): the result is computed, but
        # which lengths it reads is known entry by entry
        operands = node.input[:2 if op in _BINARY else 1]
        parts = [trace(ctx, x, depth + 1) for x in operands]
        if any(p is None for p in parts):
            return fallback
        n = max(len(p) for p in parts)
        if any(len(p) not in (1, n) for p in parts):
            return fallback
        out = []
        for i in range(n):
            picked = [p[i if len(p) > 1 else 0] for p in parts]
            ds = [e.deps for e in picked]
            product = None
            if op == "Mul" and all(e.prod is not None for e in picked):
                sites = [(idx, k) if index.is_const(x) and np.asarray(index.const(x)).size == 1 else e.prod.literal
                         for k, (x, e) in enumerate(zip(operands, picked))]
                sites = [s for s, p in zip(sites, parts) if s is not None and (len(p) == n or n == 1)]
                product = Product(picked[0].prod.coef * picked[1].prod.coef, picked[0].prod.dims + picked[1].prod.dims,
                                  sites[0] if len(sites) == 1 else None)
            out.append(Entry("unknown", deps=None if any(d is None for d in ds) else frozenset().union(*ds),
                             prod=product))
        return out
    if op in _REDUCE:  # prod(x.shape[1:]): one value read from every entry
        src = trace(ctx, node.input[0], depth + 1)
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = _ints(index.const(node.input[1]))
        if src is None or (axes is not None and any(a not in (0, -1) for a in axes)) or \
                (axes == [] and int(_attr(node, "noop_with_empty_axes", 0))):
            return fallback
        ds = [e.deps for e in src]
        product = None
        if op == "ReduceProd" and all(e.prod is not None for e in src):
            product = Product(math.prod(e.prod.coef for e in src), sum((e.prod.dims for e in src), ()))
        return [Entry("unknown", deps=None if any(d is None for d in ds) else frozenset().union(*ds), prod=product)]
    if op == "Gather" and int(_attr(node, "axis", 0)) in (0, -1):
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
        if axes is not None and _ints(axes) not in ([0], [-1]):
            return fallback
        step = 1 if steps is None else _ints(steps)[0]
        s, e = _ints(starts)[0], _ints(ends)[0]
        return src[slice(s, e, step)]
    if op == "Split" and int(_attr(node, "axis", 0)) in (0, -1):
        src = trace(ctx, node.input[0], depth + 1)
        if src is None:
            return fallback
        sizes = _ints(index.const(node.input[1])) if len(node.input) > 1 and node.input[1] else None
        if sizes is None and not (len(node.input) > 1 and node.input[1]):
            sizes = _attr(node, "split", None)
        if sizes is None:
            chunk = -(-len(src) // len(node.output))
            sizes = [chunk] * (len(node.output) - 1) + [len(src) - chunk * (len(node.output) - 1)]
        if len(sizes) != len(node.output) or sum(sizes) != len(src) or min(sizes) < 0:
            return fallback
        k = list(node.output).index(name)
        return src[sum(sizes[:k]):sum(sizes[:k + 1])]
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


def _holder(ctx: AnalysisContext, entry: Entry, source: str) -> str:
    """The tensor that holds ``entry``: its Concat operand, else the whole vector."""
    if entry.where is None:
        return source
    node_idx, slot, _ = entry.where
    return ctx.index.nodes[node_idx].input[slot]


def _unfollowed_deps(ctx: AnalysisContext, name: str) -> set[Dim]:
    """The channel axes read upstream of ``name``, whose computation was not followed: none when
    evaluating it with every channel count reduced gives the same value, else every one."""
    from compressor.analysis.shape_reads import classify

    reads = shape_reads(ctx, name)
    if reads and classify(ctx, name)[0] == "independent":
        return set()
    return reads


def entry_deps(ctx: AnalysisContext, entry: Entry, source: str) -> set[Dim]:
    """The channel axes (tracked ``(tensor, axis)``) whose length the value of ``entry`` (an entry
    of the vector ``source``) may read. Batch and spatial axes carry no channels and never count.

    Known entry by entry where :func:`trace` followed the computation (``deps``); otherwise every
    tracked axis a Shape node upstream reads (of the Concat operand holding the entry, or of the
    whole vector), unless its value is the same with every channel count changed.
    """
    if entry.deps is not None:
        return {(t, a) for t, a in entry.deps if ctx.layout(t, a) is not None}
    return _unfollowed_deps(ctx, _holder(ctx, entry, source))


def value_deps(ctx: AnalysisContext, name: str) -> set[Dim]:
    """The channel axes whose lengths the small computed value ``name`` reads."""
    entries = trace(ctx, name)
    if entries is None:
        return _unfollowed_deps(ctx, name)
    out: set[Dim] = set()
    for e in entries:
        out |= entry_deps(ctx, e, name)
    return out


def shape_reads(ctx: AnalysisContext, start: str) -> set[Dim]:
    """Every tracked ``(tensor, axis)`` that a Shape node upstream of ``start`` reads: the
    conservative answer when the computation of ``start`` cannot be followed entry by entry."""
    index = ctx.index
    deps: set[Dim] = set()
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


def _static_length(ctx: AnalysisContext, tensor: str, axis: int) -> bool:
    """Is axis ``axis`` of ``tensor`` the same at every input shape (a channel count, or a length
    the input model fixes)?"""
    if ctx.layout(tensor, axis) is not None or ctx.index.is_const(tensor):
        return True
    dims = ctx.index.declared_dims.get(tensor)
    return dims is not None and axis < len(dims) and dims[axis] is not None


def fixed_by_plan(ctx: AnalysisContext, entry: Entry, source: str) -> bool:
    """Does ``entry`` read only channel counts, static lengths and literals? Its value after
    pruning is then a constant of the plan, the same at every input shape."""
    if entry.deps is not None:
        return all(_static_length(ctx, t, a) for t, a in entry.deps)
    from compressor.analysis.shape_reads import classify

    return classify(ctx, _holder(ctx, entry, source))[0] == "channels"


def _other_dims(ctx: AnalysisContext, prod: Product) -> tuple[list[Dim], int | None]:
    """The channel lengths a product reads, and the static value of the rest of it."""
    tracked = [d for d in prod.dims if ctx.layout(*d) is not None]
    rest = prod.coef
    for t, a in prod.dims:
        if (t, a) in tracked:
            continue
        shape = ctx.shape(t)
        if shape is None or a >= len(shape):
            return tracked, None
        rest *= int(shape[a])
    return tracked, rest


def _private_path(ctx: AnalysisContext, node_idx: int, source: str) -> bool:
    """Does the output of node ``node_idx`` reach ``source`` through values nothing else reads?"""
    index = ctx.index
    name = index.nodes[node_idx].output[0]
    for _ in range(4 * MAX_DEPTH):
        if name == source:
            return True
        users = index.consumers.get(name, [])
        if len(users) != 1 or name in index.output_names or len(users[0][0].output) != 1:
            return False
        name = users[0][0].output[0]
    return False


def _scalable(ctx: AnalysisContext, entry: Entry, layout, source: str) -> bool:
    """Is ``entry`` a literal times batch/spatial lengths whose literal surgery can scale exactly
    with the channels kept (``c * h`` exported as ``8 * Shape(x)[2]``)?"""
    prod = entry.prod
    if prod is None or prod.literal is None or not prod.dims:
        return False
    node_idx, slot = prod.literal
    literal = ctx.index.const(ctx.index.nodes[node_idx].input[slot])
    lay = ctx.table.normalize(layout)
    if literal is None or len({inner for _, inner in lay}) != 1:
        return False
    channels = sum(ctx.table.size(g) for g, _ in lay)
    return int(np.asarray(literal).reshape(-1)[0]) % channels == 0 and _private_path(ctx, node_idx, source)


def adapts(ctx: AnalysisContext, entry: Entry, layout, where: str, source: str) -> bool:
    """Can ``entry`` (of the vector ``source``) state the pruned length of an axis with ``layout``
    at every input shape?

    - a literal -1 does;
    - an entry that reads only channel counts and literals, held where surgery can restate it (a
      literal, or a one-element operand of the Concat that builds the vector: ``x.reshape(B, N, C)``
      with C read from another tensor): its value after pruning is fixed by the plan;
    - ``Shape(t)[k]`` times batch/spatial lengths and literals (``c * h``) does when t's axis k
      carries the same channels: the two layouts are unified so they lose the same channels;
    - a literal times batch/spatial lengths (``8 * h``) does where surgery can scale the literal.
    """
    if entry.kind == "const" and entry.value == -1:
        return True
    if entry.where is not None and fixed_by_plan(ctx, entry, source):
        return True
    if entry.prod is None:
        return False
    tracked, rest = _other_dims(ctx, entry.prod)
    if rest is None or rest <= 0:
        return False
    if len(tracked) == 1:
        src = ctx.layout(*tracked[0])
        ctx.unify(tuple((g, inner * rest) for g, inner in src), layout, where)
        return True
    return not tracked and _scalable(ctx, entry, layout, source)


def check_unchanged(ctx: AnalysisContext, entry: Entry, source: str, where: str) -> None:
    """An entry for an axis that carries no channels must keep its value: where it reads channel
    counts, surgery restates it when it reads nothing else (its original value is then exact);
    otherwise the channels it reads stay whole."""
    deps = entry_deps(ctx, entry, source)
    if not deps or (entry.where is not None and fixed_by_plan(ctx, entry, source)):
        return
    for t, a in sorted(deps):
        ctx.freeze_layout(ctx.layout(t, a), f"{where} reads the channel count of '{t}' axis {a} "
                                            f"together with lengths that vary at run time")


def rewrite_entry(sctx, entry: Entry, source: str, old: int, new: int) -> None:
    """Surgery: make ``entry`` of the vector ``source`` (whose axis goes from ``old`` to ``new``
    elements) state the pruned model's length, as the analysis decided (:func:`adapts`,
    :func:`check_unchanged`). Entries that read a dynamic length are never replaced by a literal."""
    actx = sctx.analysis.ctx
    if entry.kind == "const" and entry.value in (-1, 0):
        return
    if entry.where is not None and fixed_by_plan(actx, entry, source):
        changed = old != new or any(sctx.new_shape(t)[a] != sctx.old_shape(t)[a]
                                    for t, a in entry_deps(actx, entry, source))
        if changed:
            rewrite_literal(sctx, entry, new)
        return
    prod = entry.prod
    if old == new or prod is None or prod.literal is None or not prod.dims:
        return
    if any(actx.layout(*d) is not None for d in prod.dims):
        return  # it reads the channel length itself
    node_idx, slot = prod.literal
    literal = np.asarray(actx.index.const(actx.index.nodes[node_idx].input[slot]))
    value = int(literal.reshape(-1)[0]) * new
    if value % old:  # pragma: no cover - the analysis checked that the literal scales exactly
        raise ValueError(f"internal: literal {literal} cannot scale from {old} to {new}")
    sctx.replace_input(sctx.model.graph.node[node_idx], slot, np.full(literal.shape, value // old, literal.dtype))


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
