"""The masked original and the comparison against the pruned model.

The masked original is the input model with every removed channel multiplied by zero right before
each node that consumes (sums over) it. Removing channels must not change anything else, so the
pruned model has to reproduce the masked original on any input. Masking on the consumer side is
exact where producer-side masking is not (BatchNorm's beta, sigmoid(0) = 0.5 leak through).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.analysis.groups import Analysis
from compressor.analysis.layout import positions
from compressor.ir.shapes import InputSpec, random_feeds


@dataclass
class VerifyResult:
    passed: bool
    max_rel_err: float
    max_abs_err: float
    tolerance: float
    trials: int
    outputs: dict[str, float]
    provider: str

    def to_dict(self) -> dict:
        return asdict(self)


def masked_original(analysis: Analysis, keep: dict[int, list[int]]) -> onnx.ModelProto:
    """The input model with removed channels zeroed at every consumer."""
    src = analysis.index.model
    model = onnx.ModelProto()
    model.CopyFrom(src)
    del model.graph.value_info[:]
    table = analysis.ctx.table
    inserts: dict[int, list[onnx.NodeProto]] = {}
    nodes = list(model.graph.node)
    existing = {o for n in nodes for o in n.output} | {t.name for t in model.graph.initializer}
    counter = 0
    for cp in analysis.consume_points:
        node = nodes[cp.node_index]
        x = node.input[cp.input_index]
        lay = analysis.ctx.layout_map[x][cp.axis]
        kept = positions(table, lay, keep)
        if kept is None:
            continue
        shape = analysis.index.shape(x)
        mask = np.zeros(shape[cp.axis], dtype=_dtype_of(analysis, x))
        mask[kept] = 1
        bshape = [1] * len(shape)
        bshape[cp.axis] = shape[cp.axis]
        counter += 1
        mask_name = f"{x}__oracle_mask{counter}"
        out_name = f"{x}__oracle_masked{counter}"
        while mask_name in existing or out_name in existing:
            counter += 1
            mask_name, out_name = f"{x}__oracle_mask{counter}", f"{x}__oracle_masked{counter}"
        model.graph.initializer.append(numpy_helper.from_array(mask.reshape(bshape), mask_name))
        inserts.setdefault(cp.node_index, []).append(helper.make_node("Mul", [x, mask_name], [out_name]))
        node.input[cp.input_index] = out_name
    if inserts:
        del model.graph.node[:]
        for i, node in enumerate(nodes):
            model.graph.node.extend(inserts.get(i, []))
            model.graph.node.append(node)
    return model


def _dtype_of(analysis: Analysis, name: str) -> np.dtype:
    return analysis.index.tensor_dtype(name)


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    data = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    finally:
        del data


def verify(reference: onnx.ModelProto, pruned: onnx.ModelProto, spec: InputSpec, *,
           tolerance: float = 1e-4, trials: int = 2, seed: int = 0) -> VerifyResult:
    """Run both models on the same random inputs; relative error = max|a-b| / max|a| per output."""
    ref_sess, new_sess = _session(reference), _session(pruned)
    names = [o.name for o in ref_sess.get_outputs()]
    worst: dict[str, float] = {n: 0.0 for n in names}
    max_abs = 0.0
    for t in range(trials):
        feeds = random_feeds(spec, seed=seed + t)
        a = ref_sess.run(names, feeds)
        b = new_sess.run(names, feeds)
        for n, x, y in zip(names, a, b):
            x = np.asarray(x, dtype=np.float64)
            y = np.asarray(y, dtype=np.float64)
            if x.shape != y.shape:
                worst[n] = float("inf")
                max_abs = float("inf")
                continue
            diff = float(np.max(np.abs(x - y))) if x.size else 0.0
            scale = float(np.max(np.abs(x))) if x.size else 0.0
            rel = diff / max(scale, 1e-12) if diff else 0.0
            worst[n] = max(worst[n], rel)
            max_abs = max(max_abs, diff)
    max_rel = max(worst.values()) if worst else 0.0
    return VerifyResult(passed=bool(max_rel <= tolerance), max_rel_err=max_rel, max_abs_err=max_abs,
                        tolerance=tolerance, trials=trials, outputs=worst,
                        provider=new_sess.get_providers()[0])
