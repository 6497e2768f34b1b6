"""GroupNorm prunes in whole GroupNorm groups (compressor/analysis/rules/groupnorm.py).

Property: removing all C/G channels of a GroupNorm group is exact (the other groups' statistics
never read them), so the pruned model must equal the original with the removed channels zeroed
before every consumer. Each test checks that channels went in whole GroupNorm groups only, that the
group count was rewritten (``num_groups``; the exporters' Reshape target and InstanceNormalization
parameters), that the tool's own proof passed, and, independently of the tool's oracle, that the
pruned model reproduces a masked original built here by zeroing the consumers' input channels.
A GroupNorm with one group is pruned channel by channel instead, its statistics over the kept
channels: tests/core/test_groupnorm_one_group.py.
"""

from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from compressor import api
from compressor.analysis.groups import analyze_index
from compressor.errors import UsageError
from compressor.ir.graph import GraphIndex
from compressor.ir.shapes import resolve_inputs
from compressor.planning.plan import PlanOptions, make_plan
from compressor.surgery.apply import apply_plan
from tests.core.graphs import G, torch_onnx

RATIO_AND_BUDGET = [{"ratio": 0.5}, {"target_macs": 0.6}]


# ---- helpers ---------------------------------------------------------------------------------------

def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _kept(report: dict, tensor: str, size: int, axis: int = 0) -> list[int]:
    """The indices of ``tensor`` along ``axis`` the plan kept (all when it is not sliced)."""
    hit = [s for s in report["plan"] if s["tensor"] == tensor and s["axis"] == axis]
    return sorted(hit[0]["kept"]) if hit else list(range(size))


def _assert_whole_groups(kept: list[int], size: int, f: int, what: str) -> list[int]:
    """Every GroupNorm group of ``f`` channels is kept whole or removed whole, and some went;
    returns the removed channels."""
    kept_set = set(kept)
    for k in range(size // f):
        block = set(range(k * f, (k + 1) * f))
        assert block <= kept_set or not block & kept_set, \
            f"{what}: GroupNorm group {k} (channels {k * f}..{(k + 1) * f - 1}) was cut apart, kept {kept}"
    removed = sorted(set(range(size)) - kept_set)
    assert removed, f"{what}: expected channels removed in whole GroupNorm groups of {f}, none were"
    return removed


def _masked(model: onnx.ModelProto, zero: dict[str, tuple[int, list[int]]]) -> onnx.ModelProto:
    """The original with consumer weights zeroed on the removed input channels: ``zero`` maps a
    weight name to (axis, removed indices)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name in zero:
            axis, removed = zero[t.name]
            a = numpy_helper.to_array(t).copy()
            idx = [slice(None)] * a.ndim
            idx[axis] = removed
            a[tuple(idx)] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return m


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _assert_matches_masked(original: onnx.ModelProto, pruned: onnx.ModelProto, zero) -> None:
    rng = np.random.default_rng(7)
    inp = original.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    for _ in range(2):
        feeds = {inp.name: rng.standard_normal(shape).astype(np.float32)}
        for ref, out in zip(_run(_masked(original, zero), feeds), _run(pruned, feeds)):
            err = np.abs(ref - out).max() / (np.abs(ref).max() + 1e-12)
            assert err <= 1e-5, f"pruned model differs from the masked original by {err:.2e} (relative)"


def _assert_verified(report: dict) -> None:
    v = report["verify"]
    assert v["passed"] and v["max_rel_err"] <= 1e-5, f"the tool's proof must pass at ~1e-6: {v}"


def _built(g: G, y: str, shape: list[int]) -> onnx.ModelProto:
    """``g``'s graph with output ``y`` of ``shape`` declared (onnx's shape inference stops at a
    GroupNormalization, a function op, so G.model cannot always infer it)."""
    out = onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, shape)
    model = onnx.helper.make_model(onnx.helper.make_graph(g.nodes, "test", g.inputs, [out], g.inits),
                                   opset_imports=[onnx.helper.make_opsetid("", g.opset)])
    model.ir_version = 10
    return model


def _node(model: onnx.ModelProto, op_type: str, k: int = 0) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == op_type][k]


def _attr(node: onnx.NodeProto, name: str):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


# ---- GroupNormalization --------------------------------------------------------------------------

def gn_chain(opset: int, c: int = 16, groups: int = 4) -> tuple[onnx.ModelProto, dict]:
    """conv -> GroupNormalization -> relu -> conv; scale/bias of length C (opset 21) or G (18)."""
    g = G(opset=opset)
    x = g.input("x", [1, 3, 8, 8])
    h = g.conv(x, 3, c)
    p = c if opset >= 21 else groups
    h = g.op("GroupNormalization", [h, g.rand(p, positive=True), g.rand(p)], num_groups=groups, epsilon=1e-5)
    y = g.conv(g.op("Relu", [h]), c, 4)
    conv1, conv2 = [n for n in g.nodes if n.op_type == "Conv"]
    return _built(g, y, [1, 4, 8, 8]), {"producer": conv1.input[1], "consumer": conv2.input[1]}


@pytest.mark.parametrize("kwargs", RATIO_AND_BUDGET, ids=["ratio", "target-macs"])
def test_groupnormalization_opset21_prunes_whole_groups(kwargs):
    model, names = gn_chain(21)
    onnx.checker.check_model(model)
    res = api.prune(model, importance="l2", **kwargs)
    r = res.report
    _assert_verified(r)
    kept = _kept(r, names["producer"], 16)
    removed = _assert_whole_groups(kept, 16, 4, "conv -> GroupNorm(4, 16)")
    gn = _node(res.model, "GroupNormalization")
    assert _attr(gn, "num_groups") == len(kept) // 4, "num_groups must be the number of groups kept"
    scale = _weights(res.model)[gn.input[1]]
    assert scale.shape == (len(kept),), "opset 21: scale is per channel, sliced with the channels"
    np.testing.assert_array_equal(scale, _weights(model)[gn.input[1]][kept])
    _assert_matches_masked(model, res.model, {names["consumer"]: (1, removed)})
    if "target_macs" in kwargs:
        assert r["macs_after"] <= 0.6 * r["macs_before"]


def test_groupnormalization_opset18_per_group_parameters():
    """Opset 18's scale/bias hold one entry per group. onnx >= 1.16 marks that op version deprecated
    and its checker refuses such a model outright, although onnxruntime runs it: the tool checks
    the rest of the graph and leaves the op's semantics to its proof (ir.model_io.checkable), so the
    model prunes end to end and is written with opset 18's op as it was."""
    model, names = gn_chain(18)
    with pytest.raises(onnx.checker.ValidationError, match="deprecated"):
        onnx.checker.check_model(model)
    an = analyze_index(GraphIndex(model, resolve_inputs(model, {})))
    blocks = [grp for grp in an.prunable if any(m.tensor == names["producer"] for m in grp.members)]
    assert len(blocks) == 1 and blocks[0].size == 4, "16 channels in GroupNorm groups of 4: a group of 4 blocks"
    gn = _node(model, "GroupNormalization")
    scale = [m for m in blocks[0].members if m.tensor == gn.input[1]]
    assert scale and scale[0].inner == 1, "opset 18: the scale has one entry per block"
    scores = {grp.id: np.arange(grp.size, dtype=float) for grp in an.groups}
    plan = make_plan(an, scores, PlanOptions(ratio=0.5))
    pruned = apply_plan(an, plan.keep).model
    gn2 = _node(pruned, "GroupNormalization")
    assert _attr(gn2, "num_groups") == 2
    w = _weights(pruned)
    assert w[gn2.input[1]].shape == (2,) and w[names["producer"]].shape[0] == 8
    np.testing.assert_array_equal(w[gn2.input[1]], _weights(model)[gn.input[1]][[2, 3]])
    _assert_matches_masked(model, pruned, {names["consumer"]: (1, list(range(8)))})

    res = api.prune(model, ratio=0.5, importance="l2")
    _assert_verified(res.report)
    gn3 = _node(res.model, "GroupNormalization")
    assert gn3.domain == "" and [(i.domain, i.version) for i in res.model.opset_import] == [("", 18)], \
        "the op is written as it was read, at opset 18 (the checker's stand-in domain never leaks)"
    kept = _kept(res.report, names["producer"], 16)
    removed = _assert_whole_groups(kept, 16, 4, "conv -> GroupNorm-18(4, 16)")
    assert _attr(gn3, "num_groups") == len(kept) // 4
    _assert_matches_masked(model, res.model, {names["consumer"]: (1, removed)})


def test_runtime_scale_stays_whole_and_a_single_group_is_pruned_through():
    """A run-time scale cannot be sliced. num_groups=1 normalises over every channel: it is pruned
    with its statistics over the kept channels (a NormPoint, not a widening:
    tests/core/test_groupnorm_one_group.py)."""
    g = G(opset=21)
    x = g.input("x", [1, 3, 8, 8])
    s = g.input("s", [16])
    h = g.conv(x, 3, 16)
    h = g.op("GroupNormalization", [h, g.rand(16, positive=True), g.rand(16)], num_groups=1)
    h = g.conv(g.op("Relu", [h]), 16, 16)
    h = g.op("GroupNormalization", [h, s, g.rand(16)], num_groups=4)
    y = g.conv(h, 16, 4)
    an = api.analyze(g.model([y]))
    reasons = [r for grp in an.groups if grp.size > 1 for r in grp.reasons]
    assert not any("one group" in r for r in reasons), reasons
    assert any("run-time parameter" in r for r in reasons), reasons
    assert len(an.ctx.norm_points) == 1 and not an.ctx.widenings


def residual_gn_block(c: int = 24) -> tuple[onnx.ModelProto, dict]:
    """stem conv -> GN(6 groups of 4) -> relu -> [conv -> GN(8) -> relu -> conv -> GN(4 groups of 6)]
    + stem -> relu -> head: the trunk carries two GroupNorms of different group sizes, so it prunes
    in blocks of lcm(4, 6) = 12 channels."""
    g = G(opset=21)
    x = g.input("x", [1, 3, 8, 8])

    def gn(t, ch, groups):
        return g.op("GroupNormalization", [t, g.rand(ch, positive=True), g.rand(ch)], num_groups=groups)

    stem = g.op("Relu", [gn(g.conv(x, 3, c), c, 6)])
    t = g.op("Relu", [gn(g.conv(stem, c, 32), 32, 8)])
    t = gn(g.conv(t, 32, c), c, 4)
    h = g.op("Relu", [g.op("Add", [stem, t])])
    y = g.conv(h, c, 4)
    convs = [n.input[1] for n in g.nodes if n.op_type == "Conv"]
    return g.model([y]), {"stem": convs[0], "mid": convs[1], "back": convs[2], "head": convs[3]}


@pytest.mark.parametrize("kwargs", RATIO_AND_BUDGET, ids=["ratio", "target-macs"])
def test_residual_block_with_groupnorm(kwargs):
    model, w = residual_gn_block()
    res = api.prune(model, importance="l2", **kwargs)
    r = res.report
    _assert_verified(r)
    trunk_kept = _kept(r, w["stem"], 24)
    assert trunk_kept == _kept(r, w["back"], 24), "the residual sum couples the trunk"
    trunk_removed = _assert_whole_groups(trunk_kept, 24, 12, "trunk (GroupNorm groups of 4 and of 6)")
    mid_kept = _kept(r, w["mid"], 32)
    mid_removed = _assert_whole_groups(mid_kept, 32, 4, "GroupNorm(8, 32)")
    gns = [n for n in res.model.graph.node if n.op_type == "GroupNormalization"]
    assert [_attr(n, "num_groups") for n in gns] == [len(trunk_kept) // 4, len(mid_kept) // 4,
                                                     len(trunk_kept) // 6]
    _assert_matches_masked(model, res.model, {w["mid"]: (1, trunk_removed), w["head"]: (1, trunk_removed),
                                              w["back"]: (1, mid_removed)})


# ---- a Concat before the GroupNorm ---------------------------------------------------------------

def concat_gn(split: tuple[int, int]) -> tuple[onnx.ModelProto, dict]:
    """two convs of ``split`` channels -> Concat -> GroupNorm(4 groups) -> relu -> conv."""
    g = G(opset=21)
    x = g.input("x", [1, 3, 8, 8])
    stem = g.op("Relu", [g.conv(x, 3, 8)])
    a, b = g.conv(stem, 8, split[0]), g.conv(stem, 8, split[1])
    c = sum(split)
    h = g.op("Concat", [a, b], axis=1)
    h = g.op("GroupNormalization", [h, g.rand(c, positive=True), g.rand(c)], num_groups=4)
    y = g.conv(g.op("Relu", [h]), c, 4)
    convs = [n.input[1] for n in g.nodes if n.op_type == "Conv"]
    return g.model([y]), {"stem": convs[0], "a": convs[1], "b": convs[2], "head": convs[3]}


def test_concat_aligned_with_groups_prunes():
    model, w = concat_gn((8, 8))
    res = api.prune(model, ratio=0.5, importance="l2")
    r = res.report
    _assert_verified(r)
    kept_a, kept_b = _kept(r, w["a"], 8), _kept(r, w["b"], 8)
    removed_a = _assert_whole_groups(kept_a, 8, 4, "first concatenated part")
    removed_b = _assert_whole_groups(kept_b, 8, 4, "second concatenated part")
    gn = _node(res.model, "GroupNormalization")
    assert _attr(gn, "num_groups") == (len(kept_a) + len(kept_b)) // 4
    stem_removed = sorted(set(range(8)) - set(_kept(r, w["stem"], 8)))
    _assert_matches_masked(model, res.model, {w["head"]: (1, removed_a + [8 + i for i in removed_b]),
                                              w["a"]: (1, stem_removed), w["b"]: (1, stem_removed)})


def test_concat_misaligned_with_groups_is_frozen_with_reason():
    model, w = concat_gn((6, 10))
    an = api.analyze(model)
    parts = [grp for grp in an.groups
             if any(m.tensor in (w["a"], w["b"]) and m.role == "producer" for m in grp.members)]
    assert len(parts) == 2 and all(not grp.prunable for grp in parts)
    assert all(any("Concat not aligned to the GroupNorm groups" in x and "position 6" in x for x in grp.reasons)
               for grp in parts), [grp.reasons for grp in parts]
    res = api.prune(model, ratio=0.5)
    _assert_verified(res.report)
    assert _kept(res.report, w["stem"], 8) != list(range(8)), "the rest of the model still prunes"


def _emptied_plan(model: onnx.ModelProto, producer: str):
    """A plan that keeps every channel except those of the group ``producer`` writes (none kept)."""
    an = api.analyze(model)
    plan = make_plan(an, {grp.id: np.ones(grp.size) for grp in an.groups}, PlanOptions(ratio=0.0))
    gone = next(grp for grp in an.groups if any(m.tensor == producer and m.role == "producer" for m in grp.members))
    next(d for d in plan.groups if d.id == gone.id).kept = []
    return plan


def test_removing_a_concatenated_part_whole_drops_its_groups():
    """A plan that empties one part of the Concat (--drop-layers' removal) leaves the GroupNorm the
    other part's groups."""
    model, w = concat_gn((8, 8))
    res = api.prune(model, plan_in=_emptied_plan(model, w["a"]))
    _assert_verified(res.report)
    gn = _node(res.model, "GroupNormalization")
    assert _attr(gn, "num_groups") == 2 and _weights(res.model)[gn.input[1]].shape == (8,)
    _assert_matches_masked(model, res.model, {w["head"]: (1, list(range(8)))})


def test_removing_every_group_of_a_groupnorm_removes_the_branch():
    """All of a GroupNorm's groups removed: the residual branch it sits in leaves the graph (its last
    conv becomes its bias, absorbed), as --drop-layers removes a branch. Where a GroupNorm would
    then normalise that constant (a GN after the branch's last conv), the removal is refused and the
    GroupNorm named."""
    g = G(opset=21)
    x = g.input("x", [1, 3, 8, 8])
    stem = g.op("Relu", [g.conv(x, 3, 16)])
    t = g.conv(stem, 16, 32)
    t = g.op("GroupNormalization", [t, g.rand(32, positive=True), g.rand(32)], num_groups=8)
    t = g.conv(g.op("Relu", [t]), 32, 16)
    y = g.conv(g.op("Relu", [g.op("Add", [stem, t])]), 16, 4)
    model = _built(g, y, [1, 4, 8, 8])
    mid, back = [n.input[1] for n in g.nodes if n.op_type == "Conv"][1:3]
    res = api.prune(model, plan_in=_emptied_plan(model, mid))
    _assert_verified(res.report)
    assert not [n for n in res.model.graph.node if n.op_type == "GroupNormalization"], "the branch's GN goes"
    _assert_matches_masked(model, res.model, {back: (1, list(range(32)))})

    model, w = residual_gn_block()
    with pytest.raises(UsageError, match="cannot be removed whole: GroupNormalization.* would compute on a constant"):
        api.prune(model, plan_in=_emptied_plan(model, w["mid"]))


# ---- the torch exporters' GroupNorm (Reshape -> InstanceNormalization -> Reshape -> Mul -> Add) ---

def gn_net():
    """A residual GN network (torch): the trunk through GroupNorm(4, 16) and GroupNorm(8, 16) (groups
    of 4 and 2), a 32-channel branch through GroupNorm(8, 32)."""
    torch = pytest.importorskip("torch")

    class GNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.gn1 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.GroupNorm(4, 16)
            self.c2, self.gn2 = torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.GroupNorm(8, 32)
            self.c3, self.gn3 = torch.nn.Conv2d(32, 16, 1), torch.nn.GroupNorm(8, 16)
            self.head = torch.nn.Conv2d(16, 10, 1)

        def forward(self, x):
            h = torch.relu(self.gn1(self.c1(x)))
            t = torch.relu(self.gn2(self.c2(h)))
            return self.head(torch.relu(h + self.gn3(self.c3(t))))

    return GNNet()


_EXPORTS: dict[str, onnx.ModelProto] = {}


def export_gn(how: str) -> onnx.ModelProto:
    """``how``: "legacy13", "legacy17" (TorchScript exporter) or "dynamo18"."""
    if how not in _EXPORTS:
        torch = pytest.importorskip("torch")
        torch.manual_seed(0)
        net = gn_net().eval()
        with torch.no_grad():  # GroupNorm's affine drawn as in a trained model (not ones/zeros)
            for gn in (net.gn1, net.gn2, net.gn3):
                gn.weight.copy_(torch.rand_like(gn.weight) + 0.5)
                gn.bias.copy_(torch.randn_like(gn.bias))
        _EXPORTS[how] = torch_onnx(net, torch.randn(1, 3, 8, 8), how)
    return _EXPORTS[how]


def _conv_weights(model: onnx.ModelProto) -> list[str]:
    return [n.input[1] for n in model.graph.node if n.op_type == "Conv"]


def _group_counts(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """Per exporter GroupNorm: (G in the first Reshape's target, InstanceNormalization scale length)."""
    w = _weights(model)
    out = []
    for n in model.graph.node:
        if n.op_type == "InstanceNormalization":
            prod = next(p for p in model.graph.node if n.input[0] in p.output)
            assert prod.op_type == "Reshape"
            out.append((int(w[prod.input[1]][1]), w[n.input[1]].shape[0]))
    return out


@pytest.mark.parametrize("kwargs", RATIO_AND_BUDGET, ids=["ratio", "target-macs"])
@pytest.mark.parametrize("how", ["legacy13", "legacy17", "dynamo18"])
def test_torch_groupnorm_export_prunes_whole_groups(how, kwargs):
    model = export_gn(how)
    assert any(n.op_type == "InstanceNormalization" for n in model.graph.node), "the exporter's decomposed form"
    res = api.prune(model, importance="l2", **kwargs)
    r = res.report
    _assert_verified(r)
    c1, c2, c3, head = _conv_weights(model)
    trunk = _kept(r, c1, 16)
    assert trunk == _kept(r, c3, 16)
    trunk_removed = _assert_whole_groups(trunk, 16, 4, "trunk (GroupNorm groups of 4 and 2)")
    branch = _kept(r, c2, 32)
    branch_removed = _assert_whole_groups(branch, 32, 4, "GroupNorm(8, 32)")
    assert _group_counts(res.model) == [(len(trunk) // 4,) * 2, (len(branch) // 4,) * 2, (len(trunk) // 2,) * 2], \
        "each Reshape [N, C, *] -> [N, G, -1] and InstanceNormalization must hold the groups kept"
    _assert_matches_masked(model, res.model, {c2: (1, trunk_removed), head: (1, trunk_removed),
                                              c3: (1, branch_removed)})
    if "target_macs" in kwargs:
        assert r["macs_after"] <= 0.6 * r["macs_before"]


def test_shared_instance_norm_constants_do_not_tie_groupnorms():
    """The dynamo exporter stores ones(G)/zeros(G) once for every GroupNorm with the same G (here
    GroupNorm(8, 32) and GroupNorm(8, 16)); the trunk and the branch must stay separate groups."""
    model = export_gn("dynamo18")
    norms = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    assert norms[1].input[1:] == norms[2].input[1:], "precondition: the exporter shares the constants"
    c1, c2, _, _ = _conv_weights(model)
    an = api.analyze(model)
    owner = {m.tensor: grp.id for grp in an.prunable for m in grp.members if m.role == "producer"}
    assert c1 in owner and c2 in owner and owner[c1] != owner[c2], "trunk and branch must be separate groups"
    res = api.prune(model, ratio=0.5)
    _assert_verified(res.report)
    assert _group_counts(res.model) == [(2, 2), (4, 4), (4, 4)]


@pytest.mark.parametrize("opts", [{"ratio": 0.5, "global_ranking": True}, {"ratio": 0.4, "round_to": 8},
                                  {"target_macs": 0.5, "global_ranking": True, "round_to": 8},
                                  {"ratio": 0.9, "min_channels": 3}],
                         ids=["global", "round-to-8", "budget-global-round-to-8", "min-channels"])
def test_planner_keeps_whole_groups_under_every_option(opts):
    """Blocks of 4 channels with --round-to 8 keep multiples of 8 channels (2 GroupNorm groups);
    --min-channels counts GroupNorm groups, as it counts attention heads."""
    model = export_gn("legacy17")
    res = api.prune(model, importance="l2", **opts)
    r = res.report
    _assert_verified(r)
    c1, c2, _, _ = _conv_weights(model)
    for name, size in ((c1, 16), (c2, 32)):
        kept = _kept(r, name, size)
        if len(kept) < size:
            _assert_whole_groups(kept, size, 4, f"{name} under {opts}")
        if opts.get("round_to") == 8:
            assert len(kept) % 8 == 0, f"--round-to 8 must keep a multiple of 8 channels, kept {len(kept)}"
        if "min_channels" in opts:
            assert len(kept) == 4 * 3, f"--min-channels 3 keeps 3 GroupNorm groups of 4, kept {len(kept)}"
    assert len(_kept(r, c1, 16)) < 16 or len(_kept(r, c2, 32)) < 32


def test_exported_groupnorm_keeps_a_group_it_reads_from_being_removed_whole():
    """In the exporter's form the Reshape back reads Shape(GroupNorm input): a removal of every
    group of that GroupNorm is refused, naming the node (the allocation never offers it)."""
    model = export_gn("legacy17")
    plan = _emptied_plan(model, _conv_weights(model)[1])
    with pytest.raises(UsageError, match="cannot be removed whole: .*gn2.* no channels left"):
        api.prune(model, plan_in=plan)
