"""Read what training learned (``compressor.learned`` metadata) and map it onto analysis groups.

Torch-free (numpy + onnx). ``compressor.train.export`` writes a JSON document into the ONNX model's
``metadata_props`` under the key ``compressor.learned``; see that module for the schema
(``compressor.learned/1``). Matching a stored group to a group of ``compressor.api.analyze``:

1. by tensor names: every stored member ``(tensor, axis, offset, inner)`` that equals a member of an
   analysis group of the same size votes for that group; of the groups that hold every stored
   producer member, the one with the most votes wins;
2. by fingerprint, when no name matched (the model was renamed, e.g. by a simplifier): an
   initializer (or Constant) with the same shape and the same L1/L2 norms (relative 1e-5) stands in
   for the stored first producer, and its analysis group (same axis/offset/inner/size) is used.

A stored group is never matched to an analysis group that lacks its producer members (its
``role: producer`` members, or all of them where no role is given): a consumer slice at a stale
concatenation offset would otherwise vote for another group of the same size.

Each outcome is reported in ``notes``, including analysis groups that received no score.

The surgery keeps the document true for the model it writes (:func:`carry_learned`, called by
``surgery/apply.py:apply_plan``, so also by the exact transforms): a pruned group's entry is sliced
to its kept channels (importance, gates, renumbered C-SGD clusters; its ``keep_ratio`` dropped),
every member gets its offset in the pruned model, fingerprints are taken again, and an entry that
cannot be carried exactly is dropped, with a note.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

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


def _member_key(m: dict) -> tuple[str, int, int, int]:
    return (m["tensor"], int(m["axis"]), int(m["offset"]), int(m["inner"]))


def _anchors(stored: dict) -> list[dict]:
    """The stored members that say which channels the scores index: its producers (``role``), or
    every member where the document names no role."""
    return [m for m in stored["members"] if m.get("role") == "producer"] or list(stored["members"])


def match_entries(model: onnx.ModelProto, analysis, doc: dict) -> tuple[dict[int, tuple[int, str]], list[str]]:
    """Stored entry index -> (analysis group id, how it was matched), and notes.

    A group is matched by names only when it holds every stored producer member this model has (a
    consumer slice at a concatenation offset alone never decides: after an earlier concat input
    shrank it points at another group of the same size) and has the stored size."""
    by_member: dict[tuple[str, int, int, int], list] = {}
    for g in analysis.groups:
        for m in g.members:
            by_member.setdefault((m.tensor, m.axis, m.offset, m.inner), []).append(g)
    constants: dict[str, onnx.TensorProto] | None = None
    matched: dict[int, tuple[int, str]] = {}
    taken: set[int] = set()
    notes: list[str] = []
    for i, stored in enumerate(doc["groups"]):
        label = f"learned group {i} ({stored['members'][0]['tensor']}, {stored['size']} ch)"
        votes: Counter = Counter()
        for m in stored["members"]:
            for g in by_member.get(_member_key(m), []):
                if g.size == stored["size"]:
                    votes[g.id] += 1
        known = [k for k in map(_member_key, _anchors(stored)) if k in by_member]
        allowed = set.intersection(*({g.id for g in by_member[k]} for k in known)) if known else set()
        fitting = [(n, -gid) for gid, n in votes.items() if gid in allowed]
        target = -max(fitting)[1] if fitting else None
        how = "tensor names"
        refused = sorted(set(votes) - allowed)
        if target is None and "fingerprint" in stored:
            if constants is None:
                constants = _constants(model)
            target, how = _by_fingerprint(stored, constants, by_member,
                                          analysis.index.const if analysis.index.model is model else None)
        if target is None:
            why = (f"its tensors point at analysis group {refused[0]}, which does not hold its producer "
                   f"{_anchors(stored)[0]['tensor']!r} with {stored['size']} channels (stale metadata?)"
                   if refused else "names and fingerprint differ")
            notes.append(f"{label}: not matched to any analysis group ({why})")
            continue
        if target in taken:
            notes.append(f"{label}: analysis group {target} already has learned scores; kept the first")
            continue
        taken.add(target)
        matched[i] = (target, how)
        notes.append(f"{label} -> analysis group {target}: matched by {how}")
    return matched, notes


def learned_groups(model: onnx.ModelProto, analysis) -> tuple[dict[int, dict], list[str]]:
    """Stored entries (importance, optional clusters/gates) keyed by analysis group id, and notes."""
    doc = read_learned(model)
    if doc is None:
        return {}, [f"the model carries no '{KEY}' metadata (export it with compressor.train.export)"]
    found, notes = match_entries(model, analysis, doc)
    method = doc.get("method", "?")
    matched: dict[int, dict] = {}
    for i, (target, _) in found.items():
        stored = doc["groups"][i]
        entry = {"importance": np.asarray(stored["importance"], dtype=np.float64), "method": method}
        for key in ("clusters", "gates", "keep_ratio"):
            if key in stored:
                entry[key] = np.asarray(stored[key], dtype=np.float64) if key == "gates" else stored[key]
        matched[target] = entry
    if doc["groups"] and not matched:
        notes.append(f"none of the {len(doc['groups'])} learned entries matched a channel group of this model")
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


# ---------------------------------------------------------------------------- carried through surgery
def _shift(analysis, keep: dict[int, list[int]], tensor: str, axis: int, offset: int, inner: int) -> int | None:
    """Where the segment starting at ``offset`` of ``tensor``'s ``axis`` starts once ``keep`` is
    applied (None: no segment starts there)."""
    lay = analysis.ctx.layout(tensor, axis)
    table = analysis.ctx.table
    old = new = 0
    for g, seg_inner in lay or ():
        size = table.size(g)
        kept = keep.get(table.find(g))
        if old == offset and seg_inner == inner:
            return new
        old += size * seg_inner
        new += (size if kept is None else len(kept)) * seg_inner
    return None


def _changed(analysis, keep: dict[int, list[int]], tensor: str) -> bool:
    """Whether ``keep`` cuts any axis of ``tensor``."""
    table = analysis.ctx.table
    for lay in analysis.ctx.layout_map.get(tensor, {}).values():
        for g, _ in analysis.ctx.table.normalize(lay):
            kept = keep.get(table.find(g))
            if kept is not None and len(kept) < table.size(g):
                return True
    return False


def _remap_clusters(clusters: Any, kept: list[int], size: int) -> list[list[int]] | None:
    """C-SGD clusters in the kept channels' new indices (None: not a list of channel lists)."""
    new_index = {int(c): j for j, c in enumerate(kept)}
    try:
        out = [[new_index[int(c)] for c in cl if int(c) in new_index] for cl in clusters]
        if any(not 0 <= int(c) < size for cl in clusters for c in cl):
            return None
    except (TypeError, ValueError):
        return None
    return [cl for cl in out if cl]


def carry_learned(pruned: onnx.ModelProto, analysis, keep: dict[int, list[int]],
                  value: Callable[[str], np.ndarray | None]) -> list[str]:
    """Rewrite the ``compressor.learned`` metadata of ``pruned`` (built by the surgery from the model
    ``analysis`` describes, keeping ``keep``'s channels) so that it describes ``pruned``.

    An entry whose group lost channels keeps the scores, gates and C-SGD clusters of its kept
    channels (cluster indices renumbered), its new size, and drops ``keep_ratio`` (a fraction of the
    old width); an entry of an untouched group keeps its values. Every kept member gets its offset
    in ``pruned`` (an earlier concat input may have shrunk), members that left the graph go, and
    the fingerprint is taken again where its tensor changed (``value(name)``: a tensor of
    ``pruned``). An entry that cannot be carried exactly (its group removed whole, not matched
    while its tensors changed, no member left) is dropped. Returns notes; unreadable metadata is
    left as it is (reading it reports the problem)."""
    prop = next((p for p in pruned.metadata_props if p.key == KEY), None)
    if prop is None:
        return []
    try:
        doc = json.loads(prop.value)
        _validate(doc)
    except (UsageError, ValueError):
        return []
    matches, _ = match_entries(analysis.index.model, analysis, doc)
    present = {t.name for t in pruned.graph.initializer} | {
        n.output[0] for n in pruned.graph.node if n.op_type == "Constant" and n.output}
    out, dropped = [], Counter()
    sliced = moved = ratios = 0
    for i, stored in enumerate(doc["groups"]):
        if i not in matches:
            if any(m["tensor"] not in present or _changed(analysis, keep, m["tensor"]) for m in stored["members"]):
                dropped["not matched to a channel group, and its tensors changed"] += 1
            else:
                out.append(stored)
            continue
        gid, how = matches[i]
        group = analysis.group(gid)
        kept = keep.get(gid)
        if kept is not None and len(kept) == 0:
            dropped["its group was removed whole"] += 1
            continue
        own = {(m.tensor, m.axis, m.offset, m.inner): m for m in group.members}
        if how == "tensor names":
            source = [m for m in stored["members"] if _member_key(m) in own]
        else:  # matched by fingerprint: this model's names
            source = [{"tensor": m.tensor, "axis": m.axis, "offset": m.offset, "inner": m.inner, "role": m.role}
                      for m in group.members]
        members, shifted = [], False
        for m in source:
            offset = _shift(analysis, keep, m["tensor"], int(m["axis"]), int(m["offset"]), int(m["inner"]))
            if m["tensor"] in present and offset is not None:
                members.append({**m, "offset": offset})
                shifted = shifted or offset != int(m["offset"])
        if not members:
            dropped["none of its tensors is left"] += 1
            continue
        entry = {**stored, "members": members}
        moved += shifted
        if kept is not None and len(kept) < group.size:
            sliced += 1
            entry["size"] = len(kept)
            for key in ("importance", "gates"):
                if key in entry:
                    entry[key] = [stored[key][c] for c in kept]
            if "clusters" in entry:
                clusters = _remap_clusters(stored["clusters"], kept, group.size)
                if clusters is None:
                    del entry["clusters"]
                else:
                    entry["clusters"] = clusters
            if "keep_ratio" in entry:
                del entry["keep_ratio"]
                ratios += 1
        if "fingerprint" in entry:
            fp_name = entry["fingerprint"].get("tensor")
            if how != "tensor names" or fp_name not in present:
                fp_name = next((m["tensor"] for m in members if m.get("role") == "producer"), members[0]["tensor"])
            if how != "tensor names" or fp_name != entry["fingerprint"].get("tensor") \
                    or _changed(analysis, keep, fp_name):
                arr = value(fp_name)
                if arr is None:
                    del entry["fingerprint"]
                else:
                    entry["fingerprint"] = tensor_fingerprint(fp_name, arr)
        out.append(entry)
    if not (sliced or moved or dropped or out != doc["groups"]):
        return []
    doc["groups"] = out
    _set_doc(pruned, doc)
    return [_carry_note(len(out), sliced, moved, ratios, dropped)]


def _carry_note(carried: int, sliced: int, moved: int, ratios: int, dropped: Counter) -> str:
    total = carried + sum(dropped.values())
    text = f"'{KEY}': {carried} of {total} learned entries carried to the pruned model"
    detail = [f"{sliced} sliced to their kept channels"] if sliced else []
    if moved:
        detail.append(f"{moved} at new concatenation offsets")
    if ratios:
        detail.append(f"{ratios} without their keep_ratio (a fraction of the old width)")
    if detail:
        text += f" ({', '.join(detail)})"
    if dropped:
        text += "; dropped " + ", ".join(f"{n} ({why})" for why, n in dropped.items())
    return text


def _set_doc(model: onnx.ModelProto, doc: dict) -> None:
    """Store ``doc`` as the model's learned metadata (none at all when it has no entry left)."""
    prop = next((p for p in model.metadata_props if p.key == KEY), None)
    if doc["groups"] and prop is not None:
        prop.value = json.dumps(doc, separators=(",", ":"))
    elif prop is not None:
        keep = [p for p in model.metadata_props if p.key != KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(keep)


def drop_learned_entries(model: onnx.ModelProto, analysis, group_ids: set[int]) -> tuple[int, int]:
    """Remove the learned entries that match the analysis groups ``group_ids`` (matched as
    :func:`match_entries` does; ``analysis`` describes ``model`` or a model with its names and
    shapes). Returns (entries dropped, entries there were); unreadable metadata is left alone."""
    prop = next((p for p in model.metadata_props if p.key == KEY), None)
    if prop is None or not group_ids:
        return 0, 0
    try:
        doc = json.loads(prop.value)
        _validate(doc)
    except (UsageError, ValueError):
        return 0, 0
    matches, _ = match_entries(analysis.index.model, analysis, doc)
    total = len(doc["groups"])
    doc["groups"] = [g for i, g in enumerate(doc["groups"]) if matches.get(i, (None,))[0] not in group_ids]
    if len(doc["groups"]) < total:
        _set_doc(model, doc)
    return total - len(doc["groups"]), total


def carried_summary(before: onnx.ModelProto, after: onnx.ModelProto, what: str) -> str | None:
    """A note comparing the learned entries of a transform's input and output (the surgery carried
    them: :func:`carry_learned`); None when the input has none or nothing changed."""
    def entries(model):
        prop = next((p for p in model.metadata_props if p.key == KEY), None)
        try:
            return json.loads(prop.value)["groups"] if prop is not None else []
        except (ValueError, KeyError, TypeError):
            return None

    old, new = entries(before), entries(after)
    if not old or new is None or new == old:
        return None
    changed = sum(a["size"] for a in old) != sum(b["size"] for b in new)
    how = "sliced to the channels left, offsets updated" if changed else "offsets updated"
    text = f"'{KEY}': {len(new)} of {len(old)} learned entries carried to the {what} ({how})"
    if len(new) < len(old):
        text += f"; {len(old) - len(new)} dropped (their channels could not be followed)"
    return text
