"""Read what training learned (``compressor.learned`` metadata) and map it onto analysis groups.

Torch-free (numpy + onnx). ``compressor.train.export`` writes a JSON document into the ONNX model's
``metadata_props`` under the key ``compressor.learned``; see that module for the schema
(``compressor.learned/1``). Matching a stored group to a group of ``compressor.api.analyze``:

1. by tensor names: every stored member ``(tensor, axis, offset, inner)`` that equals a member of an
   analysis group of the same size votes for that group; the most votes win;
2. by fingerprint, when no name matched (the model was renamed, e.g. by a simplifier): an
   initializer (or Constant) with the same shape and the same L1/L2 norms (relative 1e-5) stands in
   for the stored first producer, and its analysis group (same axis/offset/inner/size) is used.

Each outcome is reported in ``notes``, including analysis groups that received no score.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.errors import UsageError

KEY = "compressor.learned"
SCHEMA = "compressor.learned/1"


def read_learned(model: onnx.ModelProto) -> dict | None:
    """The learned document stored in the model, validated; None when the model carries none."""
    for prop in model.metadata_props:
        if prop.key == KEY:
            try:
                doc = json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise UsageError(f"metadata '{KEY}' is not valid JSON ({exc.msg}); re-export the model") from exc
            _validate(doc)
            return doc
    return None


def _validate(doc: Any) -> None:
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise UsageError(f"metadata '{KEY}' has schema {found!r}, expected {SCHEMA!r}; re-export with this version")
    groups = doc.get("groups")
    if not isinstance(groups, list):
        raise UsageError(f"metadata '{KEY}' has no 'groups' list")
    for i, g in enumerate(groups):
        size = g.get("size") if isinstance(g, dict) else None
        if not isinstance(size, int) or size < 1:
            raise UsageError(f"metadata '{KEY}': group {i} has no valid 'size'")
        if not isinstance(g.get("members"), list) or not g["members"]:
            raise UsageError(f"metadata '{KEY}': group {i} has no members")
        for m in g["members"]:
            if not all(k in m for k in ("tensor", "axis", "offset", "inner")):
                raise UsageError(f"metadata '{KEY}': group {i} has a member without tensor/axis/offset/inner")
        if not isinstance(g.get("importance"), list) or len(g["importance"]) != size:
            raise UsageError(f"metadata '{KEY}': group {i} needs 'importance' with {size} numbers")
        for key in ("gates",):
            if key in g and len(g[key]) != size:
                raise UsageError(f"metadata '{KEY}': group {i} '{key}' must have {size} numbers")


def tensor_fingerprint(name: str, array: np.ndarray) -> dict:
    a = np.asarray(array, dtype=np.float64)
    return {"tensor": name, "shape": list(a.shape), "l1": float(np.abs(a).sum()), "l2": float(np.sqrt((a * a).sum()))}


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None:
                    out[node.output[0]] = attr.t
    return out


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(a), abs(b))


def learned_groups(model: onnx.ModelProto, analysis) -> tuple[dict[int, dict], list[str]]:
    """Stored entries (importance, optional clusters/gates) keyed by analysis group id, and notes."""
    doc = read_learned(model)
    if doc is None:
        return {}, [f"the model carries no '{KEY}' metadata (export it with compressor.train.export)"]
    by_member: dict[tuple[str, int, int, int], list] = {}
    for g in analysis.groups:
        for m in g.members:
            by_member.setdefault((m.tensor, m.axis, m.offset, m.inner), []).append(g)
    constants: dict[str, onnx.TensorProto] | None = None
    matched: dict[int, dict] = {}
    notes: list[str] = []
    method = doc.get("method", "?")
    for i, stored in enumerate(doc["groups"]):
        label = f"learned group {i} ({stored['members'][0]['tensor']}, {stored['size']} ch)"
        votes: Counter = Counter()
        sizes = {}
        for m in stored["members"]:
            for g in by_member.get((m["tensor"], int(m["axis"]), int(m["offset"]), int(m["inner"])), []):
                if g.size == stored["size"]:
                    votes[g.id] += 1
                    sizes[g.id] = g
        how = "tensor names"
        target = votes.most_common(1)[0][0] if votes else None
        if target is None and "fingerprint" in stored:
            if constants is None:
                constants = _constants(model)
            target, how = _by_fingerprint(stored, constants, by_member,
                                          analysis.index.const if analysis.index.model is model else None)
        if target is None:
            notes.append(f"{label}: not matched to any analysis group (names and fingerprint differ)")
            continue
        if target in matched:
            notes.append(f"{label}: analysis group {target} already has learned scores; kept the first")
            continue
        entry = {"importance": np.asarray(stored["importance"], dtype=np.float64), "method": method}
        for key in ("clusters", "gates", "keep_ratio"):
            if key in stored:
                entry[key] = np.asarray(stored[key], dtype=np.float64) if key == "gates" else stored[key]
        matched[target] = entry
        notes.append(f"{label} -> analysis group {target}: matched by {how}")
    for g in analysis.groups:
        if g.prunable and g.id not in matched:
            notes.append(f"analysis group {g.id} ({g.size} ch): no learned importance")
    return matched, notes


def _by_fingerprint(stored: dict, constants: dict[str, onnx.TensorProto], by_member,
                    value=None) -> tuple[int | None, str]:
    fp = stored["fingerprint"]
    ref = next((m for m in stored["members"] if m["tensor"] == fp.get("tensor")), stored["members"][0])
    shape = [int(d) for d in fp["shape"]]
    for name, tensor in constants.items():
        if list(tensor.dims) != shape:
            continue
        arr = value(name) if value is not None else None
        got = tensor_fingerprint(name, numpy_helper.to_array(tensor) if arr is None else arr)
        if not (_same(got["l1"], fp["l1"]) and _same(got["l2"], fp["l2"])):
            continue
        for g in by_member.get((name, int(ref["axis"]), int(ref["offset"]), int(ref["inner"])), []):
            if g.size == stored["size"]:
                return g.id, f"fingerprint ({fp.get('tensor')} is now {name})"
    return None, ""


def learned_scores(model: onnx.ModelProto, analysis) -> tuple[dict[int, np.ndarray], list[str]]:
    """Per analysis group id, the learned per-channel importance (higher = keep), plus notes."""
    entries, notes = learned_groups(model, analysis)
    return {gid: e["importance"] for gid, e in entries.items()}, notes
