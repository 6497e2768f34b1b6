"""Give the pruned model its input's weight storage back.

``ir.fold.prepare`` folds the weights a model stores encoded (int8/uint8/... data behind a
DequantizeLinear, fp16/bf16 data behind a Cast) into float initializers, so that analysis and
surgery see their values. Here each such weight is encoded again in the pruned model: its stored
data (and a per-axis scale/zero point along a sliced axis) sliced as the surgery sliced the float
weight, and its DequantizeLinear/Cast put back before its first reader. Only where that is exact:
the re-encoded weight, decoded as onnxruntime decodes it, must equal the pruned float weight bit
for bit; otherwise the float weight stays, and a warning says which and why.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.ir.fold import StoredWeight
from compressor.ir.graph import node_attr, subgraph_outer_refs

#: DequantizeLinear data types re-encoded (one value per whole byte(s); int32 as onnxruntime: zp 0)
DQ_DATA = (np.int8, np.uint8, np.int16, np.uint16, np.int32)


@dataclass
class Encoded:
    """One weight encoded again: its node and its inputs' values, by the names they get."""

    node: onnx.NodeProto
    inputs: dict[str, np.ndarray]


@dataclass
class StorageResult:
    """What ``restore_storage`` did: weights encoded again (by op) and weights left float (why)."""

    restored: dict[str, int] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)

    def notes(self) -> list[str]:
        if not self.restored:
            return []
        ops = ", ".join(f"{n} {op}" for op, n in sorted(self.restored.items()))
        return [f"{sum(self.restored.values())} weight(s) written in their stored encoding again ({ops})"]

    def warnings(self) -> list[str]:
        if not self.kept_float:
            return []
        by_why: dict[str, list[str]] = defaultdict(list)
        for name, why in self.kept_float.items():
            by_why[why].append(name)
        return [f"{len(names)} weight(s) the input stored encoded are written as float ({why}): "
                + ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                for why, names in by_why.items()]


def restore_storage(model: onnx.ModelProto, stored: list[StoredWeight], cuts: list, *,
                    transformed: bool = False) -> StorageResult:
    """Encode ``stored`` weights again in ``model`` (the pruned model, edited in place). ``cuts``:
    the surgery's slices (``SliceEntry``: tensor, axis, kept) of the prepared model's tensors.
    ``transformed``: exact transforms ran before the surgery (they may have changed weights)."""
    result = StorageResult()
    if not stored:
        return result
    g = model.graph
    by_tensor: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)
    for c in cuts:
        by_tensor[c.tensor].append((int(c.axis), list(c.kept)))
    inits = {t.name: i for i, t in enumerate(g.initializer)}
    encoded: list[Encoded] = []
    for sw in stored:
        if sw.name not in inits:
            if any(t.startswith(sw.name + "__exact") for t in inits):
                result.kept_float[sw.name] = "an exact transform replaced it"
            continue  # otherwise it left the graph with its layer (--drop-layers)
        target = numpy_helper.to_array(g.initializer[inits[sw.name]])
        enc, why = _encode(sw, by_tensor.get(sw.name, []))
        if enc is not None:
            got = _decode(enc)
            if got.dtype != target.dtype or got.shape != target.shape or got.tobytes() != target.tobytes():
                enc, why = None, ("an exact transform changed its values" if transformed else
                                  "the pruned values differ from the re-encoded ones")
        if enc is None:
            result.kept_float[sw.name] = why
            continue
        encoded.append(enc)
        result.restored[sw.node.op_type] = result.restored.get(sw.node.op_type, 0) + 1
    if encoded:
        _write(model, encoded)
    return result


def _encode(sw: StoredWeight, cuts: list[tuple[int, list[int]]]) -> tuple[Encoded | None, str]:
    """The stored inputs sliced by ``cuts`` (axis, kept) of the decoded weight, or (None, why not)."""
    node = sw.node
    args = [sw.inputs[x] if x else None for x in node.input]
    data = args[0]

    def take(arr: np.ndarray) -> np.ndarray:
        for axis, kept in cuts:
            arr = np.take(arr, kept, axis=axis)
        return arr

    if node.op_type == "Cast":
        return Encoded(node, {node.input[0]: take(data)}), ""
    if int(node_attr(node, "block_size", 0)):
        return None, "blocked quantization (block_size) is not re-encoded"
    if data.dtype not in [np.dtype(t) for t in DQ_DATA]:
        return None, f"{data.dtype} data is not re-encoded"
    scale = args[1]
    axis = int(node_attr(node, "axis", 1))
    axis = axis + data.ndim if axis < 0 else axis
    per_axis = scale.ndim == 1 and 0 <= axis < data.ndim and scale.size == data.shape[axis] and scale.size > 1
    if scale.ndim > 1 or (scale.ndim == 1 and scale.size > 1 and not per_axis):
        return None, f"a scale of shape {list(scale.shape)} is not re-encoded"
    values = {node.input[0]: take(data)}
    for k in (1, 2):
        if k < len(node.input) and node.input[k]:
            arr = args[k]
            if arr.size != scale.size:
                return None, "a zero point sized unlike its scale is not re-encoded"
            if per_axis:
                for cut_axis, kept in cuts:
                    if cut_axis == axis:
                        arr = np.take(arr, kept, axis=0)
            values[node.input[k]] = arr
    return Encoded(node, values), ""


def _decode(enc: Encoded) -> np.ndarray:
    """The weight ``enc`` encodes, computed as onnxruntime's DequantizeLinear / Cast kernels do."""
    node = enc.node
    data = enc.inputs[node.input[0]]
    if node.op_type == "Cast":
        return data.astype(onnx.helper.tensor_dtype_to_np_dtype(int(node_attr(node, "to"))))
    scale = enc.inputs[node.input[1]]
    zp = enc.inputs.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    shape = [1] * data.ndim
    if scale.ndim == 1 and scale.size > 1:
        axis = int(node_attr(node, "axis", 1))
        shape[axis + data.ndim if axis < 0 else axis] = scale.size
    diff = data.astype(np.int64)
    if zp is not None:
        diff = diff - zp.astype(np.int64).reshape(shape if zp.size > 1 else ())
    # onnxruntime: float(x - zero_point) * scale, in float32 (and rounded to a float16 scale's type)
    out = diff.astype(np.float32) * scale.astype(np.float32).reshape(shape if scale.size > 1 else ())
    return out.astype(scale.dtype)


def _write(model: onnx.ModelProto, encoded: list[Encoded]) -> None:
    """Replace each encoded weight's float initializer by its inputs and node, the node placed
    before the first node that reads the weight (the order stays topological)."""
    g = model.graph
    weights = {e.node.output[0] for e in encoded}
    for i in reversed(range(len(g.initializer))):
        if g.initializer[i].name in weights:
            del g.initializer[i]
    inits = {t.name: t for t in g.initializer}
    taken = set(inits) | {i.name for i in g.input} | {o for n in g.node for o in n.output}
    node_names = {n.name for n in g.node if n.name}
    added: dict[str, np.ndarray] = {}

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

    def place(name: str, arr: np.ndarray) -> str:
        """The name ``arr`` is stored under: its own when free or holding the same value."""
        k = 0
        candidate = name
        while True:
            if candidate in added and same(added[candidate], arr):
                return candidate
            if candidate in inits and candidate not in added and same(numpy_helper.to_array(inits[candidate]), arr):
                return candidate
            if candidate not in taken and candidate not in added:
                added[candidate] = arr
                g.initializer.append(numpy_helper.from_array(arr, candidate))  # a 0-d scale stays 0-d
                return candidate
            k += 1
            candidate = f"{name}__stored{k}"

    first_reader: dict[str, int] = {}
    for idx, n in enumerate(g.node):
        reads = set(n.input) | (subgraph_outer_refs(n) if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute) else set())
        for name in reads & weights:
            first_reader.setdefault(name, idx)
    inserts: list[tuple[int, int, onnx.NodeProto]] = []
    for order, enc in enumerate(encoded):
        node = onnx.NodeProto()
        node.CopyFrom(enc.node)
        for k, x in enumerate(node.input):
            if x:
                node.input[k] = place(x, enc.inputs[x])
        if node.name:
            base, k = node.name, 0
            while node.name in node_names:
                k += 1
                node.name = f"{base}__stored{k}"
            node_names.add(node.name)
        inserts.append((first_reader.get(node.output[0], len(g.node)), order, node))
    # from the back, so that the positions still to come are not shifted
    for pos, _, node in sorted(inserts, key=lambda t: (t[0], t[1]), reverse=True):
        g.node.insert(pos, node)
