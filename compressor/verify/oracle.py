"""The masked original and the comparison against the pruned model.

The masked original is the input model with every removed channel multiplied by zero right before
each node that consumes (sums over) it. Removing channels must not change anything else, so the
pruned model has to reproduce the masked original on any input. Masking on the consumer side is
exact where producer-side masking is not (BatchNorm's beta, sigmoid(0) = 0.5 leak through).

Memory: a verification session never holds a second copy of the weights. Each model is handed to
onnxruntime as an :class:`OracleModel`, a graph without its large constants (a few KiB to
serialise) plus those constants as numpy arrays, which are fed as graph inputs: onnxruntime reads
a contiguous numpy array in place, so the session adds only its activations. The masked original
built by :func:`masked_reference` shares the original's weight arrays (those the analysis already
decoded) and differs only by its small mask constants. The two sessions run one after the other,
each created, run on every trial and released before the next exists.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.analysis.context import NormPoint
from compressor.analysis.groups import Analysis
from compressor.analysis.layout import positions
from compressor.ir.graph import drop_unused, subgraph_outer_refs
from compressor.ir.model_io import default_opset
from compressor.ir.proto import copy_fields, feedable
from compressor.ir.shapes import InputSpec, random_feeds
from compressor.verify.norms import masked_groupnorm, masked_layernorm, masked_normalization
from compressor.verify.parts import Comparison, extra_compared
from compressor.verify.upcast import has_half, upcast, widen_feeds

#: Constants of at least this many bytes are fed to onnxruntime as numpy buffers rather than
#: serialised into the session's model bytes; smaller ones (shape operands, masks) stay embedded.
FEED_MIN_BYTES = 1024

@dataclass
class VerifyResult:
    passed: bool
    max_rel_err: float
    max_abs_err: float
    tolerance: float
    trials: int
    outputs: dict[str, float]
    provider: str
    compared_in: str = "model types"  # or float32, for a float16 model (verify/upcast.py)
    reason: str | None = None  # why it failed, when not by the error (an output with nothing finite)
    second_shape: dict | None = None  # a dynamic model's run at another input shape (second_shape.py)
    #: how far a wrong cut would land: the max relative distance between the reference (the masked
    #: original) and a decoy (the original with other channels removed) on the same inputs, when
    #: ``verify`` was given one. Below the tolerance the comparison could not tell the two cuts apart
    #: (outputs that barely depend on these channels on random inputs); None: not measured
    discrimination: float | None = None
    #: outputs of discrete ops (TopK, NonMaxSuppression, ArgMax, ...) fed to the pruned model as the
    #: reference computed them, their inputs compared instead (see :func:`_pin_decisions`); None: none
    pinned: list[str] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OracleModel:
    """A model as a verification session runs it: ``model`` without its large constants, each of
    which is a graph input of that name, and ``weights``, their values (fed on every run)."""

    model: onnx.ModelProto
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def embedded(self) -> onnx.ModelProto:
        """The same model with the weights written back as initializers (one full copy)."""
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        inputs = [i for i in m.graph.input if i.name not in self.weights]
        del m.graph.input[:]
        m.graph.input.extend(inputs)
        m.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in self.weights.items())
        return m


@dataclass
class _Mask:
    """Multiply input ``input_index`` of node ``node_index`` (tensor ``tensor``) by ``value``."""

    node_index: int
    input_index: int
    tensor: str
    name: str
    out: str
    value: np.ndarray
    axis: int = 1


def _kept_vector(analysis: Analysis, x: str, axis: int, keep: dict[int, list[int]], dtype) -> np.ndarray | None:
    """1 on the kept positions of ``axis`` of ``x``, 0 on the removed ones; None when none is removed."""
    kept = positions(analysis.ctx.table, analysis.ctx.layout_map[x][axis], keep)
    if kept is None:
        return None
    vec = np.zeros(analysis.index.shape(x)[axis], dtype=dtype)
    vec[kept] = 1
    return vec


def _masks(analysis: Analysis, keep: dict[int, list[int]]) -> list[_Mask]:
    """One mask per consume point of a pruned layout: ones on kept channels, zeros elsewhere."""
    src = analysis.index.model
    nodes = analysis.index.nodes
    existing = {o for n in src.graph.node for o in n.output} | {t.name for t in src.graph.initializer}
    masks = []
    counter = 0
    for cp in analysis.consume_points:
        x = nodes[cp.node_index].input[cp.input_index]
        mask = _kept_vector(analysis, x, cp.axis, keep, _dtype_of(analysis, x))
        if mask is None:
            continue
        shape = analysis.index.shape(x)
        bshape = [1] * len(shape)
        bshape[cp.axis] = shape[cp.axis]
        counter += 1
        mask_name = f"{x}__oracle_mask{counter}"
        out_name = f"{x}__oracle_masked{counter}"
        while mask_name in existing or out_name in existing:
            counter += 1
            mask_name, out_name = f"{x}__oracle_mask{counter}", f"{x}__oracle_masked{counter}"
        masks.append(_Mask(cp.node_index, cp.input_index, x, mask_name, out_name, mask.reshape(bshape), cp.axis))
    return masks


@dataclass
class _NormMask:
    """Compute normalisation node ``node_index`` over the channels where ``mask`` is 1 only (a
    written-out norm: the region that starts there, its nodes ``point.also`` left out)."""

    node_index: int
    prefix: str
    mask: np.ndarray
    point: NormPoint | None = None
    rank: int = 0
    opset: int = 18


def _norm_masks(analysis: Analysis, keep: dict[int, list[int]]) -> list[_NormMask]:
    """One per normalisation whose statistics run over a pruned layout (see verify/norms.py)."""
    nodes = analysis.index.nodes
    out = []
    for k, npnt in enumerate(analysis.ctx.norm_points):
        x = nodes[npnt.node_index].input[0]
        mask = _kept_vector(analysis, x, npnt.axis, keep, _dtype_of(analysis, x))
        if mask is None:
            continue
        out.append(_NormMask(npnt.node_index, f"{x}__oracle_norm{k}", mask, npnt, analysis.index.rank(x) or 0,
                             default_opset(analysis.index.model)))
    return out


def _replaced(norms) -> set[int]:
    """Indices of the nodes a written-out norm's reference stands for, beyond its first."""
    return {i for nm in norms if nm.point is not None for i in nm.point.also}


def _unread(norms, nodes) -> set[str]:
    """What the nodes a written-out norm's reference stands for read (their constants: an epsilon,
    an exponent, a Reshape's target), to drop where nothing reads it any more."""
    firsts = {nm.node_index for nm in norms if nm.point is not None and nm.point.also}
    return {x for i in _replaced(norms) | firsts for x in nodes[i].input}


def pruned_norm_nodes(analysis: Analysis, keep: dict[int, list[int]]) -> list[str]:
    """Labels of the normalisations that lose channels (their statistics then cover fewer)."""
    return [analysis.index.node_label(analysis.index.nodes[nm.node_index]) for nm in _norm_masks(analysis, keep)]


def _emit(nodes_out, initializers_out, node: onnx.NodeProto, norm: _NormMask | None) -> None:
    """Append ``node``, or its masked-statistics reference when ``norm`` says so."""
    if norm is None:
        nodes_out.append(node)
        return
    pt = norm.point
    if pt is not None and pt.also:  # a written-out LayerNorm (analysis/rules/layernorm_decomposed.py) or
        # GroupNorm(1) (analysis/rules/groupnorm.py)
        new_nodes, consts = masked_normalization(node.input[0], pt.output, norm.mask, norm.prefix, axis=pt.axis,
                                                 rank=norm.rank, epsilon=pt.epsilon, opset=norm.opset,
                                                 spatial=pt.spatial, scale=pt.scale, bias=pt.bias,
                                                 label=f"the normalisation written out from '{node.name}'")
    elif node.op_type == "GroupNormalization":
        new_nodes, consts = masked_groupnorm(node, norm.mask, norm.prefix, norm.rank, norm.opset)
    else:
        new_nodes, consts = masked_layernorm(node, norm.mask, norm.prefix)
    initializers_out.extend(consts)
    nodes_out.extend(new_nodes)


def masked_original(analysis: Analysis, keep: dict[int, list[int]]) -> onnx.ModelProto:
    """The input model with removed channels zeroed at every consumer (a full copy, weights included).

    :func:`masked_reference` is the same model for :func:`verify` without copying the weights."""
    src = analysis.index.model
    model = onnx.ModelProto()
    model.CopyFrom(src)
    del model.graph.value_info[:]
    masks = _masks(analysis, keep)
    norms = {nm.node_index: nm for nm in _norm_masks(analysis, keep)}
    if not masks and not norms:
        return model
    nodes = list(model.graph.node)
    inserts: dict[int, list[onnx.NodeProto]] = {}
    for mk in masks:
        model.graph.initializer.append(numpy_helper.from_array(mk.value, mk.name))
        inserts.setdefault(mk.node_index, []).append(helper.make_node("Mul", [mk.tensor, mk.name], [mk.out]))
        nodes[mk.node_index].input[mk.input_index] = mk.out
    del model.graph.node[:]
    skip = _replaced(norms.values())
    for i, node in enumerate(nodes):
        if i in skip:
            continue
        model.graph.node.extend(inserts.get(i, []))
        _emit(model.graph.node, model.graph.initializer, node, norms.get(i))
    drop_unused(model, only=_unread(norms.values(), nodes))  # the replaced pattern's epsilon, exponent
    return model


def input_run_error(analysis: Analysis, spec: InputSpec) -> str | None:
    """Why onnxruntime cannot run the analysed (unpruned) model on a random input, or None when it
    can. Asked when a proof fails to run: a model onnxruntime does not load (an opset newer than
    it knows, a custom op), or that fails on inputs of its declared shapes, is bad input, not a
    fault of the pruning."""
    try:
        _run(oracle_model(analysis.index.model, values=analysis.index.const), None, [random_feeds(spec, seed=0)])
    except Exception as exc:  # onnxruntime raises its own exception types
        return ort_first_line(exc)
    return None


def decoy_keep(analysis: Analysis, keep: dict[int, list[int]]) -> dict[int, list[int]] | None:
    """The kept channels of a wrong cut, to measure what the proof can tell apart: in every group
    that loses channels, as many channels kept, taken from the removed ones first (the channels
    the plan keeps only where the removed ones are too few). None when no group loses a channel."""
    out, changed = {}, False
    for g in analysis.prunable:
        kept = keep.get(g.id)
        if kept is None or len(kept) in (0, g.size):
            continue
        removed = [c for c in range(g.size) if c not in set(kept)]
        out[g.id] = sorted((removed + list(kept))[:len(kept)])
        changed = True
    return {**keep, **out} if changed else None


def masked_reference(analysis: Analysis, keep: dict[int, list[int]]) -> OracleModel:
    """The masked original as :func:`verify` runs it: the graph of :func:`masked_original` without
    its weights, which are the analysed model's own arrays (``analysis.index.const``), not copies."""
    return oracle_model(analysis.index.model, values=analysis.index.const, masks=_masks(analysis, keep),
                        norms=_norm_masks(analysis, keep), drop_value_info=True)


@dataclass
class MaskingModel:
    """The original model with a mask *input* at every consume point any prunable group reaches:
    one session then runs the model under any set of removed channels (importance/sensitivity.py).
    ``feeds(keep)`` gives the mask inputs for ``keep`` (``{group id: kept channels}``), ones where
    nothing is removed. Statistics of LayerNorms (and GroupNorms with one group) over pruned
    channels are not masked here (the oracle's reference recomputes them; a sensitivity probe does
    not need to)."""

    oracle: OracleModel
    analysis: Analysis
    masks: list[_Mask]

    def feeds(self, keep: dict[int, list[int]]) -> dict[str, np.ndarray]:
        out = {}
        for mk in self.masks:
            vec = _kept_vector(self.analysis, mk.tensor, mk.axis, keep, mk.value.dtype)
            out[mk.name] = np.ones_like(mk.value) if vec is None else vec.reshape(mk.value.shape)
        return out


def masking_model(analysis: Analysis) -> MaskingModel:
    """See :class:`MaskingModel`. The weights are the analysed model's own arrays, as in
    :func:`masked_reference`."""
    probe = {g.id: list(range(1, g.size)) for g in analysis.prunable if g.size > 1}
    masks = _masks(analysis, probe)
    om = oracle_model(analysis.index.model, values=analysis.index.const, masks=masks, drop_value_info=True)
    names = {mk.name: mk for mk in masks}
    g = om.model.graph
    inits = [t for t in g.initializer if t.name not in names]
    del g.initializer[:]
    g.initializer.extend(inits)
    for mk in masks:
        elem = helper.np_dtype_to_tensor_dtype(mk.value.dtype)
        g.input.append(helper.make_tensor_value_info(mk.name, elem, list(mk.value.shape)))
    return MaskingModel(om, analysis, masks)


def oracle_model(model: onnx.ModelProto, *, values: Callable[[str], np.ndarray | None] | None = None,
                 masks: list[_Mask] = (), norms: list[_NormMask] = (), drop_value_info: bool = False,
                 min_bytes: int = FEED_MIN_BYTES) -> OracleModel:
    """Split ``model`` into a weightless graph and its large constants (initializers and Constant
    nodes of at least ``min_bytes`` whose element type numpy feeds as is).

    ``values(name)`` supplies a constant's array (e.g. arrays already decoded elsewhere, which are
    then shared); without it, or where it returns nothing, the tensor is decoded once here. The
    model itself is not modified; ``masks`` (from :func:`_masks`) are inserted on the way and the
    nodes named by ``norms`` (from :func:`_norm_masks`) replaced by their masked references."""
    m = onnx.ModelProto()
    copy_fields(m, model, skip={"graph"})
    g = m.graph
    copy_fields(g, model.graph, skip={"node", "initializer"} | ({"value_info"} if drop_value_info else set()))
    declared = {i.name for i in g.input}
    outputs = {o.name for o in g.output}
    weights: dict[str, np.ndarray] = {}

    def take(name: str, tensor: onnx.TensorProto) -> bool:
        """Feed ``tensor`` as input ``name`` if it is large and numpy holds it exactly."""
        if name in outputs or not feedable(tensor, min_bytes):
            return False
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        arr = values(name) if values is not None else None
        if arr is None:
            arr = numpy_helper.to_array(tensor)
        if arr.dtype != dtype or arr.shape != tuple(tensor.dims):
            return False
        weights[name] = np.ascontiguousarray(arr)
        if name not in declared:
            g.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
            declared.add(name)
        return True

    for t in model.graph.initializer:
        if not take(t.name, t):
            g.initializer.append(t)
    for mk in masks:
        g.initializer.append(numpy_helper.from_array(mk.value, mk.name))
    inserts: dict[int, list[_Mask]] = {}
    for mk in masks:
        inserts.setdefault(mk.node_index, []).append(mk)
    by_node = {nm.node_index: nm for nm in norms}
    skip = _replaced(norms)
    for i, node in enumerate(model.graph.node):
        if i in skip:
            continue
        if _is_plain_constant(node) and node.output[0] not in declared and take(node.output[0], node.attribute[0].t):
            continue
        for mk in inserts.get(i, ()):
            g.node.append(helper.make_node("Mul", [mk.tensor, mk.name], [mk.out]))
        if inserts.get(i) or i in by_node:
            node = _copy_node(node)
            for mk in inserts.get(i, ()):
                node.input[mk.input_index] = mk.out
        _emit(g.node, g.initializer, node, by_node.get(i))
    # the replaced pattern's epsilon and exponent, unless fed as weights
    drop_unused(m, only=_unread(norms, model.graph.node) - set(weights))
    return OracleModel(m, weights)


def _copy_node(node: onnx.NodeProto) -> onnx.NodeProto:
    c = onnx.NodeProto()
    c.CopyFrom(node)
    return c


def _is_plain_constant(node: onnx.NodeProto) -> bool:
    return (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1
            and len(node.attribute) == 1 and node.attribute[0].name == "value")


def _dtype_of(analysis: Analysis, name: str) -> np.dtype:
    return analysis.index.tensor_dtype(name)


def session_options():
    """onnxruntime options of a verification session: no graph rewrites (the models are run as
    written, and nothing is spent optimising a graph that runs twice), no weight prepacking (it
    would copy the weights), no spinning threads (other work shares the machine)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failing kernel raises; its log line would only repeat it on stderr
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])


def _run(om: OracleModel, names: list[str] | None, feeds: list[dict[str, np.ndarray]],
         extra: list[Callable[[], dict[str, np.ndarray]]] = (), keep_error: bool = False):
    """Create a session for ``om``, run it on every feed, release it. Returns (names, outputs per
    feed, provider, second): ``second`` is (k, outputs) for the first of the ``extra`` feeds the
    model runs on (other shapes of a dynamic model; their failures are not errors), or None;
    with ``keep_error``, (k, the exception) when the last one failed.
    Should onnxruntime refuse a weight as a graph input (a kernel that insists on a constant),
    the model runs once more with its weights embedded: slower, same numbers."""
    try:
        sess = _session(om.model)
        names = names or [o.name for o in sess.get_outputs()]
        outs = [sess.run(names, {**f, **om.weights}) for f in feeds]
        fed = om.weights
    except Exception:
        if not om.weights:
            raise
        sess = _session(om.embedded())
        names = names or [o.name for o in sess.get_outputs()]
        outs = [sess.run(names, f) for f in feeds]
        fed = {}
    second = None
    for k, make in enumerate(extra):  # made one at a time: usually the first is the one run
        try:
            second = (k, sess.run(names, {**make(), **fed}))
        except Exception as exc:  # noqa: PERF203 - the model may not run at this shape
            second = (k, exc) if keep_error else None
            continue
        break
    provider = sess.get_providers()[0]
    del sess
    return names, outs, provider, second


def _output_error(x: np.ndarray, y: np.ndarray, floor: float = 0.0) -> tuple[float, float]:
    """(relative, absolute) error of ``y`` against the reference ``x``, same shape; relative to
    max|x|, or to ``floor`` where that is larger (probabilities, verify/parts.py).

    Non-finite values must sit in the same places with the same value in both (NaN where NaN,
    +inf where +inf); otherwise the error is infinite. The error is measured on the finite
    entries (an output with none, equal value for value, has error 0).
    (A plain max would let NaN through: ``max(0.0, nan)`` is 0.0.)"""
    if not x.size:
        return 0.0, 0.0
    fx, fy = np.isfinite(x), np.isfinite(y)
    if not (fx == fy).all():
        return float("inf"), float("inf")
    if not fx.all():
        odd = ~fx
        same = (np.isnan(x[odd]) & np.isnan(y[odd])) | (x[odd] == y[odd])
        if not same.all():
            return float("inf"), float("inf")
        if not fx.any():  # nothing finite, and every value the same in both: equal
            return 0.0, 0.0
        x, y = x[fx], y[fx]
    diff = float(np.max(np.abs(x - y)))
    scale = max(float(np.max(np.abs(x))), floor)
    return (diff / max(scale, 1e-12) if diff else 0.0), diff


#: Ops whose outputs are decisions (indices, a selection, a comparison, a rounding): a difference of
#: one ulp in their input can reorder tied candidates or flip a near-tie (a box's FPN level is
#: floor(log2(...)) of its size), and everything after them then differs.
DISCRETE_OPS = frozenset({"TopK", "NonMaxSuppression", "ArgMax", "ArgMin", "NonZero", "Unique", "Floor", "Ceil",
                          "Round", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"})
#: ... and the control flow that may hold them (torchvision's batched NMS sits in an ``If``).
PINNED_OPS = DISCRETE_OPS | {"If"}


@dataclass
class _Pins:
    """Where the proof feeds the reference's decisions: the discrete nodes' outputs (fed to the
    models compared with the reference) and inputs (compared, like graph outputs)."""

    decisions: list[str]
    checkpoints: list[str]


def _pins(ref: onnx.ModelProto, new: onnx.ModelProto, uncut: Callable[[str], bool]) -> _Pins | None:
    """The discrete nodes of the reference's main graph (an ``If`` counts as one: it may hold a
    non-maximum suppression) that the pruned model has too, none of whose inputs and outputs lose
    channels (``uncut``), or None when there are none."""
    produced = {o for n in new.graph.node for o in n.output if o} | {i.name for i in new.graph.input}
    new_nodes = {tuple(n.output) for n in new.graph.node if n.op_type in PINNED_OPS}
    outputs = {o.name for o in ref.graph.output}
    inits = {t.name for t in ref.graph.initializer}
    decisions, checkpoints = [], []
    for node in ref.graph.node:
        if node.op_type not in PINNED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        ins = [x for x in node.input if x and x not in inits]
        ins += sorted(subgraph_outer_refs(node) - inits - set(ins))
        if (tuple(node.output) not in new_nodes or not all(x in produced for x in ins)
                or not all(uncut(x) for x in ins + [o for o in node.output if o])):
            continue
        decisions += [o for o in node.output if o and o not in decisions]
        checkpoints += [x for x in ins if x not in checkpoints and x not in outputs]
    return _Pins(decisions, checkpoints) if decisions else None


def _with_outputs(om: OracleModel, names: list[str]) -> OracleModel:
    """``om`` with ``names`` added as graph outputs (types left to onnxruntime)."""
    m = onnx.ModelProto()
    m.CopyFrom(om.model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    return OracleModel(m, om.weights)


def _pinned(om: OracleModel, pins: _Pins, examples: dict[str, np.ndarray]) -> OracleModel:
    """``om`` with its discrete nodes removed and their outputs made graph inputs (typed like the
    reference's ``examples``, every length dynamic), and their inputs added as graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(om.model)
    g = m.graph
    fed = set(pins.decisions)
    kept = [n for n in g.node if not (n.op_type in PINNED_OPS and set(n.output) & fed)]
    del g.node[:]
    g.node.extend(kept)
    for d in pins.decisions:
        a = np.asarray(examples[d])
        g.input.append(helper.make_tensor_value_info(d, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                     [f"{d}_dim{k}" for k in range(a.ndim)]))
    outs = [o for o in g.output if o.name not in fed]  # an output that is a decision is fed as it is
    del g.output[:]
    g.output.extend(outs)
    g.output.extend(helper.make_empty_tensor_value_info(c) for c in pins.checkpoints)
    g.output.extend(helper.make_empty_tensor_value_info(d) for d in pins.decisions)  # as fed
    return OracleModel(m, om.weights)


def _pin_decisions(ref: OracleModel, new: OracleModel, uncut: Callable[[str], bool] | None
                   ) -> tuple[OracleModel, _Pins | None]:
    """The reference with the discrete nodes' inputs and outputs as extra outputs, and the pins
    (none without ``uncut``: which tensors keep every channel is the plan's to say)."""
    pins = _pins(ref.model, new.model, uncut) if uncut is not None else None
    if pins is None:
        return ref, None
    return _with_outputs(ref, pins.checkpoints + pins.decisions), pins


def verify(reference: onnx.ModelProto | OracleModel, pruned: onnx.ModelProto | OracleModel, spec: InputSpec, *,
           tolerance: float = 1e-4, trials: int = 2, seed: int = 0,
           alternates: list[InputSpec] = (), decoy: onnx.ModelProto | OracleModel | None = None,
           uncut: Callable[[str], bool] | None = None) -> VerifyResult:
    """Run both models on the same random inputs; relative error = max|a-b| / max|a| per output (over
    its finite entries: NaN/inf must match exactly, see :func:`_output_error`).

    The reference runs first on every trial and its session is released before the pruned
    model's session is created; only the outputs are kept in between.

    ``alternates``: other input shapes of a model with dynamic dims (verify/second_shape.py); the
    first the reference runs at is run by the pruned model too, and compared the same way.

    ``decoy``: the original masked as a wrong cut would (other channels removed); run on the same
    inputs, its distance to the reference is the result's ``discrimination``.

    With ``uncut`` (tensor name -> does it keep all its channels), discrete ops (``DISCRETE_OPS``:
    TopK, NonMaxSuppression, ArgMax, comparisons, rounding; and ``If``) whose inputs and outputs
    keep every channel are pinned: the pruned model (and the decoy) is run with each one's outputs
    fed as the reference computed them, and each one's inputs are compared like outputs. A detector's top-k over scores with ties (or
    near-ties a float rounding flips) otherwise reorders its candidates in one model and not the
    other, and every box after it differs while the scores agree to 1e-7: the proof failed or
    passed by chance. Pinned, what follows a decision is compared on the same decision."""
    feeds = [random_feeds(spec, seed=seed + t) for t in range(trials)]
    alt_feeds = [lambda a=a: random_feeds(a, seed=seed + trials) for a in alternates]
    ref = reference if isinstance(reference, OracleModel) else oracle_model(reference)
    new = pruned if isinstance(pruned, OracleModel) else oracle_model(pruned)
    orig = decoy if isinstance(decoy, OracleModel) or decoy is None else oracle_model(decoy)
    del reference, pruned, decoy
    ref, pins = _pin_decisions(ref, new, uncut)
    scales = Comparison()
    if uncut is not None:  # concatenated outputs compared part by part, probabilities on their range
        decisions = set(pins.decisions) if pins is not None else set()
        scales = extra_compared(ref.model, new.model,
                                [o.name for o in ref.model.graph.output if o.name not in decisions], uncut)
        if scales.extra:
            ref, new = _with_outputs(ref, scales.extra), _with_outputs(new, scales.extra)
            orig = _with_outputs(orig, scales.extra) if orig is not None else None
    compared_in = "model types"
    if has_half(ref.model, ref.weights) or has_half(new.model, new.weights):
        # float16 rounding differs between two correct prunings by an ulp (5e-4): prove in float32
        try:
            wide_ref, wide_new = OracleModel(*upcast(ref.model, ref.weights)), OracleModel(*upcast(new.model, new.weights))
            names, ref_outs, _, ref_second = _run(wide_ref, None, widen_feeds(feeds), _widened(alt_feeds))
        except Exception:  # an op with no float32 kernel, say: compare in the model's own types
            pass
        else:
            ref, new, compared_in = wide_ref, wide_new, "float32 (float16/bfloat16 widened)"
            feeds, alt_feeds = widen_feeds(feeds), _widened(alt_feeds)
            orig = OracleModel(*upcast(orig.model, orig.weights)) if orig is not None else None
    if compared_in == "model types":
        try:
            names, ref_outs, _, ref_second = _run(ref, None, feeds, alt_feeds)
        except Exception as exc:
            if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
                # the model itself cannot run here (a float64 Conv, an op the CPU provider lacks)
                from compressor.errors import ModelError

                raise ModelError(f"onnxruntime's CPU provider cannot run this model (no kernel for one of its "
                                 f"ops at its types, e.g. a float64 Conv), so no pruning of it can be verified: "
                                 f"{ort_first_line(exc)}") from None
            raise
    del ref
    new_feeds, new_alt = feeds, [alt_feeds[ref_second[0]]] if ref_second else []
    unpinned = new
    if pins is not None:  # the others run on the reference's decisions (see the docstring)
        at = {n: k for k, n in enumerate(names)}

        def decided(outs) -> dict[str, np.ndarray]:
            return {d: outs[at[d]] for d in pins.decisions}

        new = _pinned(new, pins, decided(ref_outs[0]))
        orig = _pinned(orig, pins, decided(ref_outs[0])) if orig is not None else None
        new_feeds = [{**f, **decided(outs)} for f, outs in zip(feeds, ref_outs)]
        if ref_second is not None and not isinstance(ref_second[1], Exception):
            make, alt_outs = alt_feeds[ref_second[0]], ref_second[1]
            new_alt = [lambda make=make, alt_outs=alt_outs: {**make(), **decided(alt_outs)}]
    discrimination = _distance(orig, names, new_feeds, ref_outs, scales) if orig is not None else None
    del orig
    try:
        _, new_outs, provider, new_second = _run(new, names, new_feeds, new_alt, keep_error=True)
    except Exception:  # noqa: BLE001 - the pinned graph does not run: compare unpinned, as always
        if pins is None:
            raise
        _, new_outs, provider, new_second = _run(_with_outputs(unpinned, pins.checkpoints + pins.decisions), names,
                                                 feeds, [alt_feeds[ref_second[0]]] if ref_second else [],
                                                 keep_error=True)
        pins = None
    del new, unpinned
    worst: dict[str, float] = {n: 0.0 for n in names}
    max_abs = 0.0
    for a, b in zip(ref_outs, new_outs):
        floors = scales.floors_for(names, a)
        for n, x, y in zip(names, a, b):
            x = np.asarray(x, dtype=np.float64)
            y = np.asarray(y, dtype=np.float64)
            if x.shape != y.shape:
                worst[n] = float("inf")
                max_abs = float("inf")
                continue
            rel, diff = _output_error(x, y, floors.get(n, 0.0))
            worst[n] = max(worst[n], rel)
            max_abs = max(max_abs, diff)
    max_rel = max(worst.values()) if worst else 0.0
    # an output that is NaN/inf everywhere on every trial compares nothing: the proof would be void
    void = [n for k, n in enumerate(names) if _float_output(ref_outs[0][k])
            and not any(np.isfinite(np.asarray(a[k], dtype=np.float64)).any() for a in ref_outs)]
    reason = None
    if void:
        reason = (f"output(s) {', '.join(repr(n) for n in void[:3])} are NaN or infinite on every random "
                  f"input, so nothing of them could be compared")
    elif any(0 in shape for shape in spec.shapes.values()) and all(np.asarray(o).size == 0 for o in ref_outs[0]):
        # an input declared with a 0 dim: empty tensors throughout (a detector's output that is
        # empty on random inputs, with non-empty inputs, is a real result and compares as one)
        void, reason = list(names), ("the model's inputs have a dimension 0, so every output is empty and nothing "
                                     "could be compared: give --input-shape with non-zero dims")
    second = None
    if alternates:
        second, why = _second_shape(alternates, ref_second, new_second, names, tolerance, scales)
        reason = reason or why
    return VerifyResult(passed=bool(max_rel <= tolerance) and not void and reason is None, max_rel_err=max_rel,
                        max_abs_err=max_abs, tolerance=tolerance, trials=trials, outputs=worst, provider=provider,
                        compared_in=compared_in, reason=reason, second_shape=second, discrimination=discrimination,
                        pinned=list(pins.decisions) if pins is not None else None)


def _distance(orig: OracleModel, names: list[str], feeds, ref_outs, scales: Comparison) -> float | None:
    """Max relative distance between ``orig``'s outputs and the reference's on the same inputs (None
    when it does not run: the proof itself does not depend on it)."""
    try:
        _, outs, _, _ = _run(orig, names, feeds)
    except Exception:  # noqa: BLE001 - a measurement beside the proof, never a reason to fail it
        return None
    worst = 0.0
    for a, b in zip(ref_outs, outs):
        floors = scales.floors_for(names, a)
        for n, x, y in zip(names, a, b):
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            if x.shape != y.shape:
                return None
            if x.dtype.kind == "f" or y.dtype.kind == "f":
                worst = max(worst, _output_error(x, y, floors.get(n, 0.0))[0])
            elif not np.array_equal(x, y):
                return float("inf")
    return worst


def _widened(makers: list[Callable[[], dict]]) -> list[Callable[[], dict]]:
    return [lambda make=make: widen_feeds([make()])[0] for make in makers]


def _second_shape(alternates, ref_second, new_second, names, tolerance, scales) -> tuple[dict, str | None]:
    """The report of the second-shape run and, when it failed, why."""
    if ref_second is None:
        return {"skipped": "the original model runs at none of the other shapes tried",
                "tried": [{k: list(v) for k, v in a.shapes.items()} for a in alternates]}, None
    k, ref_outs = ref_second
    shapes = {n: list(v) for n, v in alternates[k].shapes.items()}
    where = ", ".join(f"{n} {'x'.join(map(str, v))}" for n, v in shapes.items())
    if new_second is None or isinstance(new_second[1], Exception):
        err = ort_first_line(new_second[1]) if new_second else "it did not run"
        return ({"shapes": shapes, "passed": False, "error": err},
                f"at a second input shape ({where}) the original runs but the pruned model fails: {err}")
    worst = 0.0
    floors = scales.floors_for(names, ref_outs)
    for n, x, y in zip(names, ref_outs, new_second[1]):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            return ({"shapes": shapes, "passed": False, "error": f"output {n!r} is {list(y.shape)}, not {list(x.shape)}"},
                    f"at a second input shape ({where}) the pruned model's output {n!r} has shape {list(y.shape)}, "
                    f"the original's {list(x.shape)}: it is fixed to the verification shape")
        worst = max(worst, _output_error(x, y, floors.get(n, 0.0))[0])
    ok = worst <= tolerance
    return ({"shapes": shapes, "passed": ok, "max_rel_err": worst},
            None if ok else f"at a second input shape ({where}) the max relative error is {worst:.3g} > {tolerance:g}")


def _float_output(x) -> bool:
    a = np.asarray(x)
    return a.dtype.kind == "f" and a.size > 0


def ort_first_line(exc: BaseException, limit: int = 600) -> str:
    """The first line of an onnxruntime error, cut to ``limit`` characters (they can run to pages)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    # drop the C++ source location and signature onnxruntime puts before its message
    first = re.sub(r"/onnxruntime_src/\S+:\d+ (?:[^()]*\((?:[^()]|\([^()]*\))*\) )?", "", first)
    first = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first)
    return first if len(first) <= limit else first[:limit] + " ..."
