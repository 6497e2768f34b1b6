"""Fold constant subgraphs (every input constant) into initializers before analysis.

Exporters and model zoos sometimes compute weights at load time (ConstantOfShape, Cast,
Reshape/Transpose/Identity of an initializer, DequantizeLinear of constant data). Pruning needs
the values, so such nodes are evaluated once (onnxruntime, else onnx's reference evaluator) and
replaced by initializers under the same output names. Weights the model *stored* encoded (a
DequantizeLinear or a Cast of its own constants) are recorded (``StoredWeight``), so that the
pruned model can be given them back in their encoding (surgery/encode.py). Sparse initializers
become dense ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.ir.shapes import constant_node_value

NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
              "Bernoulli", "Constant", "If", "Loop", "Scan", "Dropout"}
MAX_FOLDED_BYTES = 1 << 30
#: Nodes whose folded output may be a weight stored in a compact encoding (surgery/encode.py)
STORAGE_OPS = ("DequantizeLinear", "Cast")


@dataclass
class StoredWeight:
    """A constant the input model stored encoded: ``node`` (a DequantizeLinear, or a Cast from a
    narrower float type) computed it from constants of the model itself, ``inputs`` (by name)."""

    node: onnx.NodeProto
    inputs: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.node.output[0]


@dataclass
class Prepared:
    """A model ready for analysis, what preparing it did (``notes``; ``warnings``: what the output
    model will hold differently), and the weights it stored encoded (``stored``)."""

    model: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stored: list[StoredWeight] = field(default_factory=list)


def prepare(model: onnx.ModelProto, *, inplace: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """``prepare_model``, returning (model, notes and warnings)."""
    p = prepare_model(model, inplace=inplace)
    return p.model, p.notes + p.warnings


def prepare_model(model: onnx.ModelProto, *, inplace: bool = False) -> Prepared:
    """Normalise a model for analysis: IR >= 4, initializers are constants and not listed as graph
    inputs (an IR >= 4 model may list them, as overridable defaults), sparse initializers dense,
    and constant subgraphs folded.

    The input is returned as it is when nothing changes. Otherwise it is copied first, unless
    ``inplace`` (the caller owns the model, e.g. it has just loaded it), where it is edited in place.
    """
    notes: list[str] = []
    warnings: list[str] = []
    inits = {t.name for t in model.graph.initializer}
    listed = [k for k, i in enumerate(model.graph.input) if i.name in inits]
    sparse = len(model.graph.sparse_initializer)
    if model.ir_version < 4 or listed or sparse:
        if not inplace:
            m = onnx.ModelProto()
            m.CopyFrom(model)
            model, inplace = m, True
        for k in reversed(listed):
            del model.graph.input[k]
        if model.ir_version < 4:
            notes.append(f"IR version {model.ir_version} raised to 4: initializers are no longer listed as inputs")
            model.ir_version = 4
        elif listed:
            # IR >= 4 reads such an input as a default a caller may override (torch's
            # keep_initializers_as_inputs=True writes every weight so): pruning fixes the weights
            notes.append(f"{len(listed)} initializer(s) listed as graph inputs (overridable) are treated as "
                         "constants and no longer listed as inputs")
        if sparse:
            _densify_sparse(model)
            warnings.append(f"{sparse} sparse initializer(s) made dense: the output stores them dense")
    read = {x for n in model.graph.node for x in n.input}
    model, folded, stored, left, unrecorded = _fold(model, inplace=inplace)
    if folded:
        notes.append(f"folded {len(folded)} constant subgraph node(s) into initializers")
    # an encoded weight read by further constant nodes (a Transpose, a Reshape) is folded with them
    further = [s.name for s in stored if s.name not in left and s.name in read]
    if further:
        warnings.append(f"{len(further)} weight(s) the input stored encoded (DequantizeLinear/Cast) feed further "
                        "constant nodes and are written as float: " + ", ".join(further[:5])
                        + (f" and {len(further) - 5} more" if len(further) > 5 else ""))
    if unrecorded:
        warnings.append(f"{len(unrecorded)} weight(s) the input stored encoded (DequantizeLinear/Cast) decode data "
                        "computed by other nodes and are written as float: " + ", ".join(unrecorded[:5])
                        + (f" and {len(unrecorded) - 5} more" if len(unrecorded) > 5 else ""))
    return Prepared(model, notes, warnings, [s for s in stored if s.name in left])


def _densify_sparse(model: onnx.ModelProto) -> None:
    """Each ``graph.sparse_initializer`` becomes a dense initializer of the same name."""
    g = model.graph
    for sp in g.sparse_initializer:
        value = constant_node_value(onnx.helper.make_node("Constant", [], [sp.values.name], sparse_value=sp))
        g.initializer.append(numpy_helper.from_array(value, sp.values.name))
    del g.sparse_initializer[:]


def fold_constants(model: onnx.ModelProto, *, inplace: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """The model with constant-only nodes folded; returns (model, folded node labels).

    A copy when something folds, unless ``inplace``; the model itself when nothing does."""
    out, labels, _, _, _ = _fold(model, inplace=inplace)
    return out, labels


def _is_storage(node: onnx.NodeProto, values: list[np.ndarray]) -> bool:
    """Whether ``node`` decodes a stored weight: a DequantizeLinear, or a Cast from a float type to
    a wider one (fp16/bf16 weights computed in float32)."""
    if node.op_type == "DequantizeLinear":
        return True
    if node.op_type != "Cast" or len(values) != 1:
        return False
    from compressor.ir.graph import node_attr

    src = onnx.helper.np_dtype_to_tensor_dtype(values[0].dtype)
    to = int(node_attr(node, "to", 0))
    floats = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    return src in floats and to in floats and floats.index(to) > max(floats.index(src), 1)


def _fold(model: onnx.ModelProto, *, inplace: bool
          ) -> tuple[onnx.ModelProto, list[str], list[StoredWeight], set[str], list[str]]:
    """``fold_constants``, the folded DequantizeLinear/Cast weights computed from the model's own
    constants (DequantizeLinear: where onnxruntime computed them), and the initializers left."""
    g = model.graph
    values: dict[str, np.ndarray | None] = {t.name: None for t in g.initializer}
    const_nodes = {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    graph_inputs = {i.name for i in g.input} - set(values)
    foldable: list[int] = []
    known_const = set(values) | const_nodes
    for i, node in enumerate(g.node):
        if node.op_type in NEVER_FOLD or node.domain not in ("", "ai.onnx"):
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        ins = [i for i in node.input if i]
        if ins and all(i in known_const and i not in graph_inputs for i in ins):
            foldable.append(i)
            known_const.update(o for o in node.output if o)
    if not foldable:
        return model, [], [], set(values), []
    if inplace:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    cnodes = {n.output[0]: n for n in out.graph.node if n.op_type == "Constant" and n.output}
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = numpy_helper.to_array(inits[name]) if name in inits else constant_node_value(cnodes[name])
        return cache[name]

    opset = [o for o in model.opset_import]
    # onnxruntime, which runs the model, computes the constants (all at once); only where it
    # cannot run the nodes alone does the evaluator fold them one by one
    computed = _in_onnxruntime(out, [out.graph.node[i] for i in foldable], get, opset)
    folded: list[int] = []
    labels = []
    stored: list[StoredWeight] = []
    unrecorded: list[str] = []  # decoded weights that cannot be encoded again (computed data)
    original = set(values) | const_nodes
    total = 0
    for i in foldable:
        node = out.graph.node[i]
        outs = [o for o in node.output if o]
        if computed is not None:
            results = [computed[o] for o in outs]
        else:
            try:
                results = _evaluate(node, {x: get(x) for x in node.input if x}, opset)
            except Exception:  # the reference evaluator lacks the op or the node is invalid: leave it
                continue
        for name, val in zip(outs, results):
            val = np.asarray(val)
            total += val.nbytes
            cache[name] = val
            out.graph.initializer.append(numpy_helper.from_array(val, name))
            inits[name] = out.graph.initializer[-1]
        folded.append(i)
        labels.append(node.name or f"{node.op_type}({outs[0]})")
        ins = [x for x in node.input if x]
        # a DequantizeLinear is re-encoded only where onnxruntime computed it (a widening Cast is
        # exact everywhere; onnxruntime's Python feeds cannot take bfloat16 arrays)
        if ((computed is not None or node.op_type == "Cast") and node.op_type in STORAGE_OPS and len(outs) == 1
                and ins and all(x in original for x in ins)):
            args = {x: get(x) for x in ins}
            if _is_storage(node, list(args.values())):
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                stored.append(StoredWeight(copy, args))
        elif node.op_type in STORAGE_OPS and len(outs) == 1 and ins:
            try:
                decodes = _is_storage(node, [get(x) for x in ins])
            except Exception:  # noqa: BLE001 - a value that cannot be read: not a weight we record
                decodes = False
            if decodes:  # it decodes a weight, but not from the model's own constants (or not in onnxruntime)
                unrecorded.append(outs[0])
        if total > MAX_FOLDED_BYTES:
            break
    for i in reversed(folded):  # by index: rebuilding the list would copy every node
        del out.graph.node[i]
    from compressor.ir.graph import drop_unused

    drop_unused(out)
    kept = {t.name for t in out.graph.initializer}
    return out, labels, stored, kept, [n for n in unrecorded if n in kept]


def _in_onnxruntime(model, nodes, get, opset) -> dict[str, np.ndarray] | None:
    """The outputs of the constant-only ``nodes`` as onnxruntime computes them, in one session;
    None when it cannot run them alone (an op it lacks on its own, a type it refuses). onnx's
    reference evaluator, the fallback, has differed from it (BatchNormalization in training mode)."""
    import onnxruntime as ort

    from compressor.ir.model_io import loadable_ir

    made = {o for n in nodes for o in n.output if o}
    needed = sorted({x for n in nodes for x in n.input if x and x not in made})
    outs = sorted(made)
    try:
        feeds = {x: np.asarray(get(x)) for x in needed}
        graph = onnx.helper.make_graph(
            list(nodes), "folded",
            [onnx.helper.make_tensor_value_info(x, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
             for x, v in feeds.items()],
            [onnx.helper.make_empty_tensor_value_info(o) for o in outs])
        probe = onnx.helper.make_model(graph, opset_imports=opset)
        probe.ir_version = loadable_ir(max(model.ir_version, 4))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        got = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(outs, feeds)
    except Exception:  # noqa: BLE001
        return None
    return {name: np.asarray(value) for name, value in zip(outs, got)}


def _batch_norm(node: onnx.NodeProto, args: list[np.ndarray]) -> list[np.ndarray]:
    """BatchNormalization in inference mode, as onnxruntime computes it. onnx's reference evaluator
    runs opsets 9-13 in training mode whenever ``momentum`` is set (its default always is), which
    folded wrong constants (found on opset-9 models: off by up to 10%)."""
    from compressor.ir.graph import node_attr

    if len([o for o in node.output if o]) > 1 or int(node_attr(node, "training_mode", 0)):
        raise ValueError("BatchNormalization in training mode is not folded")
    x, scale, bias, mean, var = (np.asarray(a) for a in args[:5])
    eps = float(node_attr(node, "epsilon", 1e-5))
    if int(node_attr(node, "spatial", 1)) or scale.ndim == 1:  # one value per channel (axis 1)
        shape = (1, -1) + (1,) * max(x.ndim - 2, 0)
    else:  # opsets < 9 with spatial=0: one value per element of x's [C, H, W]
        shape = (1,) + scale.shape
    scale, bias, mean, var = (a.reshape(shape) for a in (scale, bias, mean, var))
    y = (x - mean) / np.sqrt(var + np.asarray(eps, dtype=var.dtype)) * scale + bias
    return [y.astype(x.dtype)]


#: ops folded by numpy instead of onnx's reference evaluator (which gets them wrong for inference)
_NUMPY_FOLDS = {"BatchNormalization": _batch_norm}


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset) -> list:
    fn = _NUMPY_FOLDS.get(node.op_type)
    if fn is not None:
        return fn(node, [feeds[x] for x in node.input if x])
    from onnx.reference import ReferenceEvaluator

    inputs = [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    outs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o]
    m = onnx.helper.make_model(onnx.helper.make_graph([node], "fold", inputs, outs), opset_imports=opset)
    return ReferenceEvaluator(m).run(None, feeds)


