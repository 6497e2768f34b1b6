"""Write the trained torch model to ONNX with what the regularizer learned in its metadata.

``export(model, example_input, path, regularizer=None, opset=17)`` exports the inference graph
(eval mode, legacy TorchScript exporter, no constant folding, torch names kept, initializer dedup
undone; gates folded into BN first) with ``ir_version = 10`` (onnxruntime 1.31 may not load onnx
1.23's default IR) and, when a regularizer is given, stores a JSON document in ``metadata_props``
under the key ``compressor.learned``. Schema ``compressor.learned/1``::

    {
      "schema": "compressor.learned/1",
      "method": "csgd",                      # registry name of the regularizer
      "groups": [{
        "members": [                          # tensors of the exported model carrying the channels
          {"tensor": "conv1.weight", "axis": 0, "offset": 0, "inner": 1, "role": "producer"}, ...
        ],                                    # channel c: [offset + c*inner, offset + (c+1)*inner)
        "size": 8,                            # channels in the group
        "importance": [float] * size,         # higher = keep
        "clusters": [[0, 3], [1], ...],       # optional (C-SGD): merge map, keep the first index
        "gates": [float] * size,              # optional (gating): max |gate| over coupled producers
        "keep_ratio": float,                  # optional (DSA): the learned keep fraction of the group
        "fingerprint": {"tensor": "conv1.weight", "shape": [8, 3, 3, 3], "l1": float, "l2": float}
      }, ...]
    }

Keys are tensor names of the exported model; ``role`` is informative. The fingerprint (of the first
producer member, whole tensor, float64 norms) lets :mod:`compressor.importance.learned` find the
group again when names changed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from compressor.importance.learned import KEY, SCHEMA, tensor_fingerprint
from compressor.train.groups import export_proto

IR_VERSION = 10


def learned_document(regularizer, proto: onnx.ModelProto) -> dict[str, Any]:
    """The ``compressor.learned`` document for ``proto`` (exported from the regularizer's model)."""
    inits = {i.name: i for i in proto.graph.initializer}
    groups = []
    for g, entry in regularizer.learned_groups():
        order = {"producer": 0, "param": 1, "consumer": 2}
        members, first = [], None
        for s in sorted(g.slices, key=lambda s: (order.get(s.role, 3), s.kind != "kernel")):
            init = inits.get(s.name)
            if init is None or tuple(init.dims) != tuple(s.tensor.shape):
                continue  # not in the exported graph (e.g. a folded gate) or reshaped by the exporter
            members.append({"tensor": s.name, "axis": s.dim, "offset": s.offset, "inner": s.inner, "role": s.role})
            if first is None and s.role == "producer":
                first = init
        if not members:
            continue
        first = first if first is not None else inits[members[0]["tensor"]]
        doc_group = {"members": members, "size": g.size, **entry,
                     "fingerprint": tensor_fingerprint(first.name, numpy_helper.to_array(first))}
        groups.append(doc_group)
    return {"schema": SCHEMA, "method": regularizer.name, "groups": groups}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    keep = [p for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def export(model: nn.Module, example_input: Any, path: str | Path | None, regularizer=None, opset: int = 17, *,
           input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
           dynamic_batch: bool = False) -> onnx.ModelProto:
    """Export ``model`` for inference to ``path`` (None: only return it) with learned metadata."""
    folded = getattr(regularizer, "folded", None)
    ctx = folded() if callable(folded) else contextlib.nullcontext()
    with ctx:
        proto = export_proto(model, example_input, training=False, opset=opset, input_names=input_names,
                             output_names=output_names, dynamic_batch=dynamic_batch)
        if regularizer is not None:
            doc = learned_document(regularizer, proto)
    proto.ir_version = IR_VERSION
    if regularizer is not None:
        set_metadata(proto, KEY, json.dumps(_jsonable(doc), separators=(",", ":")))
    onnx.checker.check_model(proto)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    return proto
