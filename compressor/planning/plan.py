"""The PruningPlan: per group the channels kept, plus the options that produced it.

Strategies: a uniform ratio per group, or a global ranking across groups (scores normalised by
each group's mean). ``round_to`` keeps channel counts multiples of N; no group drops below
``min_channels`` (and never to zero: only the latency/MACs allocation removes whole groups, with
``drop_layers``; a plan file may too, and surgery then checks that it can).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from compressor.analysis.groups import Analysis, Group
from compressor.errors import UsageError


@dataclass
class PlanOptions:
    ratio: float = 0.5
    global_ranking: bool = False
    round_to: int = 1
    min_channels: int = 1
    importance: str = "l2"
    drop_layers: bool = False  # the allocation may remove a group whole (surgery/drop.py)

    def validate(self) -> None:
        if not (0.0 <= self.ratio < 1.0) or math.isnan(self.ratio):
            raise UsageError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.round_to < 1:
            raise UsageError(f"--round-to must be >= 1, got {self.round_to}")
        if self.min_channels < 1:
            raise UsageError(f"--min-channels must be >= 1, got {self.min_channels}")


@dataclass
class GroupDecision:
    id: int
    size: int
    kept: list[int]
    signature: list[str]

    @property
    def removed(self) -> int:
        return self.size - len(self.kept)


@dataclass
class PruningPlan:
    options: PlanOptions
    groups: list[GroupDecision] = field(default_factory=list)

    @property
    def keep(self) -> dict[int, list[int]]:
        return {g.id: g.kept for g in self.groups if g.removed}

    def to_dict(self) -> dict:
        # explicit dicts: dataclasses.asdict deep-copies every kept index (58 ms on resnet50)
        return {"schema": "compressor.plan/1", "options": asdict(self.options),
                "groups": [{"id": g.id, "size": g.size, "kept": [int(i) for i in g.kept],
                            "signature": list(g.signature)} for g in self.groups]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "PruningPlan":
        """A plan file's contents, every field checked (a user error names the entry and field)."""
        if not isinstance(d, dict) or d.get("schema") != "compressor.plan/1":
            raise UsageError("not a compressor plan file (schema compressor.plan/1 expected)")
        _known_fields(d, ("schema", "options", "groups"), "the plan", required=True)
        opts = options_from_dict(d["options"])
        groups = d.get("groups")
        if not isinstance(groups, list):
            raise _invalid("the plan's 'groups' must be a list of {id, size, kept, signature}")
        decisions = []
        for i, g in enumerate(groups):
            where = f"plan group {i}"
            if not isinstance(g, dict):
                raise _invalid(f"{where} must be an object with id, size, kept and signature")
            _known_fields(g, GROUP_FIELDS, where, required=True)
            kept, sig = g["kept"], g["signature"]
            if not isinstance(kept, list):
                raise _invalid(f"{where}: 'kept' must be a list of channel indices")
            if not isinstance(sig, list) or not all(isinstance(m, str) for m in sig):
                raise _invalid(f"{where}: 'signature' must be a list of 'tensor:axis:offset' strings")
            decisions.append(GroupDecision(_int(g["id"], f"{where}: 'id'"), _int(g["size"], f"{where}: 'size'"),
                                           [_int(k, f"{where}: a kept channel index") for k in kept], list(sig)))
        return cls(opts, decisions)

    def rebind(self, analysis: Analysis) -> "PruningPlan":
        """Match this plan's groups to a fresh analysis of the same model by member signature."""
        by_sig = {tuple(signature(g)): g for g in analysis.groups if g.members}
        out = []
        seen: dict[int, int] = {}  # analysis group id -> the plan entry that set it
        for i, dec in enumerate(self.groups):
            if not dec.signature and not dec.removed:
                continue  # a group with no constant members, kept whole: nothing to match or apply
            g = by_sig.get(tuple(dec.signature))
            if g is None or g.size != dec.size:
                raise UsageError(
                    f"the plan does not fit this model: no group of {dec.size} channels with members "
                    f"{dec.signature[:3]}...")
            if dec.removed and not g.prunable:
                raise UsageError(f"the plan prunes group {dec.signature[:2]}, which is not prunable here: "
                                 f"{'; '.join(g.reasons)}")
            if g.id in seen:
                raise UsageError(f"the plan lists group {dec.signature[:2]} twice (entries {seen[g.id]} and {i}); "
                                 "keep one entry per group")
            seen[g.id] = i
            if any(not 0 <= c < g.size for c in dec.kept) or len(set(dec.kept)) != len(dec.kept):
                raise UsageError(f"the plan keeps invalid channel indices for group {dec.signature[:2]}")
            out.append(GroupDecision(g.id, g.size, sorted(dec.kept), dec.signature))
        return PruningPlan(self.options, out)


def plan_from_slices(analysis: Analysis, slices: list[dict], opts: PlanOptions | None = None) -> PruningPlan:
    """Rebuild a plan from a report's ``plan`` list ({tensor, axis, kept}); every member of a group
    must agree on the channels kept, and every slice must belong to a known member."""
    given: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(slices):
        where = f"plan entry {i}"
        if not isinstance(s, dict):
            raise _invalid(f"{where} must be an object with tensor, axis and kept")
        _known_fields(s, ("tensor", "axis", "kept"), where, required=True)
        if not isinstance(s["tensor"], str):
            raise _invalid(f"{where}: 'tensor' must be a tensor name, got {s['tensor']!r}")
        if not isinstance(s["kept"], list):
            raise _invalid(f"{where}: 'kept' must be a list of indices")
        key = (s["tensor"], _int(s["axis"], f"{where}: 'axis'"))
        if key in given:
            raise _invalid(f"the plan slices {key[0]} axis {key[1]} twice; keep one entry per tensor axis")
        given[key] = [_int(k, f"{where}: a kept index") for k in s["kept"]]
    members = {(m.tensor, m.axis) for g in analysis.groups for m in g.members}
    unknown = sorted(set(given) - members)
    if unknown:
        raise UsageError(f"the plan slices {unknown[0][0]} axis {unknown[0][1]}, which no channel group of this "
                         "model carries")
    for (tensor, axis), kept in given.items():
        shape = analysis.index.shape(tensor)
        size = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if len(set(kept)) != len(kept) or any(k < 0 or (size is not None and k >= size) for k in kept):
            raise UsageError(f"the plan keeps invalid indices of {tensor} axis {axis} (out of range or repeated"
                             + (f"; the axis has {size}" if size is not None else "") + ")")
    decisions = []
    for g in analysis.groups:
        kept_sets = []
        for m in g.members:
            kept = given.get((m.tensor, m.axis))
            if kept is None:
                continue
            pos = set(kept)
            kept_sets.append(tuple(c for c in range(g.size) if m.offset + c * m.inner in pos))
        if not kept_sets:
            decisions.append(GroupDecision(g.id, g.size, list(range(g.size)), signature(g)))
            continue
        if len(set(kept_sets)) > 1:
            raise UsageError(f"the plan keeps different channels in members of one group ({signature(g)[:2]})")
        kept = list(kept_sets[0])
        if len(kept) < g.size and not g.prunable:
            raise UsageError(f"the plan prunes a group that is not prunable here: {'; '.join(g.reasons)}")
        decisions.append(GroupDecision(g.id, g.size, kept, signature(g)))
    return PruningPlan(opts or PlanOptions(), decisions)


GROUP_FIELDS = ("id", "size", "kept", "signature")


def _invalid(why: str) -> UsageError:
    """A plan file or report plan list that cannot be read as a plan: one line saying where and why."""
    return UsageError(f"not a valid plan: {why}")


def _int(v, what: str) -> int:
    """``v`` when it is an integer (not a bool, not 1.0, not "1"), else a user error naming ``what``."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise _invalid(f"{what} must be an integer, got {v!r}")
    return v


def _known_fields(d: dict, fields, where: str, required: bool = False) -> None:
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise _invalid(f"{where} has unknown field {unknown[0]!r} (expected {', '.join(fields)})")
    missing = [f for f in fields if f not in d] if required else []
    if missing:
        raise _invalid(f"{where} is missing field {missing[0]!r}")


def options_from_dict(d) -> PlanOptions:
    """A plan file's ``options``, each of the right type and range (missing ones take the defaults)."""
    if not isinstance(d, dict):
        raise _invalid("the plan's 'options' must be an object (ratio, global_ranking, round_to, ...)")
    fields = list(PlanOptions.__dataclass_fields__)
    _known_fields(d, fields, "the plan's options")
    for name in ("global_ranking", "drop_layers"):
        if name in d and not isinstance(d[name], bool):
            raise _invalid(f"the plan's options: '{name}' must be true or false, got {d[name]!r}")
    for name in ("round_to", "min_channels"):
        if name in d:
            _int(d[name], f"the plan's options: '{name}'")
    ratio = d.get("ratio", 0.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise _invalid(f"the plan's options: 'ratio' must be a number in [0, 1), got {ratio!r}")
    for name in ("round_to", "min_channels"):
        if d.get(name, 1) < 1:
            raise _invalid(f"the plan's options: '{name}' must be >= 1, got {d[name]!r}")
    if "importance" in d:
        from compressor.importance.criteria import CRITERIA

        names = sorted(CRITERIA) + ["learned"]
        if d["importance"] not in names:
            raise _invalid(f"the plan's options: 'importance' must be one of {', '.join(names)}, "
                             f"got {d['importance']!r}")
    return PlanOptions(**d)


def signature(group: Group) -> list[str]:
    """A stable description of a group: its members as tensor:axis:offset."""
    return sorted(f"{m.tensor}:{m.axis}:{m.offset}" for m in group.members)


def channel_multiplier(group: Group) -> int:
    """How many channels of the tensors a group's producers write each of its channels stands for:
    a grouped conv's per-group channels repeat once per conv group (regnet: 8 per group x 6
    groups), an attention head owns head_dim features. Rounding applies to those channel counts."""
    counts: dict[tuple[str, int], int] = {}
    inner: dict[tuple[str, int], int] = {}
    for m in group.members:
        if m.role == "producer":
            key = (m.tensor, m.axis)
            counts[key] = counts.get(key, 0) + 1
            inner[key] = max(inner.get(key, 1), int(m.inner))
    return max((counts[k] * inner[k] for k in counts), default=1)


def normalised_scores(scores) -> np.ndarray:
    """A group's channel scores over their mean: the one scale on which channels of different groups
    are compared (global ranking, latency allocation)."""
    s = np.asarray(scores, dtype=np.float64)
    return s / (s.mean() + 1e-12)


def channel_step(round_to: int, multiplier: int = 1) -> int:
    """Group channels per rounding step: ``round_to`` physical channels, of which each group channel
    stands for ``multiplier`` (see channel_multiplier)."""
    return max(1, round_to // math.gcd(round_to, max(multiplier, 1))) if round_to > 1 else 1


def rounded_keep(size: int, keep: int, opts: PlanOptions, multiplier: int = 1) -> int:
    """Channels kept: at least min-channels, and ``keep x multiplier`` a multiple of round-to (a
    grouped conv keeping 4 of 8 channels per group in 6 groups has 24 channels: already a multiple
    of 8, so rounding does not widen it back to 8 of 8)."""
    keep = max(keep, opts.min_channels, 1)
    if opts.round_to > 1:
        step = channel_step(opts.round_to, multiplier)
        keep = int(math.ceil(keep / step) * step)
    return min(keep, size)


def make_plan(analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions) -> PruningPlan:
    opts.validate()
    groups = analysis.prunable
    n_keep: dict[int, int] = {}
    if opts.global_ranking:
        entries = []
        for g in groups:
            norm = normalised_scores(scores[g.id])
            entries.extend((float(v), g.id) for v in norm)
        total = len(entries)
        budget = int(math.floor(opts.ratio * total))
        removed: dict[int, int] = {g.id: 0 for g in groups}
        sizes = {g.id: g.size for g in groups}
        for _, gid in sorted(entries):
            if budget <= 0:
                break
            if sizes[gid] - removed[gid] - 1 >= max(opts.min_channels, 1):
                removed[gid] += 1
                budget -= 1
        n_keep = {g.id: rounded_keep(g.size, g.size - removed[g.id], opts, channel_multiplier(g))
                  for g in groups}
    else:
        for g in groups:
            n_keep[g.id] = rounded_keep(g.size, g.size - int(math.floor(opts.ratio * g.size)), opts,
                                         channel_multiplier(g))
    return plan_for_widths(analysis, scores, opts, n_keep)


def plan_for_widths(analysis: Analysis, scores: dict[int, np.ndarray], opts: PlanOptions,
                    n_keep: dict[int, int]) -> PruningPlan:
    """Keep the ``n_keep[group id]`` best-scored channels of each listed group; the others whole."""
    decisions = []
    for g in analysis.groups:
        if g.id in n_keep:
            order = np.argsort(-scores[g.id], kind="stable")[: n_keep[g.id]]
            kept = sorted(int(i) for i in order)
        else:
            kept = list(range(g.size))
        decisions.append(GroupDecision(g.id, g.size, kept, signature(g)))
    return PruningPlan(opts, decisions)


def learned_keep(analysis: Analysis, entries: dict[int, dict], opts: PlanOptions) -> tuple[dict[int, int], list[str]]:
    """Per prunable group, the width training learned (``entries``: importance.learned's matched
    entries): DSA's ``keep_ratio`` (ceil(ratio x size), as its hard masks keep), the non-zero
    ``gates`` of group gating, the number of C-SGD ``clusters``; min-channels and round-to still
    apply. Groups without such a record stay whole (one note counts them)."""
    n_keep: dict[int, int] = {}
    bare = 0
    for g in analysis.prunable:
        e = entries.get(g.id) or {}
        if "keep_ratio" in e:
            keep = int(math.ceil(float(e["keep_ratio"]) * g.size - 1e-9))
        elif "gates" in e:
            keep = int(np.count_nonzero(np.asarray(e["gates"]) != 0))
        elif "clusters" in e:
            keep = len(e["clusters"])
        else:
            bare += 1
            continue
        n_keep[g.id] = rounded_keep(g.size, keep, opts, channel_multiplier(g))
    notes = [f"{bare} prunable group(s) have no learned width (keep_ratio, gates or clusters): left whole"] if bare else []
    return n_keep, notes
