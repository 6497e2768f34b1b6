"""Absorb the constants that removed layers leave behind into the layers before them.

A group removed whole (surgery/drop.py) leaves its branch's bias as a constant operand of the
``Add`` where the branch met the live tensor: a ConvNeXt or ResNet block becomes ``x + b``. That
``Add`` is a kernel of its own over a full-size activation, and a stage whose blocks were all
removed keeps one per block. Most can go:

- ``(x + b1) + b2`` becomes ``x + (b1 + b2)`` when nothing else reads ``x + b1``;
- ``conv(x) + b`` becomes a conv with bias ``bias + b`` when nothing else reads the conv's output
  and ``b`` is constant over everything but the output channels (likewise BatchNormalization's and
  LayerNormalization's ``B``, and Gemm's ``C``);
- ``transpose(x) + b`` becomes ``transpose(x + b')`` (``b'`` permuted back) when that lets ``b'``
  be absorbed or merged further up;
- ``(a + s) + b`` (a residual sum) becomes ``(a + b) + s`` when ``b`` can be absorbed or merged
  into ``a``'s producer;
- ``relu(relu(y) + b)`` (a post-activation residual block, such as ResNet's, whose branch was
  removed) becomes ``relu(y + min(b, 0)) + max(b, 0)`` when ``min(b, 0)`` can be absorbed
  further up: the block leaves at most one Add, none when ``b`` <= 0.

A constant that cannot go up goes down (:func:`_forward`), when every node reading ``x + b``
can make up for ``b`` exactly: a 1x1 unpadded conv or a Gemm takes ``W @ b`` into its bias, a
BatchNormalization takes ``b`` out of its mean, the next residual sum ``(x + b) + s`` passes it
into the other branch (``x + (s + b)``, absorbed there), a constant ``Add`` merges with it, and a
global average pool or a flatten to 2-D carries it past (``mean(x + b) = mean(x) + b``). So a
removed bottleneck block (ResNet-50's, RegNet's) leaves nothing; only a padded conv, which
reaches the border padding differently, keeps the ``Add`` before it (ResNet-20's basic blocks).

Each step is exact up to float rounding (the bias is added once, in another place), and the
pruned model is verified against the masked original as always. Only the ``Add``/``Sub`` nodes
the removal rewrote are touched, with the ReLU right after one, the residual sums a constant
passes, the nodes reading it and the biases it ends in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.ir.graph import subgraph_outer_refs
from compressor.ir.shapes import constant_node_value

AddInput = Callable[[onnx.NodeProto, np.ndarray], None]
ReplaceInput = Callable[[onnx.NodeProto, int, np.ndarray], None]


class _Graph:
    """Producers, readers and constants of a graph being edited (rebuilt after every edit).
    ``const``: looked up before the graph's own initializers and Constant nodes."""

    def __init__(self, graph: onnx.GraphProto, const: Callable[[str], np.ndarray | None] | None = None,
                 same: dict[str, str] | None = None):
        self.graph = graph
        self.same = same if same is not None else {}  # a tensor this module named -> one of its shape
        self._const = const
        self.outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.readers: dict[str, int] = {}
        self.inner: set[str] = set()  # tensors read inside a control-flow body
        for n in graph.node:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for x in n.input:
                if x:
                    self.readers[x] = self.readers.get(x, 0) + 1
            for x in subgraph_outer_refs(n):  # read inside a control-flow body: never private
                self.readers[x] = self.readers.get(x, 0) + 2
                self.inner.add(x)
        self.inits = {t.name: t for t in graph.initializer}

    def const(self, name: str) -> np.ndarray | None:
        if self._const is not None:
            v = self._const(name)
            if v is not None:
                return v
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            return constant_node_value(p)
        return None

    def dims(self, name: str) -> tuple[int, ...] | None:
        """A constant's shape, without converting an initializer (a conv's weights) to an array."""
        if name in self.inits:
            return tuple(self.inits[name].dims)
        v = self.const(name)
        return None if v is None else v.shape

    def private(self, name: str) -> bool:
        """Is ``name`` read by exactly one node and not a graph output?"""
        return self.readers.get(name, 0) == 1 and name not in self.outputs


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _split(node: onnx.NodeProto, g: _Graph) -> tuple[str, np.ndarray] | None:
    """``node`` as live + constant: (the live input, the constant added), or None."""
    if node.op_type not in ("Add", "Sub") or len(node.input) != 2:
        return None
    a, b = node.input
    ca, cb = g.const(a), g.const(b)
    if node.op_type == "Add":
        if ca is None and cb is not None:
            return a, cb
        if cb is None and ca is not None:
            return b, ca
        return None
    if ca is None and cb is not None:  # x - c
        return a, -cb
    return None


def _as_rank(c: np.ndarray, rank: int) -> np.ndarray | None:
    if c.ndim > rank:
        if any(d != 1 for d in c.shape[: c.ndim - rank]):
            return None
        return c.reshape(c.shape[c.ndim - rank:])
    return c.reshape((1,) * (rank - c.ndim) + c.shape)


def _only_on(c: np.ndarray, axes: set[int]) -> bool:
    return all(d == 1 for i, d in enumerate(c.shape) if i not in axes)


def _bias_edit(p: onnx.NodeProto, c: np.ndarray, g: _Graph, rank: int) -> tuple[int, np.ndarray] | None:
    """Where producer ``p`` could take the constant ``c`` (at its output's ``rank``) into a bias:
    (the bias input's slot, its new value), or None."""
    op = p.op_type
    if p.domain not in ("", "ai.onnx") or len([o for o in p.output if o]) != 1:
        return None
    if op in ("Conv", "ConvTranspose", "BatchNormalization"):
        if rank < 2 or not _only_on(c, {1}):
            return None
        slot = 2
        if op == "BatchNormalization":
            bias = g.const(p.input[2])
            if bias is None or bias.ndim != 1:
                return None
            channels = bias.shape[0]
        else:
            w = g.dims(p.input[1])
            if w is None:
                return None
            group = int(_attr(p, "group", 1))
            channels = w[0] if op == "Conv" else w[1] * group
            bias = g.const(p.input[2]) if len(p.input) > 2 and p.input[2] else np.zeros(channels, c.dtype)
            if bias is None:
                return None
        add = c.reshape(-1)
        if add.size not in (1, channels):
            return None
        return slot, (bias + add).astype(bias.dtype)
    if op == "LayerNormalization":
        axis = int(_attr(p, "axis", -1))
        axis = axis + rank if axis < 0 else axis
        scale = g.const(p.input[1])
        if scale is None or not 0 <= axis < rank or not _only_on(c, set(range(axis, rank))):
            return None
        bias = g.const(p.input[2]) if len(p.input) > 2 and p.input[2] else np.zeros(scale.shape, scale.dtype)
        if bias is None:
            return None
        tail = c.reshape(c.shape[axis:])
        try:
            new = bias + tail
        except ValueError:
            return None
        if new.shape != bias.shape and new.shape != scale.shape:
            return None
        return 2, new.astype(bias.dtype)
    if op == "Gemm":
        beta = float(_attr(p, "beta", 1.0))
        if rank != 2 or beta == 0.0 or c.shape[0] != 1:
            return None
        bias = g.const(p.input[2]) if len(p.input) > 2 and p.input[2] else None
        add = (c / beta).astype(c.dtype)
        new = add if bias is None else bias + add
        if new.ndim > 2:
            return None
        return 2, new.astype(c.dtype)
    return None


def _sink(name: str, c: np.ndarray, g: _Graph, rank: int, depth: int = 0) -> bool:
    """Could ``c``, added to tensor ``name``, be merged or absorbed further up?"""
    p = g.producer.get(name)
    if p is None or not g.private(name) or depth > 8:
        return False
    if _split(p, g) is not None:
        return True
    if _bias_edit(p, c, g, rank) is not None:
        return True
    if p.op_type == "Transpose":
        perm = _perm(p, rank)
        return perm is not None and _sink(p.input[0], c.transpose(np.argsort(perm)), g, rank, depth + 1)
    if _live_sum(p, g):
        return any(g.private(x) and _sink(x, c, g, rank, depth + 1) for x in p.input)
    return False


def _live_sum(p: onnx.NodeProto, g: _Graph) -> bool:
    """Is ``p`` an ``Add`` of two tensors, neither of them constant (a residual sum)?"""
    return (p.op_type == "Add" and p.domain in ("", "ai.onnx") and len(p.input) == 2
            and all(x and g.const(x) is None for x in p.input))


def _reader(g: _Graph, name: str) -> onnx.NodeProto | None:
    """The one node reading ``name`` (None unless exactly one does and it is no graph output)."""
    if not g.private(name):
        return None
    for n in g.graph.node:
        if name in n.input:
            return n
    return None


def _as_add(node: onnx.NodeProto, x: str, c: np.ndarray, output: str, replace_input: ReplaceInput) -> None:
    """Rewrite ``node`` in place as ``output = x + c``."""
    node.op_type = "Add"
    del node.attribute[:]
    del node.input[:]
    node.input.extend([x, ""])
    replace_input(node, 1, c)
    node.output[0] = output


def _put_input(node: onnx.NodeProto, slot: int, value: np.ndarray, replace_input: ReplaceInput,
               add_input: AddInput) -> None:
    """``value`` as ``node``'s input ``slot``: replacing what is there (or filling an empty slot),
    else appended after empty slots up to it."""
    if len(node.input) > slot:
        replace_input(node, slot, value)
        return
    while len(node.input) < slot:
        node.input.append("")
    add_input(node, value)


def _move_up(g: _Graph, i: int, j: int) -> None:
    """Move the node at index ``i`` to index ``j`` < ``i`` (it now computes an input of the node
    that was there). Indices, not node objects: the graph's list is edited."""
    if not j < i:
        raise ValueError("a node moves up only")
    nodes = g.graph.node
    moved = onnx.NodeProto()
    moved.CopyFrom(nodes[i])
    del nodes[i]
    nodes.insert(j, moved)


def _perm(node: onnx.NodeProto, rank: int) -> list[int] | None:
    perm = _attr(node, "perm", None)
    perm = list(range(rank))[::-1] if perm is None else [int(v) for v in perm]
    return perm if sorted(perm) == list(range(rank)) else None


def _index(g: _Graph, node: onnx.NodeProto) -> int:
    for i, n in enumerate(g.graph.node):
        if n is node:
            return i
    raise ValueError("node not in graph")


def _step(node: onnx.NodeProto, g: _Graph, rank: int, replace_input: ReplaceInput,
          add_input: AddInput) -> list[str] | None:
    """One edit of the constant ``Add``/``Sub`` ``node`` that moves its constant up: None when
    nothing could be done, else the tensors the constant ``Add`` nodes it merged, moved or left now
    write (empty when they are gone)."""
    split = _split(node, g)
    if split is None:
        return None
    live, c = split
    c = _as_rank(c, rank)
    if c is None:
        return None
    p = g.producer.get(live)
    if p is None or not g.private(live):
        return None
    out = node.output[0]
    inner = _split(p, g)
    if inner is not None:  # (x + c2) + c  ->  x + (c2 + c)
        x, c2 = inner
        c2 = _as_rank(c2, rank)
        if c2 is None:
            return None
        merged = (c2 + c).astype(c.dtype)
        p.op_type = "Add"
        del p.input[:]
        p.input.extend([x, ""])
        replace_input(p, 1, merged)
        p.output[0] = out
        del g.graph.node[_index(g, node)]
        return [out]
    edit = _bias_edit(p, c, g, rank)
    if edit is not None:  # conv(x) + c  ->  conv with its bias + c
        slot, value = edit
        _put_input(p, slot, value, replace_input, add_input)
        p.output[0] = out
        del g.graph.node[_index(g, node)]
        return []
    if p.op_type == "Transpose":  # transpose(x) + c  ->  transpose(x + c')
        perm = _perm(p, rank)
        if perm is None:
            return None
        back = c.transpose(np.argsort(perm))
        if not _sink(p.input[0], back, g, rank):
            return None
        mid = live  # the transpose's old output name now carries x + c'
        _as_add(node, p.input[0], back, mid, replace_input)
        p.input[0] = mid
        p.output[0] = out
        _move_up(g, _index(g, node), _index(g, p))
        return [mid]
    if _live_sum(p, g):  # (a + s) + c  ->  (a + c) + s, where a's producer can take c
        for k, x in enumerate(p.input):
            if g.private(x) and _sink(x, c, g, rank):
                _as_add(node, x, c, live, replace_input)  # the sum's old output name now carries a + c
                p.input[k] = live
                p.output[0] = out
                _move_up(g, _index(g, node), _index(g, p))
                return [live]
        return None
    if p.op_type == "Relu" and p.domain in ("", "ai.onnx"):
        return _relu_step(node, p, live, c, g, rank, replace_input)
    return None


def _relu_step(node: onnx.NodeProto, p: onnx.NodeProto, live: str, c: np.ndarray, g: _Graph, rank: int,
               replace_input: ReplaceInput) -> list[str] | None:
    """``relu(relu(y) + c)`` (a residual block with its ReLU after the sum, whose branch was
    removed) is ``relu(y + min(c, 0)) + max(c, 0)``: where ``c`` < 0, adding it to ``y`` first
    gives the same zeros and the same positives; where ``c`` >= 0 the outer ReLU changes nothing.
    The first constant goes on up (into a bias) and the second stays as an Add (which may then go on
    down, :func:`_forward`), or goes when ``c`` has no positive entry. Done only when the first can be
    absorbed further up (or is 0)."""
    out = node.output[0]
    r2 = _reader(g, out)
    if r2 is None or r2.op_type != "Relu" or r2.domain not in ("", "ai.onnx"):
        return None
    y = p.input[0]
    neg = np.minimum(c, 0).astype(c.dtype)
    pos = np.maximum(c, 0).astype(c.dtype)
    has_neg, has_pos = bool(np.any(neg)), bool(np.any(pos))
    if has_neg and not _sink(y, neg, g, rank):
        return None
    i_p, i_n, i_r = _index(g, p), _index(g, node), _index(g, r2)  # p < node < r2
    if has_pos:  # relu(relu(.)) is relu: the outer one becomes the + max(c, 0)
        _as_add(r2, out, pos, r2.output[0], replace_input)
        p.output[0] = out
    else:
        p.output[0] = r2.output[0]
    if has_neg:  # the inner ReLU's old output name now carries y + min(c, 0)
        _as_add(node, y, neg, live, replace_input)
        p.input[0] = live
    nodes = g.graph.node
    left = [r2.output[0]] if has_pos else []
    if not has_pos:
        del nodes[i_r]
    if not has_neg:
        del nodes[i_n]
        return left
    _move_up(g, i_n, i_p)
    return [live, *left]


def _vector(c: np.ndarray, n: int) -> np.ndarray | None:
    """A constant that varies along axis 1 only, as a length-``n`` vector (None if it is not one)."""
    if c.ndim < 2 or not _only_on(c, {1}) or c.shape[1] not in (1, n):
        return None
    return np.broadcast_to(c.reshape(-1).astype(np.float64), (n,))


def _fresh(g: _Graph, base: str) -> str:
    names = set(g.producer) | set(g.readers) | set(g.inits)
    k, name = 0, f"{base}_c"
    while name in names:
        k += 1
        name = f"{base}_c{k}"
    return name


def _add_after(g: _Graph, producer_out: str, c: np.ndarray, replace_input: ReplaceInput) -> str:
    """Make the node writing ``producer_out`` write a fresh tensor, and an ``Add`` of ``c`` to it
    write ``producer_out`` right after it; returns ``producer_out`` (the new Add's output). Finds
    the producer by name: node objects do not outlive an insertion into the graph's list."""
    nodes = g.graph.node
    i = next(k for k, n in enumerate(nodes) if producer_out in n.output)
    fresh = _fresh(g, producer_out)
    slot = list(nodes[i].output).index(producer_out)
    nodes[i].output[slot] = fresh
    add = onnx.NodeProto(op_type="Add", name=f"{nodes[i].name or producer_out}/folded_constant",
                         input=[fresh, ""], output=[producer_out])
    replace_input(add, 1, c)
    nodes.insert(i + 1, add)
    g.producer[fresh] = g.producer[producer_out] = add  # names only: keeps _fresh's view current
    g.same[fresh] = g.same.get(producer_out, producer_out)
    return producer_out


#: a reader's edit: rewires and edits it, and returns what must be inserted after (a callable
#: returning the tensors its new constant Add writes), or None
Edit = Callable[[], Callable[[], list[str]] | None]


class _Down(NamedTuple):
    """What a rule for a reader of ``z = x + c`` gets: the reader, the tensors, the constant (at
    ``rank``) and the graph's helpers."""

    r: onnx.NodeProto
    z: str
    x: str
    c: np.ndarray
    g: _Graph
    rank: int
    shape: Callable[[str], tuple | None]
    replace_input: ReplaceInput
    add_input: AddInput

    @property
    def slots(self) -> list[int]:
        return [k for k, name in enumerate(self.r.input) if name == self.z]

    def rewire(self) -> None:
        """The reader reads ``x`` instead of ``z``."""
        for k in self.slots:
            self.r.input[k] = self.x

    def set_bias(self, slot: int, bias: np.ndarray | None, delta: np.ndarray, dtype) -> None:
        """``bias + delta`` (or ``delta`` where there is no bias) into input ``slot``."""
        value = (bias + delta).astype(bias.dtype) if bias is not None else delta.astype(dtype)
        _put_input(self.r, slot, value, self.replace_input, self.add_input)


def _bias_of(d: _Down, slot: int) -> tuple[bool, np.ndarray | None]:
    """(whether the reader's bias input at ``slot`` is usable, its value or None when it has none)."""
    r = d.r
    if len(r.input) > slot and r.input[slot]:
        v = d.g.const(r.input[slot])
        return v is not None, v
    return True, None


def _down_conv(d: _Down) -> Edit | None:
    """A 1x1 unpadded conv (grouped too): bias + W @ c."""
    r, g = d.r, d.g
    if d.slots != [0] or not _foldable_conv(r, g):
        return None
    w = g.const(r.input[1])
    group = int(_attr(r, "group", 1))
    v = _vector(d.c, w.shape[1] * group)
    ok, bias = _bias_of(d, 2)
    if v is None or not ok:
        return None
    m = w.shape[0]
    per = w.reshape(m, w.shape[1], -1).sum(axis=2).astype(np.float64)  # a 1x1 kernel: its one tap
    delta = np.einsum("gmi,gi->gm", per.reshape(group, m // group, w.shape[1]),
                      v.reshape(group, w.shape[1])).reshape(m)

    def edit() -> None:
        d.rewire()
        d.set_bias(2, bias, delta, w.dtype)
    return edit


def _down_bn(d: _Down) -> Edit | None:
    """BatchNormalization (inference): mean - c."""
    r = d.r
    if d.slots != [0] or len(r.input) != 5 or _attr(r, "training_mode", 0):
        return None
    mean = d.g.const(r.input[3])
    v = _vector(d.c, mean.shape[0]) if mean is not None and mean.ndim == 1 else None
    if v is None:
        return None

    def edit() -> None:
        d.rewire()
        d.replace_input(r, 3, (mean - v).astype(mean.dtype))
    return edit


def _down_add(d: _Down) -> Edit | None:
    """``(x + c) + c2`` -> ``x + (c + c2)``; ``(x + c) + s`` -> ``x + (s + c)`` where the producer
    of the residual branch ``s`` takes ``c``."""
    r, g = d.r, d.g
    if len(d.slots) != 1 or len(r.input) != 2:
        return None
    k = 1 - d.slots[0]
    other = r.input[k]
    c2 = g.const(other)
    if c2 is not None:
        merged = _as_rank(np.asarray(c2), d.rank)
        if merged is None:
            return None

        def merge():
            d.rewire()
            d.replace_input(r, k, (d.c + merged).astype(d.c.dtype))
            out = r.output[0]
            return lambda: [out]
        return merge
    if d.shape(other) != d.shape(d.z) or not g.private(other) or not _sink(other, d.c, g, d.rank):
        return None

    def branch():
        d.rewire()
        return lambda: [_add_after(g, other, d.c, d.replace_input)]
    return branch


def _down_pool(d: _Down) -> Edit | None:
    """GlobalAveragePool: the mean over positions of x + c is mean(x) + c."""
    if d.slots != [0] or not _only_on(d.c, {0, 1}):
        return None

    def edit():
        d.rewire()
        out = d.r.output[0]
        return lambda: [_add_after(d.g, out, d.c, d.replace_input)]
    return edit


def _down_flatten(d: _Down) -> Edit | None:
    """Flatten (N, C, 1, ..) -> (N, C): the constant flattens with it."""
    dims = d.shape(d.z)
    if (d.slots != [0] or int(_attr(d.r, "axis", 1)) != 1 or dims is None or len(dims) < 2
            or any(v != 1 for v in dims[2:]) or d.c.shape[0] != 1):
        return None
    flat = d.c.reshape(1, -1)

    def edit():
        d.rewire()
        out = d.r.output[0]
        return lambda: [_add_after(d.g, out, flat, d.replace_input)]
    return edit


def _down_gemm(d: _Down) -> Edit | None:
    """Gemm: C + alpha / beta * c @ B."""
    r, c = d.r, d.c
    if d.slots != [0] or d.rank != 2 or _attr(r, "transA", 0):
        return None
    b = d.g.const(r.input[1])
    alpha, beta = float(_attr(r, "alpha", 1.0)), float(_attr(r, "beta", 1.0))
    if b is None or b.ndim != 2 or beta == 0.0 or c.shape[0] != 1:
        return None
    bmat = (b.T if _attr(r, "transB", 0) else b).astype(np.float64)
    ok, bias = _bias_of(d, 2)
    if c.shape[1] not in (1, bmat.shape[0]) or not ok or (bias is not None and bias.ndim > 2):
        return None
    delta = alpha * (np.broadcast_to(c.astype(np.float64), (1, bmat.shape[0])) @ bmat) / beta
    delta = delta.reshape(-1) if bias is None or bias.ndim <= 1 else delta

    def edit() -> None:
        d.rewire()
        d.set_bias(2, bias, delta, b.dtype)
    return edit


#: Per op type, the rule that lets a reader of ``z = x + c`` read ``x`` and make up for ``c``.
DOWN_RULES: dict[str, Callable[[_Down], Edit | None]] = {
    "Conv": _down_conv, "BatchNormalization": _down_bn, "Add": _down_add,
    "GlobalAveragePool": _down_pool, "Flatten": _down_flatten, "Gemm": _down_gemm,
}


def _reader_edit(r: onnx.NodeProto, z: str, x: str, c: np.ndarray, g: _Graph, rank: int,
                 shape: Callable[[str], tuple | None], replace_input: ReplaceInput,
                 add_input: AddInput) -> Edit | None:
    """How reader ``r`` of ``z = x + c`` can read ``x`` instead and make up for ``c`` exactly (an
    :data:`Edit`, by its op's rule in :data:`DOWN_RULES`), or None if it cannot."""
    rule = DOWN_RULES.get(r.op_type) if r.domain in ("", "ai.onnx") else None
    return rule(_Down(r, z, x, c, g, rank, shape, replace_input, add_input)) if rule is not None else None


def _foldable_conv(node: onnx.NodeProto, g: _Graph) -> bool:
    """A conv that maps an input constant over positions to an output constant over positions: a
    1x1 (every kernel dim 1) with no padding and constant weights."""
    if len(node.input) < 2:
        return False
    dims = g.dims(node.input[1])
    pads = _attr(node, "pads", None) or []
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return (dims is not None and len(dims) >= 3 and all(k == 1 for k in dims[2:]) and not any(pads)
            and auto in ("NOTSET", "VALID"))


def _safe(shape: Callable[[str], tuple | None]) -> Callable[[str], tuple | None]:
    """``shape`` that answers None for a tensor it does not know (one this module named)."""
    def get(name: str) -> tuple | None:
        try:
            dims = shape(name)
        except (KeyError, TypeError, ValueError):
            return None
        return None if dims is None else tuple(dims)
    return get


def _forward(node: onnx.NodeProto, g: _Graph, rank: int, shape: Callable[[str], tuple | None],
             replace_input: ReplaceInput, add_input: AddInput) -> list[str] | None:
    """``z = x + c`` whose constant cannot go up goes down: every reader of ``z`` reads ``x`` and
    makes up for ``c`` exactly (a 1x1 unpadded conv or a Gemm in its bias, a BatchNormalization in
    its mean, a residual sum in the other branch's bias, a constant Add by merging, a global
    average pool or a flatten to 2-D by carrying it past). All readers or none: returns the tensors
    the constant ``Add`` nodes it created write, or None."""
    split = _split(node, g)
    if split is None:
        return None
    x, c = split
    c = _as_rank(c, rank)
    z = node.output[0]
    if c is None or z in g.outputs or shape(x) is None or shape(x) != shape(z):
        return None
    readers = [n for n in g.graph.node if z in n.input]
    if not readers or z in g.inner:
        return None  # none, or one inside a control-flow body (it cannot be rewired here)
    edits = []
    for r in readers:
        e = _reader_edit(r, z, x, c, g, rank, shape, replace_input, add_input)
        if e is None:
            return None
        edits.append(e)
    after = [e() for e in edits]  # every reader edited before any node is inserted
    del g.graph.node[next(k for k, n in enumerate(g.graph.node) if z in n.output)]
    out: list[str] = []
    for insert in after:
        if insert is not None:
            out.extend(insert())
    return out


def absorb_constant_adds(graph: onnx.GraphProto, outputs: list[str], shape: Callable[[str], tuple | None],
                         replace_input: ReplaceInput, add_input: AddInput,
                         const: Callable[[str], np.ndarray | None] | None = None) -> int:
    """Merge and absorb the constant ``Add``/``Sub`` nodes writing ``outputs`` (the nodes a removal
    rewrote) in place; returns how many nodes left the graph. ``shape`` gives the tensors' shapes
    (their rank; going down, also whether ``x + c`` keeps ``x``'s shape and a flatten's trailing
    dims), None for one it does not know; ``const``: constants the graph does not hold itself (see
    :func:`absorbed`)."""
    before = len(graph.node)
    pending = list(outputs)
    same: dict[str, str] = {}
    known = _safe(shape)
    shape = lambda name: known(same.get(name, name))  # noqa: E731
    for _ in range(8 * len(pending) + 16):  # every edit removes a node or moves a constant past one
        g = _Graph(graph, const, same)
        changed = False
        for name in list(pending):
            node = g.producer.get(name)
            if node is None:
                pending.remove(name)
                continue
            dims = shape(name)
            if dims is None:
                pending.remove(name)
                continue
            now = _step(node, g, len(dims), replace_input, add_input)
            if now is None:
                now = _forward(node, g, len(dims), shape, replace_input, add_input)
            if now is not None:
                changed = True
                k = pending.index(name)
                pending[k:k + 1] = now
                break
            pending.remove(name)  # nothing to do now; an edit elsewhere cannot change that
        if not changed:
            break
    return before - len(graph.node)


def absorbed(nodes: list[tuple[int, onnx.NodeProto]], outputs: list[str], substituted: dict[tuple[int, int], np.ndarray],
             const: Callable[[str], np.ndarray | None], shape: Callable[[str], tuple | None]
             ) -> tuple[set[int], int, list[str], int]:
    """What :func:`absorb_constant_adds` would do to ``nodes`` ((index, node) of a graph after a
    removal, before any constant moved), simulated on copies: ``substituted`` maps (node index,
    input slot) to the constant a removal put there; ``const`` gives the graph's own constants.
    Returns the indices of the nodes it takes out, the constant elements the graph then holds
    beyond its own (the constants left, less the graph's own biases they replaced), the tensors
    the constant ``Add`` nodes still left write (kernels of their own, bench/layers.py), and how
    many of those it made (a constant carried past a pool: the node it replaced is among the
    taken). Used to
    predict what a removal takes out, adds and leaves (surgery/drop.py, removal_effect)."""
    g = onnx.GraphProto()
    overlay: dict[str, np.ndarray] = {}
    met = []
    for i, node in nodes:
        c = g.node.add()
        c.CopyFrom(node)
        c.name = f"__node{i}"
        for (j, k), value in substituted.items():
            if j == i:
                c.input[k] = f"__const{len(overlay)}"
                overlay[c.input[k]] = value
                met.append(c.output[0])
    for o in outputs:
        g.output.add().name = o

    def replace_input(node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
        node.input[k] = f"__const{len(overlay)}"
        overlay[node.input[k]] = np.asarray(value)

    def add_input(node: onnx.NodeProto, value: np.ndarray) -> None:
        node.input.append("")
        replace_input(node, len(node.input) - 1, value)

    def lookup(name: str) -> np.ndarray | None:
        return overlay[name] if name in overlay else const(name)

    def read(graph: onnx.GraphProto) -> set[str]:
        return {x for n in graph.node for x in n.input if x}

    before = read(g) - overlay.keys()
    absorb_constant_adds(g, met, shape, replace_input, add_input, lookup)
    after = read(g)
    left = {n.name for n in g.node}
    added = sum(int(overlay[x].size) for x in after if x in overlay)
    for x in before - after:  # the graph's own constants replaced (a bias absorbed into)
        v = const(x)
        added -= int(v.size) if v is not None else 0
    view, original = _Graph(g, lookup), dict(nodes)

    def source(name: str) -> int | None:  # "__node12": the graph's node 12; "__node12/folded_constant": made here
        tail = name[len("__node"):] if name.startswith("__node") else ""
        return int(tail) if tail.isdigit() else None

    def was_constant_add(name: str) -> bool:  # a bias Add of the graph's own: a kernel before too
        n = original.get(source(name))
        return n is not None and n.op_type in ("Add", "Sub") and any(x and const(x) is not None for x in n.input)

    adds = [n.output[0] for n in g.node if n.op_type in ("Add", "Sub") and any(x in overlay for x in n.input)
            and _split(n, view) is not None and not was_constant_add(n.name)]
    made = sum(1 for n in g.node if source(n.name) is None)
    return {i for i, _ in nodes if f"__node{i}" not in left}, added, adds, made
