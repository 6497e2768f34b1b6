"""Fold per-channel gates and constant channels into neighbouring layers, then remove the dead channels.

Gate folding (:func:`fold_gates`): ``Mul(y, g)`` with a constant ``g`` that scales channels of ``y``
only (shape ``[C,1,1]``, ``[1,C,1,1]``, ``[1,C]``...) is folded into the layer that produced ``y``:
a Conv's weight and bias, a BatchNormalization's scale and bias, a Gemm's weight columns and bias.
Through a Relu/LeakyRelu/PRelu the fold is exact only for ``g >= 0`` (``relu(x) g = relu(g x)``).
A channel whose gate is 0 then outputs a constant, which the next step removes.

Constant-channel folding (:func:`fold_constant_channels`): a channel whose producer filters are all
zero (or that a zero BN scale or zero per-channel Mul zeroes) outputs a constant ``a`` after its
per-channel ops. The value is read with onnxruntime at every layer that contracts the channel, on
random inputs (at a second input shape too when the model has dynamic dims: a padded channel
averaged by a global pool is constant at each size but not the same constant), and must be the same
at every position, for every input and at both shapes. It is folded into the
next layer's bias where that is exact:

- Conv without padding (any kernel, stride, dilation, groups): ``b[o] += a * sum_k W[o, c, k]``;
- Gemm (after global pooling/flatten): ``C += alpha * a @ B[c-block]``;
- MatMul with a constant right operand: an ``Add`` of ``a @ B[c-block]`` is inserted after it;
- a constant 0 needs no fold anywhere.

A padded kxk Conv sees the constant only away from the border, a ConvTranspose spreads it unevenly
and a reduction has no bias: there the channel is left in place and the report says why. The
channels that were folded are then removed by the normal surgery, which also slices the learned
importances (``compressor.learned``) to the channels left (importance/learned.py:carry_learned).

Proof: the result must reproduce the original (unmasked) model within relative error 1e-5 on random
inputs; otherwise :class:`compressor.errors.VerificationError` is raised.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from compressor.analysis.context import PARAM
from compressor.analysis.groups import Analysis, Group
from compressor.importance.learned import carried_summary
from compressor.ir.graph import GraphIndex, drop_unused
from compressor.ir.shapes import InputSpec, random_feeds
from compressor.metrics import count
from compressor.verify.second_shape import alternate_specs
from compressor.verify.upcast import has_half
from compressor.surgery._exact import (
    EXACT_TOLERANCE, ConstEditor, base_report, channel_slice, close_report, consume_points_of, copy_model,
    finalize, index_along, is_bias, load, prove, reanalyze, remove_channels,
)

#: Activations f with f(g x) = g f(x) for every g >= 0 (a non-negative gate may move before them).
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "Identity")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


# ============================================================================ gate folding
class _Graph:
    """Producer and use counts of a model being edited (names stay valid: edits only rename a node's
    output to the removed Mul's output)."""

    def __init__(self, model: onnx.ModelProto):
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.uses: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        self.outputs = {o.name for o in model.graph.output}

    def sole_use(self, name: str) -> bool:
        return self.uses.get(name, 0) == 1 and name not in self.outputs


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({node.output[0] if node.output else '?'})"


def _scale_producer(node: onnx.NodeProto, gate: np.ndarray, editor: ConstEditor) -> str | None:
    """Multiply output channel c of ``node`` by gate[c] in its constants; None or why not."""
    def const(k):
        if k < len(node.input) and node.input[k] and (node.input[k] in editor.inits or node.input[k] in editor.const_nodes):
            return editor.get(node.input[k])
        return None

    C = gate.shape[0]
    shared = [x for x in node.input[1:3] if x and editor.uses.get(x, 0) > 1]
    if shared:  # folding would give this node a scaled copy of a constant other nodes read too
        return f"'{shared[0]}' is shared with another node: folding would copy it"
    if node.op_type == "Conv":
        w = const(1)
        if w is None or (len(node.input) > 2 and node.input[2] and const(2) is None):
            return "the Conv has run-time weights"
        if w.shape[0] != C:
            return f"gate has {C} channels, the Conv {w.shape[0]}"
        editor.set_for_node(node, 1, (w * gate.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype))
        b = const(2)
        if b is not None:
            editor.set_for_node(node, 2, (b * gate).astype(b.dtype))
        return None
    if node.op_type == "BatchNormalization":
        if len([o for o in node.output if o]) != 1:
            return "BatchNormalization in training mode"
        s, b = const(1), const(2)
        if s is None or b is None:
            return "BatchNormalization has run-time parameters"
        editor.set_for_node(node, 1, (s * gate).astype(s.dtype))
        editor.set_for_node(node, 2, (b * gate).astype(b.dtype))
        return None
    if node.op_type == "Gemm":
        w = const(1)
        if w is None:
            return "the Gemm has a run-time weight"
        tb = int(_attr(node, "transB", 0))
        if w.shape[0 if tb else 1] != C:
            return f"gate has {C} channels, the Gemm {w.shape[0 if tb else 1]}"
        scaled = w * (gate[:, None] if tb else gate[None, :])
        if len(node.input) > 2 and node.input[2]:
            c = const(2)
            if c is None:
                return "the Gemm adds a run-time bias"
            beta = float(_attr(node, "beta", 1.0))
            eff = np.broadcast_to(beta * c, np.broadcast_shapes(c.shape, (C,))) * gate
            editor.set_for_node(node, 2, eff.astype(c.dtype))
            _set_attr(node, "beta", 1.0)
        editor.set_for_node(node, 1, scaled.astype(w.dtype))
        return None
    return f"{node.op_type} cannot absorb a per-channel scale"


def _channel_gate(g: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray | None:
    """The per-channel vector of a constant that scales axis 1 of a tensor of ``shape`` only."""
    if shape is None or g.ndim > len(shape) or len(shape) < 2 or g.dtype.kind != "f":
        return None
    gb = g.reshape((1,) * (len(shape) - g.ndim) + g.shape)
    if any(d != 1 for i, d in enumerate(gb.shape) if i != 1) or gb.shape[1] not in (1, shape[1]):
        return None
    return np.broadcast_to(gb.reshape(-1), (shape[1],)).astype(np.float64)


def _fold_gates_into(work: onnx.ModelProto, analysis: Analysis) -> list[dict]:
    """Fold every foldable gate Mul of ``work`` (edited in place); one entry per gate Mul found."""
    editor = ConstEditor(work)
    graph = _Graph(work)
    entries = []
    removed: set[int] = set()
    for node in list(work.graph.node):
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        consts = [k for k in (0, 1) if node.input[k] in editor.inits or node.input[k] in editor.const_nodes]
        if len(consts) != 1:
            continue
        x = node.input[1 - consts[0]]
        gate = _channel_gate(editor.get(node.input[consts[0]]), analysis.index.shape(x))
        if gate is None or analysis.index.shape(node.output[0]) != analysis.index.shape(x):
            continue
        entry = {"node": _label(node), "channels": int(gate.shape[0]),
                 "zero_channels": [int(i) for i in np.flatnonzero(gate == 0)]}
        entries.append(entry)
        prod = graph.producer.get(x)
        if prod is None or not graph.sole_use(x):
            entry.update(status="skipped", reason="the gated tensor has other uses or no producing layer")
            continue
        target, via = prod, None
        if prod.op_type in HOMOGENEOUS:
            if (gate < 0).any():
                entry.update(status="skipped", reason=f"negative gate after {prod.op_type}: not exact")
                continue
            inner = graph.producer.get(prod.input[0])
            if inner is None or not graph.sole_use(prod.input[0]):
                entry.update(status="skipped", reason=f"the {prod.op_type} input has other uses")
                continue
            target, via = inner, prod
        why = _scale_producer(target, gate.astype(np.float32), editor)
        if why is not None:
            entry.update(status="skipped", reason=why)
            continue
        prod.output[0] = node.output[0]  # the gated tensor now comes straight from its producer
        removed.add(id(node))
        entry.update(status="folded", into=_label(target) + (f" (through {_label(via)})" if via else ""))
    if removed:
        keep = [n for n in work.graph.node if id(n) not in removed]
        del work.graph.node[:]
        work.graph.node.extend(keep)
    return entries


def fold_gates(model, input_shapes=None, *, tolerance: float = EXACT_TOLERANCE) -> tuple[onnx.ModelProto, dict]:
    """Fold per-channel constant gates (Mul) into the producing Conv/BN/Gemm; no channel is removed
    (zero-gate channels become constant: :func:`fold_constant_channels` removes them)."""
    loaded = load(model, input_shapes)
    report = base_report("fold_gates", loaded)
    work = copy_model(loaded.original)
    report["gates"] = _fold_gates_into(work, loaded.analysis)
    drop_unused(work)
    macs, params, _ = count(GraphIndex(work, loaded.spec))
    close_report(report, macs, params)
    work = finalize(work)
    prove(loaded.original, work, loaded.spec, "gate-folded model", report, tolerance=tolerance,
          rounded_half=has_half(work))  # a folded gate scales weights: computed values
    return work, report


# ============================================================================ constant channels
def _zero_slices(arr: np.ndarray, member, c: int, zero_tol: float) -> bool:
    s = channel_slice(arr, member, c)
    if zero_tol <= 0:
        return not s.any()
    return float(np.max(np.abs(s), initial=0.0)) <= zero_tol * max(float(np.max(np.abs(arr), initial=0.0)), 1e-30)


def _candidates(analysis: Analysis, group: Group, zero_tol: float) -> dict[int, tuple[str, list]]:
    """Channels that are structurally constant: (why, members whose slices are (near) zero)."""
    weights = [m for m in group.members if m.role == "producer" and not is_bias(m)]
    scales = [m for m in group.members if m.role == PARAM and (
        (m.op_type == "BatchNormalization" and m.slot == 1) or m.op_type == "Mul")]
    out = {}
    for c in range(group.size):
        if weights and all(_zero_slices(analysis.index.const(m.tensor), m, c, zero_tol) for m in weights):
            out[c] = ("zero filter", weights)
            continue
        zs = [m for m in scales if _zero_slices(analysis.index.const(m.tensor), m, c, zero_tol)]
        if zs:
            out[c] = (f"zero {zs[0].op_type} scale '{zs[0].tensor}'", zs)
    return out


def _probe(model: onnx.ModelProto, spec: InputSpec, names: list[str], trials: int, seed: int,
           alternates: list[InputSpec] = ()) -> dict[str, list]:
    """The values of ``names`` on ``trials`` random inputs at ``spec``, and as many more at the first
    of ``alternates`` (second input shapes of a dynamic model) that the model runs at: a channel that
    is constant at one spatial size can take another constant at another (a padded border averaged
    by a global pool), and a fold must hold at every size."""
    import onnxruntime as ort

    from compressor.verify.oracle import session_options

    probe = copy_model(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    # run as written, like the proof: onnxruntime's rewrites of a graph whose inner tensors are
    # outputs can differ from the model's own (a Pad fused into a pool it then refuses to load)
    sess = ort.InferenceSession(probe.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    out: dict[str, list] = {n: [] for n in names}
    for t in range(trials):
        for n, v in zip(names, sess.run(names, random_feeds(spec, seed=seed + 1000 + t))):
            out[n].append(np.asarray(v, dtype=np.float64))
    for alt in alternates:
        try:
            more = [sess.run(names, random_feeds(alt, seed=seed + 2000 + t)) for t in range(trials)]
        except Exception:  # the model does not run at this shape: try the next one
            continue
        for vals in more:
            for n, v in zip(names, vals):
                out[n].append(np.asarray(v, dtype=np.float64))
        break
    return out


def _constant_values(runs: list[np.ndarray], axis: int, positions: list[int]) -> np.ndarray | None:
    """Value of each position along ``axis`` if it is the same everywhere else in every run."""
    vals = []
    for p in positions:
        try:
            v = np.concatenate([np.take(r, p, axis=axis).reshape(-1) for r in runs])
        except (IndexError, ValueError):  # the channel axis is shorter at another input shape
            return None
        a = float(v[0])
        if float(np.max(np.abs(v - a), initial=0.0)) > 1e-6 * max(abs(a), 1e-30):
            return None
        vals.append(a)
    return np.asarray(vals)


def _unpadded(node: onnx.NodeProto, w_shape) -> bool:
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return True
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return all(k == 1 for k in w_shape[2:])
    return not any(_attr(node, "pads", []) or [])


def _fold_delta(node: onnx.NodeProto, input_index: int, axis: int, positions: list[int], values: np.ndarray,
                editor: ConstEditor) -> tuple[np.ndarray | None, str | None]:
    """What the constant inputs add to the node's output channels (a bias delta), or why not exact."""
    label = _label(node)
    op = node.op_type
    if op == "Conv" and input_index == 0 and axis == 1 and node.input[1] in editor.inits:
        w = editor.get(node.input[1]).astype(np.float64)
        if not _unpadded(node, w.shape):
            k = "x".join(map(str, w.shape[2:]))
            return None, f"padded {k} Conv '{label}' sees the constant only away from the border"
        g = int(_attr(node, "group", 1))
        cpg, opg = w.shape[1], w.shape[0] // g
        taps = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2)
        delta = np.zeros(w.shape[0])
        for p, a in zip(positions, values):
            k = p // cpg
            delta[k * opg:(k + 1) * opg] += a * taps[k * opg:(k + 1) * opg, p - k * cpg]
        return delta, None
    if op == "Gemm" and input_index == 0 and node.input[1] in editor.inits:
        w = editor.get(node.input[1]).astype(np.float64)
        tb = int(_attr(node, "transB", 0))
        rows = w.T if tb else w  # [K, N]
        return float(_attr(node, "alpha", 1.0)) * (values @ rows[positions]), None
    if op == "MatMul" and input_index == 0 and node.input[1] in editor.inits:
        w = editor.get(node.input[1]).astype(np.float64)
        if w.ndim == 2:
            return values @ w[positions], None
    return None, f"{op} '{label}' cannot take a constant input channel into a bias exactly"


def _apply_delta(node: onnx.NodeProto, delta: np.ndarray, editor: ConstEditor, inserts: dict) -> None:
    dtype = editor.get(node.input[1]).dtype
    if node.op_type == "Conv":
        has = len(node.input) > 2 and node.input[2]
        b = editor.get(node.input[2]).astype(np.float64) if has else np.zeros(delta.shape[0])
        editor.set_for_node(node, 2, (b + delta).astype(dtype))
    elif node.op_type == "Gemm":
        n = delta.shape[0]
        if len(node.input) > 2 and node.input[2]:
            c = editor.get(node.input[2]).astype(np.float64) * float(_attr(node, "beta", 1.0))
            eff = np.broadcast_to(c, np.broadcast_shapes(c.shape, (n,))) + delta
        else:
            eff = delta
        editor.set_for_node(node, 2, eff.astype(dtype))
        _set_attr(node, "beta", 1.0)
    else:  # MatMul: y = x @ W + delta
        out = node.output[0]
        mid = editor.fresh(out + "_nobias")
        node.output[0] = mid
        bias = editor.add(out + "_bias", delta.astype(dtype))
        inserts[id(node)] = helper.make_node("Add", [mid, bias], [out], name=editor.fresh(_label(node) + "_bias"))


def _fold_constants_in(work: onnx.ModelProto, analysis: Analysis, spec: InputSpec, zero_tol: float,
                       trials: int, seed: int, report: dict) -> dict[int, list[int]]:
    """Fold constant channels of ``work`` into biases (in place); the channels to remove per group."""
    editor = ConstEditor(work)
    found = {g.id: _candidates(analysis, g, zero_tol) for g in analysis.prunable}
    found = {gid: c for gid, c in found.items() if c}
    if not found:
        return {}
    # near-zero slices (zero_tol > 0) become exact zeros first; the final proof covers the change
    edited: dict[str, np.ndarray] = {}
    for gid, cands in found.items():
        for c, (_, members) in cands.items():
            for m in members:
                arr = edited.setdefault(m.tensor, np.array(editor.get(m.tensor), copy=True))
                arr[index_along(m, c, arr.ndim)] = 0
    for name, arr in edited.items():
        editor.set(name, arr)
    points = {gid: consume_points_of(analysis, gid) for gid in found}
    names = sorted({node.input[cp.input_index] for pts in points.values() for cp, node, _ in pts})
    runs = _probe(work, spec, names, trials, seed, alternate_specs(work, spec)) if names else {}

    nodes = analysis.index.nodes
    deltas: dict[int, np.ndarray] = {}
    remove: dict[int, list[int]] = {}
    for gid, cands in sorted(found.items()):
        group = analysis.group(gid)
        entry = {"group": gid, "size": group.size, "origin": group.origin, "folded": [], "left": [], "values": {}}
        report["groups"].append(entry)
        folded_here: list[tuple[int, dict[int, np.ndarray]]] = []
        for c, (why, _) in sorted(cands.items()):
            per_node: dict[int, np.ndarray] = {}
            reason = None
            first = None
            for cp, node, segs in points[gid]:
                pos = [off + c * inner + k for off, inner in segs for k in range(inner)]
                vals = _constant_values(runs[node.input[cp.input_index]], cp.axis, pos)
                if vals is None:
                    reason = f"{why}, but the channel is not constant at '{_label(node)}'"
                    break
                first = float(vals[0]) if first is None else first
                if not vals.any():
                    continue  # a constant 0 contributes nothing anywhere
                delta, reason = _fold_delta(node, cp.input_index, cp.axis, pos, vals, editor)
                if reason is not None:
                    break
                per_node[cp.node_index] = per_node.get(cp.node_index, 0) + delta
            if reason is not None:
                entry["left"].append({"channel": c, "reason": reason})
                continue
            entry["values"][c] = first if first is not None else 0.0
            folded_here.append((c, per_node))
        if folded_here and len(folded_here) == group.size:
            c, _ = folded_here.pop()
            entry["left"].append({"channel": c, "reason": "a group keeps at least one channel"})
        for c, per_node in folded_here:
            for k, d in per_node.items():
                deltas[k] = deltas.get(k, 0) + d
        entry["folded"] = [c for c, _ in folded_here]
        entry["status"] = "folded" if folded_here else "left"
        if folded_here:
            remove[gid] = entry["folded"]
    inserts: dict[int, onnx.NodeProto] = {}
    work_nodes = list(work.graph.node)
    for k, d in deltas.items():  # work's nodes are analysis' nodes in the same order
        assert work_nodes[k].name == nodes[k].name and work_nodes[k].op_type == nodes[k].op_type
        _apply_delta(work_nodes[k], np.asarray(d, dtype=np.float64), editor, inserts)
    if inserts:
        del work.graph.node[:]
        for n in work_nodes:
            work.graph.node.append(n)
            if id(n) in inserts:
                work.graph.node.append(inserts[id(n)])
    return remove


def fold_constant_channels(model, input_shapes=None, zero_tol: float = 0.0, *, gates: bool = True,
                           trials: int = 2, seed: int = 0, exclude=(), verify_model: bool = True,
                           tolerance: float = EXACT_TOLERANCE) -> tuple[onnx.ModelProto, dict]:
    """Fold gates (``gates=True``), then fold channels that output a constant into the next layer's
    bias where exact, and remove them (never from a group that ``exclude`` protects). ``zero_tol`` >
    0 also treats filters whose entries are all within ``zero_tol * max|tensor|`` of 0 as zero (the
    proof against the original still applies; ``verify_model=False`` skips it)."""
    loaded = load(model, input_shapes, exclude)
    report = base_report("fold_constant_channels", loaded)
    report["zero_tol"] = zero_tol
    work = copy_model(loaded.original)
    analysis = loaded.analysis
    if gates:
        report["gates"] = _fold_gates_into(work, analysis)
        if any(e.get("status") == "folded" for e in report["gates"]):
            analysis = reanalyze(work, loaded.spec, exclude)
    remove = _fold_constants_in(work, analysis, loaded.spec, zero_tol, trials, seed, report)
    by_id = {g.id: g for g in analysis.groups}
    if remove:
        result, macs, params = remove_channels(work, loaded.spec, remove, by_id)
    else:
        drop_unused(work)
        result = work
        macs, params, _ = count(GraphIndex(work, loaded.spec))
    report["channels_removed"] = sum(len(v) for v in remove.values())
    note = carried_summary(loaded.original, result, "constant-folded model")
    if note:
        report["notes"] = report.get("notes", []) + [note]
    close_report(report, macs, params)
    result = finalize(result)
    prove(loaded.original, result, loaded.spec, "constant-folded model", report, tolerance=tolerance,
          skip=not verify_model, rounded_half=has_half(result))  # folded channels: computed biases
    return result, report
