"""Merge identical filters exactly: keep one channel per cluster, add the other channels' consumer
input slices into the kept one, then remove the others with the normal surgery.

Why it is exact: channels whose producer filters, biases and per-channel parameters (BN, PReLU,
per-channel constants: every producer and param member of the group) are identical carry identical
values everywhere up to the layers that contract them, because the analysis only lets per-channel
ops through inside a group. A consumer that is linear in its input (Conv, ConvTranspose, Gemm,
MatMul with a constant weight) then computes ``W_i x_i + W_j x_j = (W_i + W_j) x_i``. A group whose
channels are also contracted somewhere without a weight (ReduceSum over channels, an attention
MatMul between two activations) cannot be merged this way and is skipped with the reason.

Proof: the merged model must reproduce the unmerged original (not a masked one) on random inputs
within relative error 1e-5, or 10x ``tol`` where the filters of a cluster may differ by ``tol``
(:func:`_proof_tolerance`); otherwise :class:`compressor.errors.VerificationError` is raised.
The learned entries of the merged groups are dropped (a kept channel now stands for its whole
cluster: its score no longer describes it); the surgery carries the others to their offsets in the
merged model (importance/learned.py:carry_learned).

Clusters come from C-SGD training metadata (:func:`merge_learned`, :func:`merge_clusters`) or from
comparing the filters (:func:`find_identical`, :func:`merge_identical`).
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.analysis.context import PARAM, PRODUCER
from compressor.analysis.groups import Analysis, Group
from compressor.errors import UsageError
from compressor.importance.learned import KEY as LEARNED_KEY
from compressor.importance.learned import carried_summary, drop_learned_entries
from compressor.surgery._exact import (
    EXACT_TOLERANCE, LINEAR_CONSUMERS, ConstEditor, Loaded, base_report, channel_slice, close_report,
    consume_points_of, consumer_members, copy_model, finalize, index_along, load, prove, remove_channels,
)

Clusters = list[list[int]]


# ---------------------------------------------------------------------------- identity test
def _identity_members(group: Group) -> list:
    """Everything that shapes a channel's output before it is contracted: producers and params."""
    return [m for m in group.members if m.role in (PRODUCER, PARAM)]


def _rows(analysis: Analysis, member, size: int) -> np.ndarray:
    """A member's channels as rows: [size, everything else of the channel's slice]."""
    arr = np.asarray(analysis.index.const(member.tensor), dtype=np.float64)
    return np.stack([channel_slice(arr, member, c).reshape(-1) for c in range(size)])


def cluster_deviation(analysis: Analysis, group: Group, clusters: Clusters) -> float:
    """Largest ``max|s_r - s_j| / max|tensor|`` between a cluster's first channel r and another member j,
    over every producer and param member of the group (0 = bit-identical). The scale is the whole
    member tensor's magnitude, so a bias or BN entry near 0 does not inflate the measure."""
    worst = 0.0
    for m in _identity_members(group):
        rows = _rows(analysis, m, group.size)
        scale = max(float(np.max(np.abs(rows), initial=0.0)), 1e-30)
        for cl in clusters:
            for j in cl[1:]:
                worst = max(worst, float(np.max(np.abs(rows[cl[0]] - rows[j]), initial=0.0)) / scale)
    return worst


def _group_clusters(analysis: Analysis, group: Group, tol: float) -> Clusters:
    members = _identity_members(group)
    if not members:
        return [[c] for c in range(group.size)]
    feats = [_rows(analysis, m, group.size) for m in members]
    scales = [max(float(np.max(np.abs(f), initial=0.0)), 1e-30) for f in feats]
    l2 = [np.linalg.norm(f, axis=1) for f in feats]
    reps: list[int] = []
    clusters: Clusters = []
    for c in range(group.size):
        cand = np.asarray(reps, dtype=np.int64)
        for f, scale, nrm in zip(feats, scales, l2):
            if not cand.size:
                break
            # cheap bound first: |‖a‖ - ‖b‖| <= ‖a - b‖ <= sqrt(d) * max|a - b|
            cand = cand[np.abs(nrm[cand] - nrm[c]) <= tol * scale * np.sqrt(f.shape[1]) * (1 + 1e-9)]
            if cand.size:
                cand = cand[np.max(np.abs(f[cand] - f[c]), axis=1, initial=0.0) <= tol * scale]
        if cand.size:
            clusters[reps.index(int(cand[0]))].append(c)
        else:
            reps.append(c)
            clusters.append([c])
    return clusters


def find_identical(analysis: Analysis, tol: float = 1e-6, groups=None) -> dict[int, Clusters]:
    """Clusters of channels whose producer and param slices agree within relative ``tol``
    (``max|a - b| <= tol * max|tensor|`` for every member), for every prunable group (or the ids in
    ``groups``). Each cluster is sorted; the first channel is its representative."""
    out = {}
    for g in analysis.groups:
        if not g.prunable or (groups is not None and g.id not in groups):
            continue
        out[g.id] = _group_clusters(analysis, g, tol)
    return out


# ---------------------------------------------------------------------------- mergeability
def merge_blockers(analysis: Analysis, group: Group) -> list[str]:
    """Why a group's channels cannot be merged by summing consumer slices ([] = they can)."""
    if not group.prunable:
        return list(group.reasons) or ["group is not prunable"]
    reasons = []
    points = consume_points_of(analysis, group.id)
    if not points:
        reasons.append("no layer contracts these channels")
    for _, node, _ in points:
        label = analysis.index.node_label(node)
        if node.op_type not in LINEAR_CONSUMERS:
            reasons.append(f"{node.op_type} '{label}' contracts the channels without a weight to sum into")
        elif not consumer_members(group, label):
            reasons.append(f"{node.op_type} '{label}' contracts the channels with a run-time operand")
    return reasons


def _normalise_clusters(clusters, size: int, gid: int) -> Clusters:
    seen: set[int] = set()
    out: Clusters = []
    for cl in clusters:
        cl = sorted(int(c) for c in cl)
        if not cl:
            continue
        for c in cl:
            if not 0 <= c < size:
                raise UsageError(f"cluster of group {gid} names channel {c}, outside 0..{size - 1}")
            if c in seen:
                raise UsageError(f"channel {c} of group {gid} appears in two clusters")
            seen.add(c)
        out.append(cl)
    out.extend([c] for c in range(size) if c not in seen)
    return sorted(out)


# ---------------------------------------------------------------------------- the transform
def _merge(loaded: Loaded, clusters_by_group: dict[int, Clusters], tol: float | None, transform: str,
           tolerance: float | None = None, verify_model: bool = True) -> tuple[onnx.ModelProto, dict]:
    an = loaded.analysis
    report = base_report(transform, loaded)
    report["tol"] = tol
    by_id = {g.id: g for g in an.groups}
    work = copy_model(loaded.original)
    editor = ConstEditor(work)
    arrays: dict[str, np.ndarray] = {}
    remove: dict[int, list[int]] = {}
    for gid in sorted(clusters_by_group):
        group = by_id.get(gid)
        entry: dict = {"group": gid}
        report["groups"].append(entry)
        if group is None:
            entry.update(status="skipped", reason="no such group in the analysis")
            continue
        entry.update(size=group.size, origin=group.origin)
        clusters = _normalise_clusters(clusters_by_group[gid], group.size, gid)
        multi = [cl for cl in clusters if len(cl) > 1]
        if not multi:
            entry.update(status="unchanged", reason="every channel is distinct", removed=0)
            continue
        entry["clusters"] = multi
        blockers = merge_blockers(an, group)
        if blockers:
            entry.update(status="skipped", reason="; ".join(dict.fromkeys(blockers)), removed=0)
            continue
        dev = cluster_deviation(an, group, multi)
        entry["max_rel_deviation"] = dev
        if tol is not None and dev > tol:
            entry.update(status="skipped", removed=0,
                         reason=f"clustered channels differ (max relative deviation {dev:.3g} > tol {tol:g})")
            continue
        for m in {(m.tensor, m.axis, m.offset, m.inner): m for m in group.members
                  if m.role == "consumer"}.values():
            arr = arrays.get(m.tensor)
            if arr is None:
                arr = arrays[m.tensor] = np.array(editor.get(m.tensor), copy=True)
            for cl in multi:
                rep = index_along(m, cl[0], arr.ndim)
                for j in cl[1:]:
                    other = index_along(m, j, arr.ndim)
                    arr[rep] += arr[other]
                    arr[other] = 0
        dropped = sorted(j for cl in multi for j in cl[1:])
        remove[gid] = dropped
        entry.update(status="merged", removed=len(dropped), kept=[cl[0] for cl in clusters])
    for name, arr in arrays.items():
        editor.set(name, arr)
    notes = _drop_merged_learned(work, an, {gid for gid, drop in remove.items() if drop})
    merged, macs_after, params_after = remove_channels(work, loaded.spec, remove, by_id)
    notes += [n for n in [carried_summary(work, merged, "merged model")] if n]
    if notes:
        report["notes"] = report.get("notes", []) + notes
    report["channels_removed"] = sum(len(v) for v in remove.values())
    close_report(report, macs_after, params_after)
    merged = finalize(merged)
    prove(loaded.original, merged, loaded.spec, "merged model", report,
          tolerance=_proof_tolerance(tol) if tolerance is None else tolerance, skip=not verify_model,
          rounded_half=editor.wrote_half)
    return merged, report


def _proof_tolerance(tol: float | None) -> float:
    """What the merged model's proof allows: exact (1e-5), or 10x the filters' allowed deviation
    (filters equal within ``tol`` change the outputs by about as much; the margin covers its
    growth through the layers after them, a wrong merge is off by far more)."""
    return max(EXACT_TOLERANCE, 10.0 * (tol or 0.0))


def _drop_merged_learned(work: onnx.ModelProto, analysis: Analysis, merged: set[int]) -> list[str]:
    """Remove from ``work``'s ``compressor.learned`` metadata the entries matched to a merged group
    (only those: an entry of another group at a concat offset of the same tensors stays)."""
    dropped, total = drop_learned_entries(work, analysis, merged)
    if not dropped:
        return []
    return [f"dropped the learned entries of {dropped} merged group(s) from '{LEARNED_KEY}' (a kept channel now "
            f"stands for its cluster); {total - dropped} stay"]


def merge_clusters(model, clusters_by_group: dict[int, Clusters], input_shapes=None, *, tol: float | None = 1e-4,
                   exclude=(), tolerance: float | None = None,
                   verify_model: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Merge given clusters (``{analysis group id: [[c0, c1, ...], ...]}``, first/lowest channel kept;
    channels not listed stay alone). A group whose clustered filters differ by more than relative
    ``tol`` (None: do not check, the final proof still runs) is skipped and reported."""
    loaded = load(model, input_shapes, exclude)
    return _merge(loaded, clusters_by_group, tol, "merge_clusters", tolerance, verify_model)


def merge_identical(model, input_shapes=None, tol: float = 1e-6, *, exclude=(),
                    tolerance: float | None = None, verify_model: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Find channels with identical filters (relative ``tol``, all coupled producers and params
    together) in every prunable group and merge them."""
    loaded = load(model, input_shapes, exclude)
    clusters = find_identical(loaded.analysis, tol)
    return _merge(loaded, clusters, tol, "merge_identical", tolerance, verify_model)


def merge_learned(model, input_shapes=None, tol: float | None = 1e-4, *, exclude=(),
                  tolerance: float | None = None, verify_model: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Merge the C-SGD ``clusters`` stored in the model's ``compressor.learned`` metadata."""
    from compressor.importance.learned import learned_groups

    loaded = load(model, input_shapes, exclude)
    entries, notes = learned_groups(loaded.original, loaded.analysis)
    clusters = {gid: e["clusters"] for gid, e in entries.items() if "clusters" in e}
    if not clusters:
        raise UsageError("the model's learned metadata has no C-SGD clusters to merge "
                         "(train with the csgd regularizer and export with compressor.train.export)")
    merged, report = _merge(loaded, clusters, tol, "merge_learned", tolerance, verify_model)
    report["notes"] = notes + report.get("notes", [])
    return merged, report
