"""Random CNN graphs through ``api.prune``, each cut checked by a masked original built here.

The engine proves every pruning against its own masked original (compressor/verify/oracle.py),
built from its own analysis: a wrong rule there can make the proof agree with a wrong surgery.
This fuzzer generates graphs whose channel flow it knows by construction (every tensor carries,
per channel position, the set of producer channels that reach it: a residual sum unites them, a
concatenation lays them side by side, a flatten repeats them), so it can build the masked
original from nothing but the report's plan: the removed producer channels are zeroed, by a `Mul`
with a 0/1 mask, in front of every node that mixes the channels it reads (Conv, ConvTranspose,
Gemm and MatMul inputs, reductions, Softmax, LRN, ECA's 1-D conv, GroupNorm of several groups in
either form), and a LayerNorm over the channels (one node or written out) and a GroupNorm with one
group (either form) are computed over the kept channels only, as the engine documents it (README,
``--freeze-norms``): the same nodes run on the kept channels gathered, their output scattered
back. The pruned model must then compute what that model computes, on random inputs, and at
batches 2 and 3 where the batch is dynamic.

    python tools/fuzz_graphs.py --seeds 0:200 --jobs 2 --json out/fuzz.json --save-failures out/fuzz
    python tools/fuzz_graphs.py --seed 17 --verbose          # rerun one seed, with the traceback

Outcomes: ``ok`` (pruned, and the independent check agrees), ``refused`` (a UsageError/ModelError:
a clean refusal), ``proof_failed`` (the engine's own proof failed: it wrote nothing; may be a
bug: the seed is pruned again unverified and checked here, and the error says what that found),
``crash`` (any other exception) and ``mismatch`` (the engine passed the model, the check
here did not). Exit 1 when any seed crashed or mismatched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.core.graphs import G  # noqa: E402

OPSETS = (13, 17, 18, 21)
#: Relative error allowed between the pruned model and the masked original built here: float32
#: computes the same sums in another order, float16 (compared in float32) rounds each layer.
TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
#: Batches a dynamic-batch model is run at beside the first: a shape written in at batch 1 fails there.
EXTRA_BATCHES = (2, 3)
FAILURES = ("crash", "mismatch")
OUTCOMES = ("ok", "refused", "proof_failed", *FAILURES)
WIDTHS = (4, 6, 8, 12, 16)
#: Reductions over the channels the engine prunes through (docs/coverage.md, "Known limits").
REDUCTIONS = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2",
              "ReduceLogSum"]


# ---------------------------------------------------------------------------------------------
# graphs whose channel flow is known


@dataclass(frozen=True)
class Tracked:
    """A tensor of the graph being built. ``prov[i]`` is the set of producer channels, as
    (constant, axis, index), that position ``i`` of ``axis`` carries; ``axis`` None: no channels
    of a producer (a model input, a one-channel map), nothing to mask."""

    name: str
    shape: tuple
    axis: int | None = None
    prov: tuple = ()

    @property
    def channels(self) -> int:
        return self.shape[1]


@dataclass(frozen=True)
class Consumer:
    """Input ``slot`` of ``node`` mixes the channels of ``axis``: the masked original zeroes the
    removed ones there."""

    node: str
    slot: int
    axis: int
    rank: int
    prov: tuple


@dataclass(frozen=True)
class NormRegion:
    """A LayerNorm over the last axis (one node or written out in elementary ops), or a GroupNorm
    with one group over axis 1 (the op, or the exporters' Reshape -> InstanceNormalization ->
    Reshape): the engine prunes it with its statistics over the kept channels (README,
    ``--freeze-norms``), so the masked original computes it over them too: ``entry`` gathered
    along ``axis``, the per-channel ``consts`` sliced, ``output`` scattered back to full width.
    ``channel_shape``: a literal [0, C, H, W] target in the region, written again with the kept
    count (a ``Shape`` of the entry follows the gathered entry by itself)."""

    entry: str
    nodes: tuple
    consts: tuple
    output: str
    prov: tuple
    axis: int = -1
    channel_shape: str | None = None


@dataclass
class Case:
    """One generated graph and what the check needs to know about it."""

    seed: int
    model: onnx.ModelProto
    consumers: list[Consumer]
    norms: list[NormRegion]
    opset: int
    dtype: str
    dynamic: bool
    blocks: list[str]
    input_shape: tuple

    @property
    def ops(self) -> list[str]:
        return sorted({n.op_type for n in self.model.graph.node})


def _merge(a: Tracked, b: Tracked, name: str, shape: tuple) -> Tracked:
    """An element-wise binary op: positions of the same index carry both sides' channels; a side
    broadcast along the channel axis (a one-channel gate) adds none."""
    broadcast = lambda t, other: t.axis is None or len(t.prov) == 1 < len(other.prov)  # noqa: E731
    if broadcast(a, b) or broadcast(b, a):
        t = a if broadcast(b, a) else b
        return Tracked(name, shape, t.axis, t.prov)
    assert a.axis == b.axis and len(a.prov) == len(b.prov), f"{a.name} and {b.name} do not line up"
    return Tracked(name, shape, a.axis, tuple(x | y for x, y in zip(a.prov, b.prov)))


class Builder:
    """Nodes through ``G`` (tests/core/graphs.py), with the provenance of every tensor tracked and
    every channel-mixing input recorded. Weights are scaled by their fan-in so that float16 does
    not overflow in a deep chain."""

    def __init__(self, rng: np.random.Generator, opset: int, dynamic: bool):
        self.g = G(opset=opset)
        self.rng = rng
        self.opset = opset
        self.batch = "N" if dynamic else 1
        self.consumers: list[Consumer] = []
        self.norms: list[NormRegion] = []

    # primitives -------------------------------------------------------------------------------
    def weight(self, *shape, fan_in: int, base: str = "w") -> str:
        a = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return self.g.const(a.astype(np.float32), base)

    def vector(self, n: int, positive: bool = False, base: str = "b") -> str:
        a = self.rng.standard_normal(n) * 0.5
        return self.g.const((np.abs(a) + 0.5 if positive else a).astype(np.float32), base)

    def constant(self, a: np.ndarray) -> Tracked:
        """A float constant operand (a per-channel scale, a bias): it carries no producer channels."""
        return Tracked(self.g.const(np.asarray(a, np.float32), "c"), a.shape)

    def ints(self, values) -> str:
        return self.g.const(np.asarray(values, dtype=np.int64), "s")

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        out = self.g.op(op_type, inputs, n_out=n_out, **attrs)
        return out, self.g.nodes[-1].name

    def consume(self, node: str, slot: int, t: Tracked) -> None:
        if t.axis is not None:
            self.consumers.append(Consumer(node, slot, t.axis, len(t.shape), t.prov))

    def unary(self, op_type: str, t: Tracked, **attrs) -> Tracked:
        out, _ = self.op(op_type, [t.name], **attrs)
        return Tracked(out, t.shape, t.axis, t.prov)

    def input(self, c: int, hw: int) -> Tracked:
        shape = (self.batch, c, hw, hw)
        return Tracked(self.g.input("x", list(shape)), shape)

    # layers -----------------------------------------------------------------------------------
    def conv(self, h: Tracked, cout: int, k: int = 3, stride: int = 1, group: int = 1, bias: bool = True) -> Tracked:
        """A conv produces new channels; a depthwise one (group = cin) carries its input's too,
        as it mixes no channels (not a consumer)."""
        n, cin, hh, ww = h.shape
        w = self.weight(cout, cin // group, k, k, fan_in=cin // group * k * k)
        ins = [h.name, w] + ([self.vector(cout)] if bias else [])
        out, node = self.op("Conv", ins, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2, group=group)
        size = lambda d: (d + 2 * (k // 2) - k) // stride + 1  # noqa: E731
        depthwise = group == cin > 1
        if not depthwise:
            self.consume(node, 0, h)
        carried = (lambda j: h.prov[j // (cout // cin)]) if depthwise else (lambda j: frozenset())
        prov = tuple(frozenset({(w, 0, j)}) | carried(j) for j in range(cout))
        return Tracked(out, (n, cout, size(hh), size(ww)), 1, prov)

    def bn(self, h: Tracked) -> Tracked:
        c = h.channels
        out, _ = self.op("BatchNormalization", [h.name, self.vector(c, True), self.vector(c), self.vector(c),
                                                self.vector(c, True)])
        return Tracked(out, h.shape, h.axis, h.prov)

    def cbr(self, h: Tracked, cout: int, k: int = 3, stride: int = 1, group: int = 1) -> Tracked:
        return self.unary("Relu", self.bn(self.conv(h, cout, k, stride, group, bias=False)))

    def binary(self, op_type: str, a: Tracked, b: Tracked) -> Tracked:
        out, _ = self.op(op_type, [a.name, b.name])
        rank = max(len(a.shape), len(b.shape))
        pad = lambda t: (1,) * (rank - len(t.shape)) + tuple(t.shape)  # noqa: E731 - numpy's broadcast
        shape = tuple(x if x != 1 else y for x, y in zip(pad(a), pad(b)))
        return _merge(a, b, out, shape)

    def concat(self, parts: list[Tracked]) -> Tracked:
        """Channels side by side; an untracked part (a reduction's map) carries no sources."""
        out, _ = self.op("Concat", [p.name for p in parts], axis=1)
        prov = tuple(x for p in parts for x in (p.prov if p.axis is not None else [frozenset()] * p.channels))
        tracked = any(p.axis is not None for p in parts)
        return Tracked(out, (parts[0].shape[0], len(prov), *parts[0].shape[2:]), 1 if tracked else None,
                       prov if tracked else ())

    def split(self, h: Tracked, sizes: list[int]) -> list[Tracked]:
        outs, _ = self.op("Split", [h.name, self.ints(sizes)], n_out=len(sizes), axis=1)
        outs = [outs] if len(sizes) == 1 else outs
        starts = np.cumsum([0, *sizes])
        return [Tracked(o, (h.shape[0], s, *h.shape[2:]), 1, h.prov[a:a + s])
                for o, s, a in zip(outs, sizes, starts)]

    def gap(self, h: Tracked) -> Tracked:
        out, _ = self.op("GlobalAveragePool", [h.name])
        return Tracked(out, (*h.shape[:2], 1, 1), h.axis, h.prov)

    def reduce(self, op_type: str, h: Tracked) -> Tracked:
        """A reduction over the channels (keepdims): a consumer; its one channel carries none."""
        if self.opset >= 18 or op_type == "ReduceSum":
            out, node = self.op(op_type, [h.name, self.ints([1])], keepdims=1)
        else:
            out, node = self.op(op_type, [h.name], axes=[1], keepdims=1)
        self.consume(node, 0, h)
        return Tracked(out, (h.shape[0], 1, *h.shape[2:]))

    def mixing(self, op_type: str, h: Tracked, inputs=(), **attrs) -> Tracked:
        """An op that mixes the channels position by position and keeps them (Softmax, LRN,
        GroupNorm): a consumer whose output positions carry the input's."""
        out, node = self.op(op_type, [h.name, *inputs], **attrs)
        self.consume(node, 0, h)
        return Tracked(out, h.shape, h.axis, h.prov)

    def layernorm(self, t: Tracked, decomposed: bool) -> Tracked:
        """A LayerNorm over the last axis: LayerNormalization, or as torch writes it at opset <= 16
        (ReduceMean, Sub, Pow or Mul, ReduceMean, Add eps, Sqrt, Div or Mul by Reciprocal, then the
        affine Mul and Add)."""
        c, first = t.shape[-1], len(self.g.nodes)
        scale, bias = self.vector(c, True), self.vector(c)
        if not decomposed:
            out, _ = self.op("LayerNormalization", [t.name, scale, bias], axis=-1, epsilon=1e-5)
        else:
            mean = self._mean_last
            d, _ = self.op("Sub", [t.name, mean(t.name)])
            sq, _ = self.op("Pow", [d, self.g.const(np.float32(2.0), "p")]) if self.rng.random() < 0.5 \
                else self.op("Mul", [d, d])
            std, _ = self.op("Sqrt", [self.op("Add", [mean(sq), self.g.const(np.float32(1e-5), "eps")])[0]])
            y, _ = self.op("Div", [d, std]) if self.rng.random() < 0.5 \
                else self.op("Mul", [d, self.op("Reciprocal", [std])[0]])
            out, _ = self.op("Add", [self.op("Mul", [y, scale])[0], bias])
        if t.axis is not None:
            self.norms.append(NormRegion(t.name, tuple(n.name for n in self.g.nodes[first:]), (scale, bias), out,
                                         t.prov))
        return Tracked(out, t.shape, t.axis, t.prov)

    def _mean_last(self, x: str) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints([-1])], keepdims=1)[0]
        return self.op("ReduceMean", [x], axes=[-1], keepdims=1)[0]

    def transpose(self, h: Tracked, perm: list[int]) -> Tracked:
        out, _ = self.op("Transpose", [h.name], perm=perm)
        return Tracked(out, tuple(h.shape[p] for p in perm), None if h.axis is None else perm.index(h.axis), h.prov)

    def reshape(self, h: Tracked, spec: list[int], shape: tuple, axis: int) -> Tracked:
        """A reshape that moves the channel axis whole to ``axis`` (the caller says where)."""
        out, _ = self.op("Reshape", [h.name, self.ints(spec)])
        return Tracked(out, shape, axis, h.prov)

    def matmul(self, h: Tracked, cout: int) -> Tracked:
        """A channels-last linear layer (MatMul + bias): consumes the last axis, produces on it."""
        cin = h.shape[-1]
        w = self.weight(cin, cout, fan_in=cin)
        out, node = self.op("MatMul", [h.name, w])
        self.consume(node, 0, h)
        out, _ = self.op("Add", [out, self.vector(cout)])
        return Tracked(out, (*h.shape[:-1], cout), len(h.shape) - 1,
                       tuple(frozenset({(w, 1, j)}) for j in range(cout)))

    def flatten(self, h: Tracked) -> Tracked:
        """[N, C, H, W] -> [N, C*H*W]: each channel's provenance repeated over its H*W positions."""
        out, _ = self.op("Flatten", [h.name], axis=1)
        hw = int(np.prod(h.shape[2:]))
        return Tracked(out, (h.shape[0], h.channels * hw), 1, tuple(p for p in h.prov for _ in range(hw)))

    def linear(self, h: Tracked, n: int) -> Tracked:
        """Gemm (weight transposed or not) or MatMul + Add over [N, F]: consumes axis 1, and its
        n outputs are channels of its weight (axis 0 when transposed)."""
        cin, kind = h.shape[1], int(self.rng.integers(3))
        w = self.weight(*((n, cin) if kind == 1 else (cin, n)), fan_in=cin)
        if kind == 2:
            out, node = self.op("MatMul", [h.name, w])
            out = self.op("Add", [out, self.vector(n)])[0]
        else:
            out, node = self.op("Gemm", [h.name, w, self.vector(n)], transB=kind)
        self.consume(node, 0, h)
        return Tracked(out, (h.shape[0], n), 1, tuple(frozenset({(w, 0 if kind == 1 else 1, j)}) for j in range(n)))

    def finish(self, outputs: list[Tracked]) -> onnx.ModelProto:
        """The model, checked (shape inference included); its outputs are float32 until to_half."""
        g = helper.make_graph(self.g.nodes, "fuzz", self.g.inputs,
                              [helper.make_tensor_value_info(y.name, TensorProto.FLOAT, list(y.shape)) for y in outputs],
                              self.g.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 10
        onnx.checker.check_model(m, full_check=True)
        return m


# ---------------------------------------------------------------------------------------------
# blocks: each takes the builder, its generator and the current tensor, returns the next one


def _width(rng) -> int:
    return int(rng.choice(WIDTHS))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def block_cbr(b: Builder, rng, h: Tracked) -> Tracked:
    stride = 2 if h.shape[2] >= 8 and rng.random() < 0.3 else 1
    return b.cbr(h, _width(rng), k=int(rng.choice([1, 3])), stride=stride)


def block_res(b: Builder, rng, h: Tracked) -> Tracked:
    """A ResNet basic block: both convs' output channels and the trunk's are summed (or subtracted,
    multiplied, maxed: any element-wise binary op couples them)."""
    branch = b.bn(b.conv(b.cbr(h, _width(rng)), h.channels, bias=False))
    out = b.binary(str(rng.choice(["Add", "Add", "Sub", "Mul", "Max"])), h, branch)
    return b.unary("Relu", out) if rng.random() < 0.7 else out


def block_concat(b: Builder, rng, h: Tracked) -> Tracked:
    parts = [b.cbr(h, _width(rng)), b.cbr(h, _width(rng), k=1)]
    if rng.random() < 0.5:
        parts.append(h)  # DenseNet: the input itself is a part
    rng.shuffle(parts)
    return b.concat(parts)


def block_dw(b: Builder, rng, h: Tracked) -> Tracked:
    mult = 2 if rng.random() < 0.25 else 1
    y = b.unary("Relu", b.bn(b.conv(h, h.channels * mult, group=h.channels, bias=False)))
    return b.cbr(y, _width(rng), k=1)  # MobileNet's pointwise conv after it


def block_grouped(b: Builder, rng, h: Tracked) -> Tracked:
    groups = [d for d in _divisors(h.channels) if 1 < d < h.channels] or [1]
    group = int(rng.choice(groups))
    return b.cbr(h, group * int(rng.integers(1, 5)), group=group)


def block_se(b: Builder, rng, h: Tracked) -> Tracked:
    s = b.unary("Relu", b.conv(b.gap(h), int(rng.integers(2, 6)), k=1))
    s = b.unary(str(rng.choice(["Sigmoid", "HardSigmoid"])), b.conv(s, h.channels, k=1))
    return b.binary("Mul", h, s)


def block_se_linear(b: Builder, rng, h: Tracked) -> Tracked:
    """SE written with linear layers: GAP, Flatten, Gemm/MatMul, ReLU, Gemm/MatMul, sigmoid,
    Reshape to [N, C, 1, 1], times the input."""
    c = h.channels
    s = b.unary("Relu", b.linear(b.flatten(b.gap(h)), int(rng.integers(2, 6))))
    s = b.unary("Sigmoid", b.linear(s, c))
    return b.binary("Mul", h, b.reshape(s, [-1 if rng.random() < 0.5 else 0, c, 1, 1], (h.shape[0], c, 1, 1), 1))


def block_shuffle(b: Builder, rng, h: Tracked) -> Tracked:
    """ShuffleNet's channel shuffle: Reshape [N, g, C/g, H, W], Transpose, Reshape [N, C, H, W];
    output channel j*g + i is input channel i*(C/g) + j."""
    n, c, hh, ww = h.shape
    groups = [d for d in _divisors(c) if 1 < d < c]
    if not groups:
        return h
    g = int(rng.choice(groups))
    r, _ = b.op("Reshape", [h.name, b.ints([0, g, c // g, hh, ww])])
    t, _ = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    out, _ = b.op("Reshape", [t, b.ints([0, c, hh, ww] if rng.random() < 0.5 else [0, -1, hh, ww])])
    return Tracked(out, h.shape, 1, tuple(h.prov[i * (c // g) + j] for j in range(c // g) for i in range(g)))


def block_depth(b: Builder, rng, h: Tracked) -> Tracked:
    """SpaceToDepth(2) (output channel k*C + c is input channel c), a conv to 4*w channels, and
    DepthToSpace(2) back: its output channel c' interleaves four input channels (DCR: k*w + c',
    CRD: c'*4 + k), which must go or stay together."""
    n, c, hh, ww = h.shape
    if hh % 2:
        return h
    out, _ = b.op("SpaceToDepth", [h.name], blocksize=2)
    t = Tracked(out, (n, 4 * c, hh // 2, ww // 2), 1, tuple(h.prov[k % c] for k in range(4 * c)))
    w = _width(rng)
    y = b.cbr(t, 4 * w, k=1)
    mode = str(rng.choice(["DCR", "CRD"]))
    out, _ = b.op("DepthToSpace", [y.name], blocksize=2, mode=mode)
    members = (lambda j: [k * w + j for k in range(4)]) if mode == "DCR" else (lambda j: [j * 4 + k for k in range(4)])
    return Tracked(out, (n, w, hh, ww), 1, tuple(frozenset().union(*(y.prov[m] for m in members(j))) for j in range(w)))


def block_reduce(b: Builder, rng, h: Tracked) -> Tracked:
    """CBAM's spatial gate: channel mean and/or max (or another reduction the engine computes on
    the kept channels), a conv over them, a sigmoid, times the input."""
    kinds = ["ReduceMean", "ReduceMax"] if rng.random() < 0.6 else REDUCTIONS
    ops = [str(o) for o in rng.permutation(kinds)[:int(rng.integers(1, 3))]]
    positive = b.unary("Sigmoid", h)  # a log-sum needs a positive sum
    maps = [b.reduce(o, positive if o == "ReduceLogSum" else h) for o in ops]
    m = maps[0] if len(maps) == 1 else b.concat(maps)
    gate = b.unary("Sigmoid", b.conv(m, 1, k=3))
    return b.binary("Mul", h, gate)


def block_softmax(b: Builder, rng, h: Tracked) -> Tracked:
    return b.mixing(str(rng.choice(["Softmax", "Softmax", "LogSoftmax", "Hardmax"])), h, axis=1)


def block_lrn(b: Builder, rng, h: Tracked) -> Tracked:
    return b.mixing("LRN", h, size=int(rng.choice([3, 5])), alpha=1e-2, beta=0.75, bias=1.0)


def block_eca(b: Builder, rng, h: Tracked) -> Tracked:
    """ECA: GAP -> [N, 1, C] -> Conv1d along the channels -> sigmoid -> [N, C, 1, 1] -> times the
    input. The 1-D conv mixes neighbouring channels: a consumer on axis 2."""
    c, k = h.channels, int(rng.choice([3, 5]))
    literal = rng.random() < 0.5  # a literal C the surgery must rewrite, or -1
    p = b.gap(h)
    r = b.reshape(p, [0, 1, c if literal else -1], (h.shape[0], 1, c), 2)
    out, node = b.op("Conv", [r.name, b.weight(1, 1, k, fan_in=k)], kernel_shape=[k], pads=[k // 2] * 2)
    b.consume(node, 0, r)
    gate = b.unary("Sigmoid", Tracked(out, r.shape, 2, r.prov))
    gate = b.reshape(gate, [0, c if literal else -1, 1, 1], (h.shape[0], c, 1, 1), 1)
    return b.binary("Mul", h, gate)


def block_gn(b: Builder, rng, h: Tracked) -> Tracked:
    """GroupNormalization-21 (scale and bias per channel), one group or several. Several: a
    consumer (the engine removes whole groups); one: statistics over the kept channels."""
    c = h.channels
    groups = 1 if rng.random() < 0.4 else int(rng.choice(_divisors(c)))
    if groups > 1:
        y = b.mixing("GroupNormalization", h, [b.vector(c, True), b.vector(c)], num_groups=groups, epsilon=1e-5)
        return b.unary("Relu", y)
    scale, bias = b.vector(c, True), b.vector(c)
    out, node = b.op("GroupNormalization", [h.name, scale, bias], num_groups=1, epsilon=1e-5)
    if h.axis is not None:
        b.norms.append(NormRegion(h.name, (node,), (scale, bias), out, h.prov, axis=1))
    return b.unary("Relu", Tracked(out, h.shape, h.axis, h.prov))


def block_ln(b: Builder, rng, h: Tracked) -> Tracked:
    """torchvision's LayerNorm2d: a LayerNorm over the channels between transposes; sometimes a
    ConvNeXt block (depthwise conv, LayerNorm, channels-last MLP, residual)."""
    c = h.channels
    y = b.conv(h, c, k=3, group=c) if rng.random() < 0.5 else h
    t = b.transpose(y, [0, 2, 3, 1])
    t = b.layernorm(t, decomposed=b.opset < 17 or rng.random() < 0.3)
    if rng.random() < 0.5:
        t = b.matmul(b.unary("Relu", b.matmul(t, _width(rng))), c)
        return b.binary("Add", h, b.transpose(t, [0, 3, 1, 2]))
    return b.transpose(t, [0, 3, 1, 2])


def block_mlp(b: Builder, rng, h: Tracked) -> Tracked:
    t = b.transpose(h, [0, 2, 3, 1])
    t = b.matmul(b.unary("Relu", b.matmul(t, _width(rng))), h.channels)
    return b.binary("Add", h, b.transpose(t, [0, 3, 1, 2]))


def block_reshape(b: Builder, rng, h: Tracked) -> Tracked:
    """[N, C, H, W] -> [N, C, H*W] -> (relu) -> [N, C, H, W], C literal or copied (0)."""
    n, c, hh, ww = h.shape
    cdim = c if rng.random() < 0.5 else 0
    r = b.unary("Relu", b.reshape(h, [0, cdim, -1], (n, c, hh * ww), 1))
    return b.reshape(r, [0, cdim, hh, ww], h.shape, 1)


def block_transpose(b: Builder, rng, h: Tracked) -> Tracked:
    """A transpose round trip; between them a sigmoid, or a softmax over the moved channel axis."""
    perm = [[0, 2, 3, 1], [0, 1, 3, 2], [0, 3, 2, 1]][int(rng.integers(3))]
    inverse = [perm.index(i) for i in range(4)]
    t = b.transpose(h, perm)
    t = b.mixing("Softmax", t, axis=t.axis) if rng.random() < 0.4 else b.unary("Sigmoid", t)
    return b.transpose(t, inverse)


def block_split(b: Builder, rng, h: Tracked) -> Tracked:
    """Split the channels; either add the equal halves together (couples channel j with j + C/2)
    or treat the parts apart and concatenate them again."""
    c = h.channels
    if c < 2:
        return h
    if c % 2 == 0 and rng.random() < 0.4:
        a, z = b.split(h, [c // 2, c // 2])
        return b.binary("Add", a, z) if rng.random() < 0.5 else b.binary("Mul", a, b.unary("Sigmoid", z))  # GLU
    first = int(rng.integers(1, c))
    a, z = b.split(h, [first, c - first])
    return b.concat([b.unary("Sigmoid", a), b.cbr(z, _width(rng))])


def block_pool(b: Builder, rng, h: Tracked) -> Tracked:
    if h.shape[2] >= 4 and rng.random() < 0.5:
        out, _ = b.op("MaxPool", [h.name], kernel_shape=[2, 2], strides=[2, 2])
        return Tracked(out, (*h.shape[:2], h.shape[2] // 2, h.shape[3] // 2), h.axis, h.prov)
    out, _ = b.op("AveragePool", [h.name], kernel_shape=[3, 3], pads=[1] * 4, strides=[1, 1])
    return Tracked(out, h.shape, h.axis, h.prov)


def block_gn_export(b: Builder, rng, h: Tracked) -> Tracked:
    """GroupNorm as the torch exporters write it: Reshape [N, G, -1], InstanceNormalization with
    ones(G)/zeros(G), Reshape back (by Shape, or a literal C), the affine Mul and Add. The masked
    original zeroes its input ahead of the first Reshape (a reshape moves data only)."""
    n, c, hh, ww = h.shape
    groups = 1 if rng.random() < 0.4 else int(rng.choice(_divisors(c)))
    first = len(b.g.nodes)
    r, node = b.op("Reshape", [h.name, b.ints([0, groups, -1])])
    if groups > 1:
        b.consume(node, 0, h)
    ones = b.g.const(np.ones(groups, np.float32), "s")
    y, _ = b.op("InstanceNormalization", [r, ones, b.g.const(np.zeros(groups, np.float32), "b")], epsilon=1e-5)
    literal = rng.random() >= 0.5
    shape = b.ints([0, c, hh, ww]) if literal else b.op("Shape", [h.name])[0]
    y, _ = b.op("Reshape", [y, shape])
    if groups == 1 and h.axis is not None:  # statistics over the kept channels (the region whole)
        b.norms.append(NormRegion(h.name, tuple(nd.name for nd in b.g.nodes[first:]), (), y, h.prov, axis=1,
                                  channel_shape=shape if literal else None))
    y = b.binary("Mul", Tracked(y, h.shape, 1, h.prov), b.constant(rng.standard_normal((c, 1, 1)) * 0.5 + 1))
    return b.unary("Relu", b.binary("Add", y, b.constant(rng.standard_normal((c, 1, 1)) * 0.5)))


def block_deconv(b: Builder, rng, h: Tracked) -> Tracked:
    """ConvTranspose: weight [Cin, Cout, k, k], its output channels on axis 1; a 2x upsampling
    one is followed by a 2x2 max pool."""
    n, cin, hh, ww = h.shape
    cout, up = _width(rng), hh <= 8 and rng.random() < 0.5
    k = 2 if up else 3
    w = b.weight(cin, cout, k, k, fan_in=cin * k * k)
    out, node = b.op("ConvTranspose", [h.name, w, b.vector(cout)], kernel_shape=[k, k],
                     strides=[2, 2] if up else [1, 1], pads=[0] * 4 if up else [1] * 4)
    b.consume(node, 0, h)
    y = b.unary("Relu", Tracked(out, (n, cout, hh * (1 + up), ww * (1 + up)), 1,
                                 tuple(frozenset({(w, 1, j)}) for j in range(cout))))
    if up:
        out, _ = b.op("MaxPool", [y.name], kernel_shape=[2, 2], strides=[2, 2])
        y = Tracked(out, h.shape[:1] + (cout, hh, ww), 1, y.prov)
    return y


def block_affine(b: Builder, rng, h: Tracked) -> Tracked:
    """Per-channel constants the surgery must slice: a layer scale, a PRelu slope, a bias."""
    c = h.channels
    y = b.binary("Mul", h, b.constant(rng.standard_normal((c, 1, 1)) * 0.5))
    out, _ = b.op("PRelu", [y.name, b.g.const((rng.random((c, 1, 1)) * 0.5).astype(np.float32), "slope")])
    return b.binary("Add", Tracked(out, y.shape, y.axis, y.prov), b.constant(rng.standard_normal((1, c, 1, 1)) * 0.5))


def block_slice(b: Builder, rng, h: Tracked) -> Tracked:
    """A contiguous Slice of the channels (to the end, or not) beside a conv of the whole."""
    c = h.channels
    if c < 2:
        return h
    start = int(rng.integers(0, c - 1))
    end = int(rng.integers(start + 1, c + 1))
    out, _ = b.op("Slice", [h.name, b.ints([start]), b.ints([end if end < c or rng.random() < 0.5 else 2**62]),
                            b.ints([1])])
    part = Tracked(out, (h.shape[0], end - start, *h.shape[2:]), 1, h.prov[start:end])
    return b.concat([part, b.cbr(h, _width(rng))])


def block_gather(b: Builder, rng, h: Tracked) -> Tracked:
    """A permutation of the channels by Gather (the engine freezes it; the check still holds)."""
    perm = rng.permutation(h.channels)
    out, _ = b.op("Gather", [h.name, b.ints(perm)], axis=1)
    return Tracked(out, h.shape, 1, tuple(h.prov[i] for i in perm))


def block_resize(b: Builder, rng, h: Tracked) -> Tracked:
    """Spatial ops on every channel alike: Resize 2x (nearest) then a 2x2 max pool, or a spatial
    Pad then an unpadded pool."""
    if rng.random() < 0.5:
        out, _ = b.op("Resize", [h.name, "", b.g.const(np.array([1, 1, 2, 2], np.float32), "scales")], mode="nearest")
        out, _ = b.op("MaxPool", [out], kernel_shape=[2, 2], strides=[2, 2])
    else:
        mode = str(rng.choice(["constant", "reflect", "edge"]))
        out, _ = b.op("Pad", [h.name, b.ints([0, 0, 1, 1, 0, 0, 1, 1])], mode=mode)
        out, _ = b.op("AveragePool", [out], kernel_shape=[3, 3])
    return Tracked(out, h.shape, h.axis, h.prov)


#: blocks that keep the channel count and so may sit in a residual branch (``block_skip``)
SAME_WIDTH = ("softmax", "lrn", "eca", "se", "se_linear", "gn", "gn_export", "ln", "transpose", "affine", "reduce",
              "gather", "shuffle")


def block_skip(b: Builder, rng, h: Tracked) -> Tracked:
    """A residual around another block: coupling through the widened and normalising ops."""
    names = [n for n in SAME_WIDTH if b.opset >= BLOCKS[n][0]]
    y = BLOCKS[str(rng.choice(names))][1](b, rng, b.cbr(h, h.channels))
    return b.binary("Add", h, y)


#: name -> (lowest opset, block)
BLOCKS = {
    "cbr": (13, block_cbr), "res": (13, block_res), "concat": (13, block_concat), "dw": (13, block_dw),
    "grouped": (13, block_grouped), "se": (13, block_se), "reduce": (13, block_reduce),
    "softmax": (13, block_softmax), "lrn": (13, block_lrn), "eca": (13, block_eca),
    "gn": (21, block_gn), "ln": (13, block_ln), "mlp": (13, block_mlp), "reshape": (13, block_reshape),
    "transpose": (13, block_transpose), "split": (13, block_split), "pool": (13, block_pool),
    "gn_export": (13, block_gn_export), "deconv": (13, block_deconv), "affine": (13, block_affine),
    "slice": (13, block_slice), "gather": (13, block_gather), "resize": (13, block_resize),
    "skip": (13, block_skip), "se_linear": (13, block_se_linear), "shuffle": (13, block_shuffle),
    "depth": (13, block_depth),
}


def head(b: Builder, rng, h: Tracked) -> Tracked:
    """GAP + Gemm, or (small maps) flatten -> Gemm, where the Gemm reads every position."""
    if h.shape[2] * h.shape[3] <= 16 and rng.random() < 0.3:
        return b.linear(b.flatten(h), 10)
    return b.linear(b.flatten(b.gap(h)), 10)


def to_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float constant and the IO in float16 (a model as exported in half precision), but
    Resize's scales, which stay float32."""
    scales = {n.input[2] for n in model.graph.node if n.op_type == "Resize"}
    for i, t in enumerate(model.graph.initializer):
        if t.data_type == TensorProto.FLOAT and t.name not in scales:
            half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
            model.graph.initializer[i].CopyFrom(half)
    for v in [*model.graph.input, *model.graph.output]:
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    return model


def generate(seed: int) -> Case:
    """The graph of ``seed``: an opset, a dtype, a batch, a stem conv, 2-8 blocks, a head; now and
    then a block's output is a graph output too (the engine must then keep its channels whole)."""
    rng = np.random.default_rng([seed, 0])
    opset = int(rng.choice(OPSETS))
    dynamic = bool(rng.random() < 0.3)
    dtype = "float16" if rng.random() < 0.25 else "float32"
    b = Builder(rng, opset, dynamic)
    hw = int(rng.choice([8, 12, 16]))
    h = b.cbr(b.input(3, hw), _width(rng))
    names = [n for n, (lowest, _) in BLOCKS.items() if opset >= lowest]
    blocks = [str(rng.choice(names)) for _ in range(int(rng.integers(2, 9)))]
    outputs = []
    for name in blocks:
        h = BLOCKS[name][1](b, rng, h)
        if rng.random() < 0.05:
            outputs.append(h)
    model = b.finish([head(b, rng, h), *outputs])
    if dtype == "float16":
        model = to_half(model)
    return Case(seed, model, b.consumers, b.norms, opset, dtype, dynamic, blocks, (1, 3, hw, hw))


def options(seed: int) -> dict:
    """The ``api.prune`` options of ``seed`` (their own stream: the graph does not move them)."""
    rng = np.random.default_rng([seed, 1])
    opts: dict = {"target_macs": 0.5} if rng.random() < 0.2 else {"ratio": float(rng.choice([0.25, 0.5, 0.75]))}
    if rng.random() < 0.3:
        opts["round_to"] = 4
    opts["importance"] = str(rng.choice(["l2", "random"]))
    opts["seed"] = seed
    return opts


# ---------------------------------------------------------------------------------------------
# the independent check


class Mismatch(Exception):
    """The pruned model does not compute the masked original built here."""


def kept_of(plan: list[dict]):
    """A predicate on sources (constant, axis, index): kept unless the plan slices that constant's
    axis without it."""
    kept = {(e["tensor"], e["axis"]): set(e["kept"]) for e in plan}
    return lambda src: (src[0], src[1]) not in kept or src[2] in kept[(src[0], src[1])]


def _position_mask(prov: tuple, is_kept, where: str) -> np.ndarray:
    """Which positions a consumer still reads. Every source a position carries must agree: a
    residual sum of a kept and a removed channel is not a pruning of any graph."""
    mask = []
    for i, sources in enumerate(prov):
        flags = {is_kept(s) for s in sources}
        if len(flags) > 1:
            raise Mismatch(f"{where} position {i} carries kept and removed channels: {sorted(sources)}")
        mask.append(flags != {False})
    return np.asarray(mask)


def _index(model: onnx.ModelProto, name: str) -> int:
    return next(i for i, n in enumerate(model.graph.node) if n.name == name)


def _mask_input(model: onnx.ModelProto, consumer: Consumer, mask: np.ndarray, dtype) -> None:
    """``node.input[slot] * mask`` (broadcast along the consumer's axis), inserted before it."""
    at = _index(model, consumer.node)
    node = model.graph.node[at]
    shape = [1] * consumer.rank
    shape[consumer.axis] = len(mask)
    mname, out = f"{node.name}_mask{consumer.slot}", f"{node.name}_masked{consumer.slot}"
    model.graph.initializer.append(numpy_helper.from_array(mask.astype(dtype).reshape(shape), mname))
    mul = helper.make_node("Mul", [node.input[consumer.slot], mname], [out], name=f"{node.name}_masking")
    node.input[consumer.slot] = out
    model.graph.node.insert(at, mul)


def _kept_norm(model: onnx.ModelProto, region: NormRegion, mask: np.ndarray, dtype) -> None:
    """The region over the kept positions of its axis: its entry gathered, its per-channel
    constants sliced (and a literal channel count in it written again), its output scattered back
    to full width by a 0/1 MatMul over the last axis, between transposes for axis 1 (exact; zeros
    where removed: every consumer masks them anyway)."""
    keep = np.flatnonzero(mask)
    if not len(keep):
        raise Mismatch(f"the norm {region.nodes[0]} would keep no channel")
    scatter = np.zeros((len(keep), len(mask)), dtype)
    scatter[np.arange(len(keep)), keep] = 1
    p = region.nodes[0]
    inits = {t.name: t for t in model.graph.initializer}
    renamed = {region.entry: f"{p}_kept", region.output: f"{p}_normed"}
    for c in region.consts:
        renamed[c] = f"{c}_kept"
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[c])[keep], renamed[c]))
    if region.channel_shape is not None:
        target = numpy_helper.to_array(inits[region.channel_shape]).copy()
        target[1] = len(keep)
        renamed[region.channel_shape] = f"{region.channel_shape}_kept"
        model.graph.initializer.append(numpy_helper.from_array(target, renamed[region.channel_shape]))
    model.graph.initializer.extend([numpy_helper.from_array(keep.astype(np.int64), f"{p}_keep"),
                                    numpy_helper.from_array(scatter, f"{p}_scatter")])
    for name in region.nodes:
        node = model.graph.node[_index(model, name)]
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    model.graph.node.insert(_index(model, region.nodes[0]), helper.make_node(
        "Gather", [region.entry, f"{p}_keep"], [f"{p}_kept"], axis=region.axis, name=f"{p}_gather"))
    if region.axis == -1:
        back = [helper.make_node("MatMul", [f"{p}_normed", f"{p}_scatter"], [region.output], name=f"{p}_scatter")]
    else:  # channels on axis 1 of [N, C, H, W]: moved last, scattered, moved back
        assert region.axis == 1, region
        back = [helper.make_node("Transpose", [f"{p}_normed"], [f"{p}_last"], perm=[0, 2, 3, 1], name=f"{p}_last"),
                helper.make_node("MatMul", [f"{p}_last", f"{p}_scatter"], [f"{p}_wide"], name=f"{p}_scatter"),
                helper.make_node("Transpose", [f"{p}_wide"], [region.output], perm=[0, 3, 1, 2], name=f"{p}_back")]
    at = _index(model, region.nodes[-1]) + 1
    for k, node in enumerate(back):
        model.graph.node.insert(at + k, node)


def masked_original(case: Case, plan: list[dict]) -> onnx.ModelProto:
    """The generated model with every removed channel zeroed where it is consumed, and every
    LayerNorm over the channels and GroupNorm with one group computed over the kept ones."""
    is_kept = kept_of(plan)
    dtype = np.float16 if case.dtype == "float16" else np.float32
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    for consumer in case.consumers:
        mask = _position_mask(consumer.prov, is_kept, f"{consumer.node} input {consumer.slot}")
        if not mask.all():
            _mask_input(model, consumer, mask, dtype)
    for region in case.norms:
        mask = _position_mask(region.prov, is_kept, f"norm {region.nodes[0]}")
        if not mask.all():
            _kept_norm(model, region, mask, dtype)
    return model


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(session, feeds: dict, what: str) -> list:
    """Outputs of ``session``; a pruned model that does not run is a Mismatch (the tool wrote it),
    a reference that does not run is this fuzzer's error (RuntimeError)."""
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        if what == "pruned":
            raise Mismatch(f"the pruned model does not run: {str(exc)[:300]}") from exc
        raise RuntimeError(f"the masked original built here does not run: {exc}") from exc


def _rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    """max|a - b| / max|a| in float32 (inf where either is not finite or the shapes differ)."""
    ref, got = ref.astype(np.float32), got.astype(np.float32)
    if ref.shape != got.shape or not (np.isfinite(ref).all() and np.isfinite(got).all()):
        return float("inf")
    scale = float(np.abs(ref).max()) or 1.0
    return float(np.abs(ref - got).max()) / scale


def compare(case: Case, reference: onnx.ModelProto, pruned: onnx.ModelProto) -> float:
    """The worst relative error of ``pruned`` against ``reference`` on two random inputs at batch
    1, and one at each of EXTRA_BATCHES where the batch is dynamic. Raises Mismatch above the
    dtype's tolerance."""
    rng = np.random.default_rng([case.seed, 2])
    dtype = np.float16 if case.dtype == "float16" else np.float32
    batches = [1, 1, *(EXTRA_BATCHES if case.dynamic else ())]
    try:
        new = _session(pruned)
    except Exception as exc:  # noqa: BLE001
        raise Mismatch(f"onnxruntime cannot load the pruned model: {str(exc)[:300]}") from exc
    ref = _session(reference)
    worst = 0.0
    for batch in batches:
        x = {"x": rng.standard_normal((batch, *case.input_shape[1:])).astype(dtype)}
        for a, b in zip(_run(ref, x, "reference"), _run(new, x, "pruned")):
            err = _rel_err(a, b)
            worst = max(worst, err)
            if err > TOLERANCE[case.dtype]:
                raise Mismatch(f"relative error {err:.3g} > {TOLERANCE[case.dtype]:g} at batch {batch}")
    return worst


def check(case: Case, report: dict, pruned: onnx.ModelProto) -> float:
    """The independent check of an ok result; its worst relative error, or Mismatch."""
    return compare(case, masked_original(case, report["plan"]), pruned)


# ---------------------------------------------------------------------------------------------
# one seed


@dataclass
class Record:
    seed: int
    status: str
    opset: int = 0
    dtype: str = ""
    dynamic: bool = False
    blocks: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    options: dict = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    tool_err: float | None = None
    check_err: float | None = None
    removed: str = ""
    widened: int = 0
    unprunable: list = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in self.options.items() if k != "seed")
        head = (f"seed {self.seed:<5} {self.status:<12} opset {self.opset} {self.dtype[5:]}{' dyn' if self.dynamic else ''}"
                f"  [{opts}]  blocks={','.join(self.blocks)}")
        if self.status == "ok":
            return f"{head}  removed {self.removed} widened {self.widened} err {self.check_err:.1e}"
        return f"{head}  ops={','.join(self.ops)}  {self.error.splitlines()[0] if self.error else ''}"


def run_seed(seed: int, save: str | None = None) -> Record:
    """Generate, prune, classify, check; failures saved under ``save`` (model, pruned model, JSON)."""
    from compressor import api
    from compressor.errors import UsageError, VerificationError

    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # the engine's sessions warn of initializers they drop
    t0 = time.perf_counter()
    try:
        case = generate(seed)
    except Exception as exc:  # noqa: BLE001 - a generator bug is reported as such, not as the tool's
        return Record(seed, "crash", error=f"generator: {type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    opts = options(seed)
    rec = Record(seed, "ok", case.opset, case.dtype, case.dynamic, case.blocks, case.ops, opts)
    before = case.model.SerializeToString()
    pruned = None
    try:
        res = api.prune(case.model, **opts)
    except VerificationError as exc:
        rec.status, rec.error, rec.traceback = "proof_failed", str(exc), traceback.format_exc()
        rec.error += f" [{_second_opinion(case, opts)}]"
    except UsageError as exc:  # ModelError included
        rec.status, rec.error = "refused", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - anything else is the tool's crash
        rec.status, rec.error, rec.traceback = "crash", f"{type(exc).__name__}: {exc}", traceback.format_exc()
    else:
        pruned = res.model
        rec.tool_err = res.report["verify"]["max_rel_err"]
        rec.removed = f"{res.report['channels']['removed']}/{res.report['channels']['total']}"
        rec.widened = len(res.report["widened"])
        rec.unprunable = sorted({r for u in res.report["unprunable"] for r in u["reasons"]})
        try:
            if case.model.SerializeToString() != before:
                raise Mismatch("api.prune modified the caller's model")
            rec.check_err = check(case, res.report, pruned)
        except Mismatch as exc:
            rec.status, rec.error = "mismatch", str(exc)
        except Exception as exc:  # noqa: BLE001 - this fuzzer's own error, named as such
            rec.status, rec.error = "crash", f"check: {type(exc).__name__}: {exc}"
            rec.traceback = traceback.format_exc()
    rec.seconds = round(time.perf_counter() - t0, 2)
    if save and rec.status in ("proof_failed", *FAILURES):
        _save(Path(save), rec, case.model, pruned)
    return rec


def _second_opinion(case: Case, opts: dict) -> str:
    """What the independent check says of the plan the engine's proof refused: a wrong cut (the
    proof was right), or a right one (the proof refused an exact pruning: a numerical limit)."""
    from compressor import api

    res = api.prune(case.model, verify_model=False, **opts)
    try:
        return f"unverified, the check here passes it: max relative error {check(case, res.report, res.model):.2g}"
    except Mismatch as exc:
        return f"unverified, the check here fails it too: {exc}"


def _save(folder: Path, rec: Record, model: onnx.ModelProto, pruned: onnx.ModelProto | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / f"seed{rec.seed}.onnx"))
    if pruned is not None:
        onnx.save(pruned, str(folder / f"seed{rec.seed}.pruned.onnx"))
    keep = ("seed", "status", "opset", "dtype", "dynamic", "blocks", "options", "error", "traceback")
    info = {k: getattr(rec, k) for k in keep}
    info["rerun"] = f"python tools/fuzz_graphs.py --seed {rec.seed} --verbose"
    (folder / f"seed{rec.seed}.json").write_text(json.dumps(info, indent=1))


# ---------------------------------------------------------------------------------------------
# command line


def _seed_range(text: str) -> range:
    a, _, b = text.partition(":")
    if not (a.isdigit() and b.isdigit() and int(a) < int(b)):
        raise argparse.ArgumentTypeError(f"expected START:END with START < END, got {text!r}")
    return range(int(a), int(b))


def summary(records: list[Record]) -> str:
    """Counts per outcome, and per block the outcomes of the seeds that used it."""
    counts = Counter(r.status for r in records)
    lines = ["", "outcome       seeds", *(f"{o:<13} {counts.get(o, 0)}" for o in OUTCOMES),
             f"{'total':<13} {len(records)}", "", f"{'block':<10} " + " ".join(f"{o:>12}" for o in OUTCOMES)]
    per_block: dict[str, Counter] = {}
    for r in records:
        for name in set(r.blocks):
            per_block.setdefault(name, Counter())[r.status] += 1
    for name in sorted(per_block):
        lines.append(f"{name:<10} " + " ".join(f"{per_block[name].get(o, 0):>12}" for o in OUTCOMES))
    return "\n".join(lines)


def _verbose(seed: int) -> None:
    """One seed's graph, its options and the consumers the check masks (with their sources)."""
    case = generate(seed)
    print(f"seed {seed}: opset {case.opset} {case.dtype} dynamic={case.dynamic} blocks={case.blocks}")
    print(onnx.helper.printable_graph(case.model.graph))
    print("options:", options(seed))
    for c in case.consumers:
        sources = sorted({f"{w}[{axis}]" for p in c.prov for w, axis, _ in p})
        print(f"consumer {c.node} input {c.slot} axis {c.axis}: {len(c.prov)} positions from {sources}")
    for r in case.norms:
        print(f"norm over kept channels (axis {r.axis}): {', '.join(r.nodes)}")


class _Inline:
    """``--jobs 1``: the seeds in this process (no spawn cost, a debugger can follow them)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, *iterables):
        return map(fn, *iterables)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--seeds", type=_seed_range, help="START:END, END excluded")
    which.add_argument("--seed", type=int, help="one seed (with --verbose: its graph and traceback)")
    ap.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--json", help="write every record to this file")
    ap.add_argument("--save-failures", metavar="DIR", help="save each failing model, its pruned model and a JSON")
    ap.add_argument("--verbose", action="store_true", help="print the graph, and the traceback of a failure")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    seeds = range(args.seed, args.seed + 1) if args.seed is not None else args.seeds
    if args.verbose:
        for seed in seeds:
            _verbose(seed)
    records: list[Record] = []
    saves = [args.save_failures] * len(seeds)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else _Inline() as pool:
        for rec in pool.map(run_seed, seeds, saves):
            records.append(rec)
            print(rec.line(), flush=True)
            if args.verbose and rec.traceback:
                print(rec.traceback)
    print(summary(records))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([r.__dict__ for r in records], indent=1))
    return 1 if any(r.status in FAILURES for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
