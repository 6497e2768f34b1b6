"""Learned importances (``compressor.learned``) stay true through surgery: a pruned, folded or merged
model carries them sliced to its kept channels at its own concat offsets, so a second pass ranks by
them; a stored entry never scores a group that does not hold its producer."""

from __future__ import annotations

import json

import numpy as np
import onnx

from compressor import api
from compressor.analysis.groups import Analysis
from compressor.importance.learned import KEY, learned_groups, read_learned, tensor_fingerprint
from compressor.surgery import fold_constant_channels, merge_identical
from compressor.surgery.apply import apply_plan
from tests.core.graphs import G
from tests.transforms._graphs import chain, copy_channels, inits, set_init

#: learned scores of the three concatenated branches: B's best channels are C's worst
SCORES = {"a": np.linspace(0.1, 1.6, 16)[np.random.default_rng(1).permutation(16)],
          "b": np.arange(8, dtype=float), "c": np.arange(8, dtype=float)[::-1].copy()}


def dense() -> tuple[onnx.ModelProto, dict]:
    """stem -> three conv+BN+Relu branches A(16), B(8), C(8) -> concat (32) read by two BN -> Relu ->
    1x1 conv consumers (DenseNet: every later layer reads the concatenation) -> Add -> GAP -> Gemm."""
    g = G(3)
    x = g.input("x", [1, 3, 8, 8])
    stem = g.op("Relu", [g.conv(x, 3, 8, bias=False)])
    names, outs = {}, []
    for b, c in (("a", 16), ("b", 8), ("c", 8)):
        names[b] = g.rand(c, 8, 3, 3)
        names["bn_" + b] = [g.rand(c, positive=True), g.rand(c), g.rand(c), g.rand(c, positive=True)]
        conv = g.op("Conv", [stem, names[b]], kernel_shape=[3, 3], pads=[1] * 4)
        outs.append(g.op("Relu", [g.op("BatchNormalization", [conv] + names["bn_" + b])]))
    cat = g.op("Concat", outs, axis=1)
    heads = []
    for k in (1, 2):
        names[f"bn{k}"] = [g.rand(32, positive=True), g.rand(32), g.rand(32), g.rand(32, positive=True)]
        r = g.op("Relu", [g.op("BatchNormalization", [cat] + names[f"bn{k}"])])
        heads.append(g.conv(r, 32, 8, k=1, bias=False))
    y = g.op("Flatten", [g.op("GlobalAveragePool", [g.op("Add", heads)])])
    return g.model([g.op("Gemm", [y, g.rand(8, 4), g.rand(4)])]), names


def producer_group(an: Analysis, tensor: str):
    return next(g for g in an.groups if any(m.tensor == tensor and m.role == "producer" for m in g.members))


def with_learned(model: onnx.ModelProto, names: dict) -> onnx.ModelProto:
    """Store SCORES as an export would: each branch group's members (producer, BN, concat consumers)."""
    an = api.analyze(model)
    groups = []
    for b in ("a", "b", "c"):
        grp = producer_group(an, names[b])
        members = [{"tensor": m.tensor, "axis": m.axis, "offset": m.offset, "inner": m.inner, "role": m.role}
                   for m in grp.members]
        groups.append({"members": members, "size": grp.size, "importance": SCORES[b].tolist(),
                       "fingerprint": tensor_fingerprint(names[b], inits(model)[names[b]])})
    model.metadata_props.add(key=KEY, value=json.dumps({"schema": "compressor.learned/1", "method": "test",
                                                        "groups": groups}))
    return model


def kept(report: dict, tensor: str) -> list[int]:
    return next(s["kept"] for s in report["plan"] if s["tensor"] == tensor and s["axis"] == 0)


def top(scores, n: int) -> list[int]:
    return sorted(np.argsort(-np.asarray(scores), kind="stable")[:n].tolist())


def entry(model: onnx.ModelProto, tensor: str) -> dict:
    return next(g for g in read_learned(model)["groups"] if g["members"][0]["tensor"] == tensor)


def test_two_passes_keep_the_best_channels_by_the_learned_scores():
    """Pass 1 cuts A 16 -> 8 (B and C stay whole at --round-to 8); the pruned model's metadata holds
    A's 8 surviving scores and B's, C's concat offsets moved down by 8; pass 2 keeps in every branch
    the channels with the best learned scores (the stale offsets used to score C with B's scores)."""
    model, n = dense()
    with_learned(model, n)
    p1 = api.prune(model, ratio=0.5, round_to=8, importance="learned")
    a1 = kept(p1.report, n["a"])
    assert a1 == top(SCORES["a"], 8), "pass 1 keeps A's best learned channels"
    assert all(s["tensor"] not in (n["b"], n["c"]) for s in p1.report["plan"]), "B and C stay whole in pass 1"
    ea = entry(p1.model, n["a"])
    assert ea["size"] == 8 and ea["importance"] == SCORES["a"][a1].tolist(), "A's entry is sliced to its kept channels"
    assert ea["fingerprint"] == tensor_fingerprint(n["a"], inits(p1.model)[n["a"]]), "fingerprint of the pruned tensor"
    offsets = {b: sorted({m["offset"] for m in entry(p1.model, n[b])["members"] if m["axis"] == 1}) for b in "bc"}
    assert offsets == {"b": [8], "c": [16]}, f"B and C sit at concat offsets 8 and 16 after A lost 8: {offsets}"
    # every carried member is a member of its group in the pruned model, as the analysis sees it
    an1 = api.analyze(p1.model)
    for b in "abc":
        own = {(m.tensor, m.axis, m.offset, m.inner) for m in producer_group(an1, n[b]).members}
        for m in entry(p1.model, n[b])["members"]:
            assert (m["tensor"], m["axis"], m["offset"], m["inner"]) in own, (b, m)

    p2 = api.prune(p1.model, ratio=0.5, importance="learned")
    matched = [note for note in p2.report["importance_notes"] if "matched by tensor names" in note]
    assert len(matched) == 3, p2.report["importance_notes"]
    assert [int(c) for c in np.asarray(a1)[kept(p2.report, n["a"])]] == sorted(
        np.asarray(a1)[top(SCORES["a"][a1], 4)].tolist()), "A keeps its best 4 survivors by the learned scores"
    for b in "bc":
        assert kept(p2.report, n[b]) == top(SCORES[b], 4), f"{b.upper()} is ranked by its own learned scores"


def test_a_stale_concat_offset_never_scores_another_group():
    """Metadata left at the unpruned offsets (as older versions wrote it): B's consumer slices point at
    C's channels, but C's group lacks B's producer, so B's scores are not given to C."""
    model, n = dense()
    with_learned(model, n)
    stale = next(p.value for p in model.metadata_props if p.key == KEY)
    p1 = api.prune(model, ratio=0.5, round_to=8, importance="learned").model
    next(p for p in p1.metadata_props if p.key == KEY).value = stale
    an = api.analyze(p1)
    entries, notes = learned_groups(p1, an)
    for b in "bc":  # B and C were not cut: their scores still apply, each to its own group only
        got = entries.get(producer_group(an, n[b]).id, {}).get("importance")
        assert got is not None and list(got) == SCORES[b].tolist(), f"{b.upper()} gets its own scores: {notes}"
    assert producer_group(an, n["a"]).id not in entries, "A's 16 stale scores fit none of the 8 channels left"


def test_fold_constants_carries_the_learned_scores_within_one_run():
    """--fold-constants removes A's 8 zero filters: the folded model's metadata holds A's 8 other
    scores and B's, C's moved offsets, so the pruning after it ranks every branch by its own scores."""
    model, n = dense()
    zero = list(range(1, 16, 2))
    wa = inits(model)[n["a"]].copy()
    wa[zero] = 0
    set_init(model, n["a"], wa)
    with_learned(model, n)
    folded, rep = fold_constant_channels(model)
    assert rep["channels_removed"] == 8, rep["groups"]
    alive = [c for c in range(16) if c not in zero]
    assert entry(folded, n["a"])["importance"] == SCORES["a"][alive].tolist()
    assert any("carried to the constant-folded model" in note for note in rep.get("notes", [])), rep.get("notes")
    res = api.prune(model, fold_constants=True, ratio=0.5, importance="learned")
    for b in "bc":
        assert kept(res.report, n[b]) == top(SCORES[b], 4), f"{b.upper()} is ranked by its own learned scores"
    assert kept(res.report, n["a"]) == top(SCORES["a"][alive], 4)


def test_a_merge_drops_only_the_merged_groups_entry():
    """Only A has identical filters: its entry goes (a kept channel stands for its cluster), B's and
    C's stay, at concat offsets one lower, and still rank their groups."""
    model, n = dense()
    copy_channels(model, [n["a"], *n["bn_a"], *n["bn1"], *n["bn2"]], 0, [3])
    with_learned(model, n)
    merged, rep = merge_identical(model)
    assert rep["channels_removed"] == 1, rep["groups"]
    doc = read_learned(merged)
    assert [g["members"][0]["tensor"] for g in doc["groups"]] == [n["b"], n["c"]], rep.get("notes")
    assert any("dropped the learned entries of 1 merged group" in note for note in rep["notes"]), rep["notes"]
    assert sorted({m["offset"] for m in entry(merged, n["c"])["members"] if m["axis"] == 1}) == [23]
    res = api.prune(model, merge_identical=0.0, ratio=0.5, importance="learned")
    for b in "bc":
        assert kept(res.report, n[b]) == top(SCORES[b], 4), f"{b.upper()} is ranked by its own learned scores"


def test_clusters_gates_and_keep_ratio_follow_the_kept_channels():
    """C-SGD clusters are renumbered to the kept channels, gates sliced, a keep ratio (a fraction of
    the old width) dropped with a note; an entry of a group the plan does not cut keeps its values."""
    model, n = chain()
    an = api.analyze(model)
    g1, g2 = producer_group(an, n["w1"]), producer_group(an, n["w2"])
    doc = {"schema": "compressor.learned/1", "method": "csgd", "groups": [
        {"members": [{"tensor": n["w1"], "axis": 0, "offset": 0, "inner": 1, "role": "producer"}], "size": 8,
         "importance": list(range(8)), "gates": [0.5 * c for c in range(8)], "keep_ratio": 0.5,
         "clusters": [[0, 3], [1, 5], [2], [4], [6, 7]]}]}
    model.metadata_props.add(key=KEY, value=json.dumps(doc))
    an = api.analyze(model)
    result = apply_plan(an, {g1.id: [0, 3, 5, 6]})
    e = read_learned(result.model)["groups"][0]
    assert e["size"] == 4 and e["importance"] == [0, 3, 5, 6] and e["gates"] == [0.0, 1.5, 2.5, 3.0]
    assert e["clusters"] == [[0, 1], [2], [3]], e["clusters"]
    assert "keep_ratio" not in e and any("keep_ratio" in note for note in result.notes), result.notes
    untouched = apply_plan(an, {g2.id: [0, 1, 2]})
    assert read_learned(untouched.model)["groups"][0]["importance"] == list(range(8)), "other groups keep theirs"


def test_learned_entries_that_match_nothing_are_named_or_refused():
    """Metadata whose members name tensors the model does not have: ``auto`` said "learned" while
    every group was ranked by L2; an explicit ``--importance learned`` went on silently."""
    import pytest

    from compressor.errors import UsageError

    model, names = dense()
    model = with_learned(model, names)
    meta = json.loads(model.metadata_props[0].value)
    for grp in meta["groups"]:
        grp.pop("fingerprint")  # a weight fingerprint would find the producer under any name
        for m in grp["members"]:
            m["tensor"] = "gone_" + m["tensor"]
    model.metadata_props[0].value = json.dumps(meta)
    res = api.prune(model, ratio=0.5)
    assert res.report["importance"] == "l2 (no learned entry matched)"
    assert res.report["options"]["importance"] == "l2"
    with pytest.raises(UsageError, match="none of the model's learned entries matches"):
        api.prune(model, ratio=0.5, importance="learned")
