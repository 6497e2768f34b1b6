"""MACs and parameter counts from concrete shapes (before pruning, or after, from new shapes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import onnx

from compressor.ir.graph import GraphIndex, node_attr

ShapeFn = Callable[[str], tuple[int, ...] | None]
MacsFn = Callable[[onnx.NodeProto, ShapeFn], int]


@dataclass(frozen=True)
class Layer:
    """How one layer op is counted: its MACs, and the input slots that hold its weights and biases
    (integer ones are parameters too: the float ones are counted as float constants)."""

    macs: MacsFn
    weights: tuple[int, ...] = ()
    #: parameters of a packed weight (MatMulNBits: N x K), instead of its stored elements
    packed: Callable[[onnx.NodeProto], int] | None = None


def _conv(w_slot: int) -> MacsFn:
    """Every output element sums over one filter: C/group x kernel (QLinearConv's weight is input 3)."""
    return lambda node, shape: math.prod(shape(node.output[0])) * math.prod(shape(node.input[w_slot])[1:])


def _conv_transpose(node: onnx.NodeProto, shape: ShapeFn) -> int:
    return math.prod(shape(node.input[0])) * math.prod(shape(node.input[1])[1:])


def _gemm(node: onnx.NodeProto, shape: ShapeFn) -> int:
    a = shape(node.input[0])
    return math.prod(shape(node.output[0])) * (a[0] if node_attr(node, "transA", 0) else a[1])


def _matmul(node: onnx.NodeProto, shape: ShapeFn) -> int:
    if node_attr(node, "transBatchA", 0):  # FusedMatMul with A's batch axes moved: K is not local
        return 0
    a = shape(node.input[0])
    return math.prod(shape(node.output[0])) * (a[-2] if node_attr(node, "transA", 0) else a[-1])


def _einsum(node: onnx.NodeProto, shape: ShapeFn) -> int:
    """One multiply-add per combination of the equation's letters (two operands: a batched MatMul,
    CvT's attention); an equation with an ellipsis counts nothing."""
    eq = node_attr(node, "equation", b"")
    eq = (eq.decode() if isinstance(eq, bytes) else str(eq)).replace(" ", "")
    terms = eq.partition("->")[0].split(",")
    if "." in eq or len(terms) != len(node.input) or len(terms) < 2:
        return 0
    sizes: dict[str, int] = {}
    for term, x in zip(terms, node.input):
        dims = shape(x)
        if dims is None or len(dims) != len(term):
            return 0
        for letter, d in zip(term, dims):
            sizes[letter] = max(sizes.get(letter, 1), int(d))
    return math.prod(sizes.values())


def _nbits_params(node: onnx.NodeProto) -> int:
    return int(node_attr(node, "N")) * int(node_attr(node, "K"))


def _matmul_nbits(node: onnx.NodeProto, shape: ShapeFn) -> int:
    """A[..., K] @ B[K, N] with B packed in blocks of bits: the sizes come from attributes."""
    return math.prod(shape(node.input[0])[:-1]) * _nbits_params(node)


_MS, _NCHWC = "com.microsoft", "com.microsoft.nchwc"

#: (domain, op_type) -> how the layer is counted. Quantized and onnxruntime-fused layers count what
#: their float twins count (an NCHWc Conv the channels it computes, padded to its block size).
LAYERS: dict[tuple[str, str], Layer] = {
    ("", "Conv"): Layer(_conv(1), (1, 2)),
    ("", "ConvTranspose"): Layer(_conv_transpose, (1, 2)),
    ("", "Gemm"): Layer(_gemm, (1, 2)),
    ("", "MatMul"): Layer(_matmul, (1,)),
    ("", "Einsum"): Layer(_einsum),
    ("", "ConvInteger"): Layer(_conv(1), (1,)),
    ("", "QLinearConv"): Layer(_conv(3), (3, 8)),
    ("", "MatMulInteger"): Layer(_matmul, (1,)),
    ("", "QLinearMatMul"): Layer(_matmul, (3,)),
    (_MS, "QLinearConv"): Layer(_conv(3), (3, 8)),
    (_MS, "QGemm"): Layer(_gemm, (3, 6)),
    (_MS, "FusedConv"): Layer(_conv(1), (1, 2)),
    (_MS, "FusedGemm"): Layer(_gemm, (1, 2)),
    (_MS, "FusedMatMul"): Layer(_matmul, (1,)),
    (_MS, "MatMulIntegerToFloat"): Layer(_matmul, (1, 6)),
    (_MS, "DynamicQuantizeMatMul"): Layer(_matmul, (1, 4)),
    (_MS, "MatMulNBits"): Layer(_matmul_nbits, (1, 5), packed=_nbits_params),
    (_NCHWC, "Conv"): Layer(_conv(1), (1, 2)),
}


def layer(node: onnx.NodeProto) -> Layer | None:
    """How ``node`` is counted, or None when it computes no MACs here."""
    return LAYERS.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type))


def node_macs(node: onnx.NodeProto, shape: ShapeFn) -> int:
    rule = layer(node)
    if rule is None:
        return 0
    try:
        return int(rule.macs(node, shape))
    except (TypeError, IndexError, ValueError):  # a shape or attribute is unknown
        return 0


def count(index: GraphIndex, shape: ShapeFn | None = None,
          gone: set[str] | frozenset = frozenset()) -> tuple[int, int, dict[str, int]]:
    """(total MACs, parameters, MACs per node) using ``shape`` (default: the original shapes).
    Parameters: the elements of every float constant, and the integer weights and biases of the
    quantized layers. ``gone``: labels of nodes a plan takes out of the graph (surgery/drop.py);
    their MACs and the constants only they read are not counted."""
    shape = shape or index.shape
    per_node = {}
    integer: dict[str, int] = {}
    for node in index.nodes:
        if gone and index.node_label(node) in gone:
            continue
        m = node_macs(node, shape)
        if m:
            per_node[index.node_label(node)] = m
        integer.update(_integer_weights(index, node, shape))

    def counted(name: str) -> bool:
        readers = index.consumers.get(name, ())
        return not gone or not readers or any(index.node_label(n) not in gone for n, _ in readers)

    params = sum(math.prod(shape(n) or ()) for n in index.float_constants if counted(n))
    params += sum(n for name, n in integer.items() if counted(name))
    return sum(per_node.values()), params, per_node


_T = onnx.TensorProto
_INTEGER = {_T.INT8, _T.UINT8, _T.INT16, _T.UINT16, _T.INT32, _T.UINT32, _T.INT4, _T.UINT4}


def _elem_type(index: GraphIndex, name: str) -> int | None:
    """A constant's element type, read from its proto (its values may have been released)."""
    if name in index.initializers:
        return index.initializers[name].data_type
    node = index.constant_nodes.get(name)
    value = node_attr(node, "value") if node is not None else None
    return value.data_type if value is not None else None


def _integer_weights(index: GraphIndex, node: onnx.NodeProto, shape: ShapeFn) -> dict[str, int]:
    """The integer constants a quantized layer reads as weights or biases, with their parameter counts."""
    rule = layer(node)
    out: dict[str, int] = {}
    for slot in rule.weights if rule is not None else ():
        name = node.input[slot] if slot < len(node.input) else ""
        if not name or _elem_type(index, name) not in _INTEGER:
            continue
        if rule.packed is not None and slot == rule.weights[0]:
            out[name] = rule.packed(node)
        else:
            out[name] = math.prod(shape(name) or ())
    return out
