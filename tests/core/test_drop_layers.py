"""Groups removed whole (--drop-layers): the layers only they feed leave the graph, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from compressor import api
from compressor.cli import main
from compressor.errors import CompressorError, UsageError
from compressor.planning import PlanOptions, PruningPlan
from compressor.planning.plan import GroupDecision, signature
from compressor.surgery.drop import removable_groups, removal_blocker, removal_effect
from tests.core.graphs import G


def resnetish(blocks: int = 1, tail: str = "gemm"):
    """stem -> [conv3x3 -> relu -> conv3x3(bias) -> + identity -> relu] x blocks -> the tail:
    "gemm" (pool -> flatten -> gemm) or "conv3x3" (a padded 3x3 conv, which no per-channel constant
    passes exactly: it reaches the border padding differently)."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 8)])
    for _ in range(blocks):
        b = g.conv(g.op("Relu", [g.conv(h, 8, 6)]), 6, 8)
        h = g.op("Relu", [g.op("Add", [h, b])])
    if tail == "conv3x3":
        return g.model([g.conv(h, 8, 4)])
    if tail == "pool-sigmoid":
        return g.model([g.op("Sigmoid", [g.op("GlobalAveragePool", [h])])])
    p = g.op("Flatten", [g.op("GlobalAveragePool", [h])])
    return g.model([g.op("Gemm", [p, g.rand(5, 8), g.rand(5, base="b")], transB=1)])


def bottleneckish(remove_first: bool = True):
    """stem -> relu -> two post-activation blocks [conv1x1 -> relu -> conv1x1(bias) -> + identity
    -> relu] -> BatchNormalization -> a padded 3x3 conv."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 8)])
    for _ in range(2):
        b = g.conv(g.op("Relu", [g.conv(h, 8, 6, k=1)]), 6, 8, k=1)
        h = g.op("Relu", [g.op("Add", [h, b])])
    return g.model([g.conv(g.bn(h, 8), 8, 4)])


def densenetish(bottleneck: bool = True):
    """A DenseNet block: each layer BN-ReLU-conv1x1-BN-ReLU-conv3x3 (without ``bottleneck``:
    BN-ReLU-conv3x3) on the concat of all before."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    feats = [g.conv(x, 3, 8)]
    c = 8
    for _ in range(3):
        h = g.op("Relu", [g.bn(g.op("Concat", feats, axis=1) if len(feats) > 1 else feats[0], c)])
        if bottleneck:
            h = g.op("Relu", [g.bn(g.conv(h, c, 12, k=1, bias=False), 12)])
        feats.append(g.conv(h, 12 if bottleneck else c, 4, bias=False))
        c += 4
    cat = g.op("Concat", feats, axis=1)
    return g.model([g.conv(g.op("Relu", [g.bn(cat, c)]), c, 5, k=1)])


def mlp_block():
    """A ConvNeXt-style MLP in NHWC with a layer scale, added back to its NCHW input."""
    g = G()
    x = g.input("x", [1, 8, 4, 4])
    t = g.op("Transpose", [g.conv(x, 8, 8)], perm=[0, 2, 3, 1])
    h = g.op("Relu", [g.op("Add", [g.op("MatMul", [t, g.rand(8, 16)]), g.rand(16, base="b")])])
    h = g.op("Mul", [g.op("Add", [g.op("MatMul", [h, g.rand(16, 8)]), g.rand(8, base="b")]), g.rand(8, base="s")])
    y = g.op("Add", [x, g.op("Transpose", [h], perm=[0, 3, 1, 2])])
    return g.model([g.conv(y, 8, 3, k=1)])


def plan_removing(model, pick) -> PruningPlan:
    """A plan that keeps no channel of the groups ``pick(group)`` selects."""
    an = api.analyze(model)
    return PruningPlan(PlanOptions(), [GroupDecision(g.id, g.size, [] if pick(g) else list(range(g.size)), signature(g))
                                       for g in an.groups])


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_residual_branch_becomes_its_bias():
    m = resnetish(tail="conv3x3")
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.size == 6))
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] < 1e-5
    assert ops(res.model).count("Conv") == 2  # the stem and the tail: both branch convs left
    # relu(relu(stem) + b) became relu(stem + min(b, 0)) + max(b, 0): the block's convs, its Relu
    # and the Add of the negative part left (that part went into the stem's bias)
    assert r["removed_whole"] == {"groups": 1, "nodes": 4}
    assert ops(res.model).count("Relu") == 1
    add = next(n for n in res.model.graph.node if n.op_type == "Add")
    inits = {t.name: t for t in res.model.graph.initializer}
    assert sum(i in inits for i in add.input) == 1  # identity + the second conv's bias, a constant
    assert list(inits[next(i for i in add.input if i in inits)].dims) == [1, 8, 1, 1]
    assert r["macs_after"] < r["macs_before"] / 2


def test_the_constant_left_goes_down_through_pool_flatten_and_gemm():
    """relu(stem + min(b, 0)) + max(b, 0) -> pool -> flatten -> gemm: the mean of x + c is
    mean(x) + c, a flatten of (1, C, 1, 1) flattens c with it, and the gemm takes W @ c into its
    bias. The removed block leaves nothing."""
    m = resnetish()
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.size == 6))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    assert ops(res.model) == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    assert res.report["removed_whole"] == {"groups": 1, "nodes": 5}


def test_a_constant_carried_past_a_pool_stops_where_nothing_takes_it():
    """max(b, 0) goes past the global average pool (an Add over 8 values instead of 8x8x8) and
    stops at the Sigmoid; the planner's simulation sees that Add left too."""
    m = _with_branch_bias(resnetish(tail="pool-sigmoid"), 1.0)
    an = api.analyze(m)
    block = next(g for g in an.prunable if g.size == 6)
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.id == block.id))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    assert ops(res.model) == ["Conv", "Relu", "GlobalAveragePool", "Add", "Sigmoid"]
    eff = removal_effect(an, {block.id})
    assert eff.nodes == res.report["removed_whole"]["nodes"] and len(eff.left) == 1 and eff.made == 1


def test_the_constant_left_goes_down_into_a_1x1_conv_and_the_next_residual_branch():
    """A removed bottleneck block's max(b, 0) is read by the next block's 1x1 conv (bias + W @ b)
    and its residual sum (b joins the other branch's last conv bias): nothing is left of it. After
    the last block, a BatchNormalization takes it into its mean."""
    m = _with_branch_bias(bottleneckish(), 1.0, dims=[8, 6, 1, 1])
    an = api.analyze(m)
    inner = sorted(g.id for g in an.prunable if g.size == 6)
    assert len(inner) == 2
    for removed, adds in (({inner[0]}, 1), ({inner[1]}, 1), (set(inner), 0)):
        res = api.prune(m, plan_in=plan_removing(m, lambda g, removed=removed: g.id in removed))
        assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5, removed
        assert ops(res.model).count("Add") == adds, (removed, ops(res.model))  # the kept block's sum
        eff = removal_effect(an, removed)
        assert eff.nodes == res.report["removed_whole"]["nodes"]  # the planner predicts it


def test_dense_layer_leaves_the_concat():
    m = densenetish()
    an = api.analyze(m)
    outs = [g for g in an.prunable if g.size == 4]  # each layer's new features
    assert outs and all(removal_blocker(an, {g.id}) is None for g in outs)
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.id == outs[1].id))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    assert ops(res.model).count("Conv") == ops(m).count("Conv") - 2
    assert ops(res.model).count("BatchNormalization") == ops(m).count("BatchNormalization") - 2
    # its input concat (read by it alone), BN, ReLU, conv1x1, BN, ReLU, conv3x3
    assert res.report["removed_whole"]["nodes"] == 7


def test_mlp_constant_is_carried_through_bias_scale_and_transpose():
    m = mlp_block()
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.size == 16))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    assert "MatMul" not in ops(res.model) and "Transpose" not in ops(res.model)
    # x + b is left where the branch met the graph input, which has no producer to take b: b goes
    # on down into the 1x1 conv after it, as that conv's bias + W @ b
    assert ops(res.model) == ["Conv"]


def test_several_groups_removed_at_once_and_widths_elsewhere():
    m = resnetish(blocks=3)
    an = api.analyze(m)
    inner = [g.id for g in an.prunable if g.size == 6]
    assert len(inner) == 3 and removal_blocker(an, set(inner)) is None
    plan = PruningPlan(PlanOptions(), [GroupDecision(g.id, g.size, [] if g.id in inner[:2] else
                                                     (list(range(0, g.size, 2)) if g.id == inner[2] else
                                                      list(range(g.size))), signature(g)) for g in an.groups])
    res = api.prune(m, plan_in=plan)
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    assert ops(res.model).count("Conv") == 3 and res.report["removed_whole"]["groups"] == 2


def test_unremovable_group_is_refused_clearly():
    m = resnetish()
    an = api.analyze(m)
    trunk = next(g for g in an.prunable if g.size == 8)
    why = removal_blocker(an, {trunk.id})
    assert why and "graph output" in why  # the whole trunk would leave: the logits a constant
    assert removable_groups(an) == [g.id for g in an.prunable if g.size == 6]
    with pytest.raises(CompressorError, match="cannot be removed whole"):
        api.prune(m, plan_in=plan_removing(m, lambda g: g.id == trunk.id))


def test_allocation_drops_groups_when_widths_alone_cannot_reach_the_budget():
    m = resnetish(blocks=3)
    # every group keeps at least a quarter of its channels without --drop-layers (0.096 of the MACs)
    with pytest.raises(UsageError, match="unreachable"):
        api.prune(m, target_macs=0.05, sensitivity=True)
    res = api.prune(m, target_macs=0.05, sensitivity=True, drop_layers=True)
    r = res.report
    assert r["verify"]["passed"] and r["macs_after"] <= 0.05 * r["macs_before"]
    assert r["removed_whole"]["groups"] >= 1 and r["options"]["drop_layers"] is True
    # what is removed whole was probed with all of its channels gone
    sens = r["budget"]["sensitivity"]["per_group"]
    removed = [d.id for d in res.plan.groups if d.size and not d.kept]
    assert all(1.0 in sens[str(gid)]["removed"] for gid in removed)


def test_drop_layers_needs_an_allocated_budget():
    with pytest.raises(UsageError, match="--drop-layers"):
        api.prune(resnetish(), ratio=0.5, drop_layers=True)
    with pytest.raises(UsageError, match="--drop-layers"):
        api.prune(resnetish(), target_macs=0.5, drop_layers=True)


def test_cli_drop_layers(tmp_path):
    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(resnetish(blocks=3), src)
    out = tmp_path / "small.onnx"
    r = CliRunner().invoke(main, [str(src), "-o", str(out), "--target-macs", "0.05", "--sensitivity",
                                  "--drop-layers"])
    assert r.exit_code == 0, r.output
    assert "removed whole:" in r.output and out.exists()
    r = CliRunner().invoke(main, [str(src), "-o", str(out), "--ratio", "0.5", "--drop-layers"])
    assert r.exit_code == 2 and "--drop-layers" in r.output


def test_plan_file_round_trip_keeps_an_emptied_group(tmp_path):
    m = resnetish()
    plan = plan_removing(m, lambda g: g.size == 6)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    res = api.prune(m, plan_in=str(path))
    assert res.report["removed_whole"]["groups"] == 1 and res.report["verify"]["passed"]
    assert np.isclose(res.report["verify"]["max_rel_err"], 0.0, atol=1e-5)


@pytest.mark.parametrize("build,size", [(resnetish, 6), (densenetish, 4), (mlp_block, 16),
                                        (lambda: convnext_stage(3, "ln"), 16), (lambda: convnext_stage(2, "bn"), 16)])
def test_planned_cost_counts_what_the_removal_takes_out(build, size):
    """plan_cost (what MACs/params budgets are checked on) agrees with the pruned model's own count,
    layers taken out by a removal (a DenseNet layer's conv1x1, an MLP's first MatMul) included."""
    from compressor.ir.graph import GraphIndex
    from compressor.metrics import count
    from compressor.planning.budget import plan_cost
    from compressor.surgery.drop import removal_effect

    m = build()
    plan = plan_removing(m, lambda g: g.size == size and g.id == min(x.id for x in api.analyze(m).prunable
                                                                         if x.size == size))
    res = api.prune(m, plan_in=plan)
    an = api.analyze(m)
    macs, params = plan_cost(an, plan.keep)
    got_macs, got_params, _ = count(GraphIndex(res.model, an.index.spec))
    assert (macs, params) == (got_macs, got_params)
    eff = removal_effect(an, {gid for gid, kept in plan.keep.items() if not kept})
    assert eff.why is None and eff.nodes == res.report["removed_whole"]["nodes"]


def test_allocator_predicts_what_a_removal_takes_out():
    """Removing a DenseNet layer's new features takes its conv1x1, BNs and ReLUs with it: the
    allocation's prediction drops by those too, not only by the layers the group touches."""
    from compressor.importance import score_groups
    from compressor.planning.allocate import Allocator
    from compressor.bench.layers import measure_table
    from tests.core.test_latency_table import _bilinear_timer

    m = densenetish()
    an = api.analyze(m)
    scores = score_groups(an, "l2")
    table = measure_table(an, 17, _bilinear_timer, reference_ms=5.0, step=1, floor=lambda n: max(1, n // 4))
    alloc = Allocator(an, scores, PlanOptions(round_to=1, drop_layers=True), table)
    out = [g for g in an.prunable if g.size == 4][1]
    dense = dict(alloc.dense)
    removed = {**dense, out.id: 0}
    gone_layers = alloc._gone(removed)
    assert len(gone_layers) == 2  # conv3x3 (its producer) and conv1x1 before it
    touching = sum(table.layer_ms(table.layers[i], *table.layers[i].channels(dense)) for i in alloc.touch[out.id])
    saved = alloc.predict(dense) - alloc.predict(removed)
    assert saved > touching - table.layer_ms(table.layers[alloc.touch[out.id][-1]],
                                             *table.layers[alloc.touch[out.id][-1]].channels(dense))
    layers_left = sum(table.layer_ms(lyr, *lyr.channels(removed)) for i, lyr in enumerate(table.layers)
                      if i not in gone_layers)
    assert alloc.predict(removed) - layers_left < table.rest(removed)  # its BN/ReLU elements left the rest
    assert alloc.removable(out.id, dense) and 0 in alloc._steps(out.id, dense)


def test_a_removal_that_leaves_an_add_is_charged_for_it():
    """The Add a removed block leaves before a padded conv is a kernel of its own where the dense
    model fused a residual sum: removal_effect names the tensor it writes, the table times it at
    each residual sum's shape (leftover_probe with and without it), and the allocation's
    prediction carries it. A removal that leaves nothing is charged nothing."""
    import dataclasses

    from compressor.bench.layers import measure_table
    from compressor.importance import score_groups
    from compressor.planning.allocate import Allocator
    from tests.core.test_latency_table import _bilinear_timer

    def timer(model) -> float:
        if model.graph.name == "leftover_probe":
            return 0.5 if any(n.op_type == "Add" and "k" in n.input for n in model.graph.node) else 0.2
        return _bilinear_timer(model)

    for sign, tail, left in ((1.0, "conv3x3", 1), (-1.0, "conv3x3", 0), (1.0, "gemm", 0)):
        m = _with_branch_bias(resnetish(tail=tail), sign)
        an = api.analyze(m)
        block = next(g for g in an.prunable if g.size == 6)
        assert len(removal_effect(an, {block.id}).left) == left, (sign, tail)
        table = measure_table(an, 17, timer, reference_ms=5.0, step=1, floor=lambda n: max(1, n // 4),
                              leftovers=True)
        assert table.leftover == {(1, 8, 8, 8): pytest.approx(0.3)}
        opts = PlanOptions(round_to=1, drop_layers=True)
        charged = Allocator(an, score_groups(an, "l2"), opts, table)
        bare = Allocator(an, score_groups(an, "l2"), opts, dataclasses.replace(table, leftover={}))
        removed = {**charged.dense, block.id: 0}
        assert charged.predict(removed) - bare.predict(removed) == pytest.approx(0.3 * left)
        assert charged.predict(charged.dense) == bare.predict(bare.dense)


def _with_branch_bias(model, sign: float, dims=(8, 6, 3, 3)):
    """``model`` with its blocks' last conv biases (weights of ``dims``) set to |b| * sign."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Conv" and list(inits[n.input[1]].dims) == list(dims):
            b = numpy_helper.to_array(inits[n.input[2]])
            inits[n.input[2]].CopyFrom(numpy_helper.from_array(np.abs(b) * sign + 0.1 * sign, n.input[2]))
    return m


@pytest.mark.parametrize("sign, left", [(-1.0, ["Conv", "Relu"]), (1.0, ["Conv", "Relu", "Add"])])
def test_a_removed_post_activation_block_leaves_at_most_one_add(sign, left):
    """relu(relu(y) + b) = relu(y + min(b, 0)) + max(b, 0): with b <= 0 the block leaves nothing
    (b went into the stem's bias), with b >= 0 one Add and no second Relu (a padded 3x3 conv
    after it: the Add cannot go on down)."""
    m = _with_branch_bias(resnetish(tail="conv3x3"), sign)
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.size == 6))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    assert ops(res.model) == left + ["Conv"]


def test_removed_blocks_after_a_kept_one_go_into_its_branch_bias():
    """Two post-activation blocks, the second removed: relu(relu(a + s) + b) with a the kept
    branch's conv; min(b, 0) passes the residual sum into that conv's bias; and with both blocks
    removed the two constants merge first."""
    m = _with_branch_bias(resnetish(blocks=2), -1.0)
    an = api.analyze(m)
    last = max(g.id for g in an.groups if g.size == 6)
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.id == last))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    assert ops(res.model).count("Relu") == 3 and "Add" in ops(res.model)  # stem, kept block (2): nothing of the removed one
    assert ops(res.model).count("Add") == 1  # the kept block's residual sum only
    both = api.prune(m, plan_in=plan_removing(m, lambda g: g.size == 6))
    assert both.report["verify"]["passed"] and both.report["verify"]["max_rel_err"] < 1e-5
    assert ops(both.model) == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]


def test_inspect_says_which_groups_can_go_whole(tmp_path):
    import json

    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(resnetish(), src)
    info = api.inspect(str(src))
    by_size = {g["size"]: g for g in info["group_list"] if g["prunable"]}
    assert by_size[6]["removable_whole"] and by_size[6]["removal"] == {"nodes": 5}  # the block, both Adds
    assert not by_size[8]["removable_whole"] and "graph output" in by_size[8]["removal"]["blocked_by"]
    r = CliRunner().invoke(main, ["inspect", str(src)])
    assert r.exit_code == 0 and "whole" in r.output
    assert json.loads(CliRunner().invoke(main, ["inspect", str(src), "--json"]).output)["group_list"]


def test_a_layer_left_with_no_input_blocks_the_removal():
    """DenseNet without bottlenecks: removing the stem's features leaves the first layer's conv
    reading nothing; its output (a constant) cannot enter the concat, so that removal is refused;
    the layers' own features can go (the densenet40 reference model found this)."""
    m = densenetish(bottleneck=False)
    an = api.analyze(m)
    stem = next(gr.id for gr in an.prunable if gr.size == 8)
    layers = sorted(gr.id for gr in an.prunable if gr.size == 4)
    assert all(removal_blocker(an, {gid}) is None for gid in layers)
    why = removal_blocker(an, {stem})
    assert why and "concatenate a constant" in why
    with pytest.raises(CompressorError, match="concatenate a constant"):
        api.prune(m, plan_in=plan_removing(m, lambda gr: gr.id == stem))
    res = api.prune(m, plan_in=plan_removing(m, lambda gr: gr.id in layers[:2]))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5


def convnext_stage(blocks: int = 2, stem: str = "conv", sub: bool = False):
    """A stem, then ``blocks`` ConvNeXt-style MLP blocks (NHWC, layer scale) added back to their
    NCHW input, then a 1x1 conv. ``stem``: "conv" (a conv with bias), "conv-nobias", "bn" (conv
    then BatchNormalization) or "ln" (conv, then a LayerNormalization over channels in NHWC
    between two transposes, as torchvision's LayerNorm2d). ``sub``: the blocks subtract."""
    g = G()
    x = g.input("x", [1, 3, 6, 6])
    h = g.conv(x, 3, 8, bias=stem != "conv-nobias")
    if stem == "bn":
        h = g.bn(h, 8)
    elif stem == "ln":
        t = g.op("Transpose", [h], perm=[0, 2, 3, 1])
        h = g.op("Transpose", [g.op("LayerNormalization", [t, g.rand(8, base="s", positive=True), g.rand(8, base="b")],
                                    axis=-1, epsilon=1e-5)], perm=[0, 3, 1, 2])
    for _ in range(blocks):
        t = g.op("Transpose", [h], perm=[0, 2, 3, 1])
        m = g.op("Relu", [g.op("Add", [g.op("MatMul", [t, g.rand(8, 16)]), g.rand(16, base="b")])])
        m = g.op("Mul", [g.op("Add", [g.op("MatMul", [m, g.rand(16, 8)]), g.rand(8, base="b")]), g.rand(8, base="s")])
        h = g.op("Sub" if sub else "Add", [h, g.op("Transpose", [m], perm=[0, 3, 1, 2])])
    return g.model([g.conv(h, 8, 3, k=1)])


@pytest.mark.parametrize("stem", ["conv", "conv-nobias", "bn", "ln"])
@pytest.mark.parametrize("sub", [False, True])
def test_removed_blocks_constants_are_absorbed_into_the_bias_before(stem, sub):
    m = convnext_stage(2, stem, sub)
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.size == 16))
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] < 1e-5
    kinds = ops(res.model)
    assert "Add" not in kinds and "Sub" not in kinds and "MatMul" not in kinds
    assert kinds.count("Transpose") == (2 if stem == "ln" else 0)
    assert r["removed_whole"]["groups"] == 2


def test_a_constant_after_a_sum_of_live_tensors_goes_down():
    m = convnext_stage(2)
    an = api.analyze(m)
    second = [g.id for g in an.prunable if g.size == 16][1]
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.id == second))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    # the first block's MLP keeps its two bias Adds and its residual Add; the second block's
    # "+ b" follows that residual Add (no bias there to take it) and goes on down into the 1x1 conv
    assert ops(res.model).count("Add") == 3


def test_a_concat_left_with_one_input_is_bypassed():
    m = densenetish()
    an = api.analyze(m)
    first = min(g.id for g in an.prunable if g.size == 4)  # the first layer's new features
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.id == first))
    assert res.report["verify"]["passed"] and res.report["verify"]["max_rel_err"] < 1e-5
    concats = [n for n in res.model.graph.node if n.op_type == "Concat"]
    assert concats and all(len(n.input) >= 2 for n in concats)
    assert "Identity" not in ops(res.model)
    assert len(concats) == ops(m).count("Concat") - 1  # the second layer's input was [stem, first]


def test_a_split_output_is_not_removed_alone():
    """A Split whose one output would lose every channel: the Split would still write it (found by
    the property test). Such a removal is refused with its reason, and every group that
    removable_groups offers really removes."""
    from tests.core.test_property import build

    m = build([("split", 2)], 0)
    an = api.analyze(m)
    refused = [removal_blocker(an, {g.id}) for g in an.prunable]
    assert any(r and "multi-output" in r for r in refused), refused
    for gid in removable_groups(an):
        res = api.prune(m, plan_in=plan_removing(m, lambda g, gid=gid: g.id == gid))
        assert res.report["verify"]["passed"] and res.report["removed_whole"]["groups"] == 1


def test_widths_with_held_removals_narrow_around_them_and_remove_nothing_else():
    from compressor.bench.layers import measure_table
    from compressor.importance import score_groups
    from compressor.planning.allocate import Allocator, TableKnob
    from tests.core.test_latency_table import _bilinear_timer

    an = api.analyze(resnetish(blocks=3))
    scores = score_groups(an, "l2")
    table = measure_table(an, 17, _bilinear_timer, reference_ms=5.0, step=1, floor=lambda n: max(1, n // 4))
    alloc = Allocator(an, scores, PlanOptions(round_to=1, drop_layers=True), table)
    free, _ = alloc.widths_for(0.2)
    removed = frozenset(g for g, w in free.items() if w == 0)
    assert len(removed) >= 2, "the free allocation removes blocks at this budget"
    one = frozenset([sorted(removed)[0]])
    start = alloc.predict({**alloc.dense, **{g: 0 for g in one}}) / alloc.dense_ms
    for f in (0.25, 0.4, start - 0.02):
        widths, achieved = alloc.widths_for(f, one)
        assert {g for g, w in widths.items() if w == 0} == one
        assert achieved <= f + 1e-9 or achieved == pytest.approx(alloc.widths_for(0.0, one)[1])
    assert alloc.widths_for(0.99, one)[1] == pytest.approx(start), "above its start: the held removals alone"
    knob = TableKnob(alloc)
    plan, _ = knob.at(0.2)
    assert knob.hold_removals(plan) and not knob.hold_removals(plan), "held once"
    assert {g.id for g in knob.at(0.3)[0].groups if not g.kept} == removed
    assert knob.details()["held_removals"] == len(removed)
    assert not TableKnob(Allocator(an, scores, PlanOptions(round_to=1), table)).hold_removals(plan)


def _absorb_bare(graph, outputs: list[str], shapes: dict) -> int:
    """absorb_constant_adds on a bare graph: the constants it writes become the graph's initializers."""
    from onnx import numpy_helper

    from compressor.surgery.absorb import absorb_constant_adds

    def replace_input(node, k, value):
        name = f"{node.output[0]}_in{k}_{len(graph.initializer)}"
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        node.input[k] = name

    def add_input(node, value):
        node.input.append("")
        replace_input(node, len(node.input) - 1, value)

    return absorb_constant_adds(graph, outputs, shapes.get, replace_input, add_input)


@pytest.mark.parametrize("in_body", [False, True])
def test_a_constant_read_inside_a_control_flow_body_stays(in_body):
    """absorb_constant_adds on a bare graph: relu(x) + c read by a 1x1 conv goes into its bias;
    when an If's branch also reads it by name (which cannot be rewired), the Add stays."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), "c"),
             numpy_helper.from_array(rng.standard_normal((3, 4, 1, 1)).astype(np.float32), "w")]
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Add", ["h", "c"], ["z"]),
             helper.make_node("Conv", ["z", "w"], ["y"], kernel_shape=[1, 1])]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 2, 2])]
    if in_body:
        body = helper.make_graph([helper.make_node("Identity", ["z"], ["b"])], "body", [],
                                 [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1, 4, 2, 2])])
        inits.append(numpy_helper.from_array(np.array(True), "cond"))
        nodes.append(helper.make_node("If", ["cond"], ["o"], then_branch=body, else_branch=body))
        outputs.append(helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [1, 4, 2, 2]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 2, 2])],
                              outputs, initializer=inits)
    shapes = {"x": (1, 4, 2, 2), "h": (1, 4, 2, 2), "z": (1, 4, 2, 2), "y": (1, 3, 2, 2)}

    removed = _absorb_bare(graph, ["z"], shapes)
    assert removed == (0 if in_body else 1)
    assert [n.op_type for n in graph.node][:3] == (["Relu", "Add", "Conv"] if in_body else ["Relu", "Conv"])


@pytest.mark.parametrize("bias", ["absent", "empty", "present"])
@pytest.mark.parametrize("group", [1, 2])
def test_a_constant_goes_down_into_a_1x1_conv_whatever_its_bias_slot(bias, group):
    """relu(x) + c read by a 1x1 conv (grouped or not) becomes the conv's bias + W @ c: the bias
    input made, filled or summed, and the output the same (onnxruntime, before and after)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), "c"),
             numpy_helper.from_array(rng.standard_normal((6, 4 // group, 1, 1)).astype(np.float32), "w")]
    conv_in = ["z", "w"] + {"absent": [], "empty": [""], "present": ["b"]}[bias]
    if bias == "present":
        inits.append(numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"))
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Add", ["h", "c"], ["z"]),
         helper.make_node("Conv", conv_in, ["y"], kernel_shape=[1, 1], group=group)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 3, 3])], initializer=inits)

    def run(g) -> np.ndarray:
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        x = np.random.default_rng(2).standard_normal((1, 4, 3, 3)).astype(np.float32)
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(graph)

    shapes = {"x": (1, 4, 3, 3), "h": (1, 4, 3, 3), "z": (1, 4, 3, 3), "y": (1, 6, 3, 3)}
    assert _absorb_bare(graph, ["z"], shapes) == 1
    conv = graph.node[-1]
    assert [n.op_type for n in graph.node] == ["Relu", "Conv"] and len(conv.input) == 3 and conv.input[0] == "h"
    np.testing.assert_allclose(run(graph), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", ["absent", "empty"])
def test_a_constant_goes_up_into_a_conv_with_no_bias(bias):
    """conv(x) + c with no bias, or an empty bias slot: the conv's bias becomes c, in slot 2."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 6, 1, 1)).astype(np.float32), "c"),
             numpy_helper.from_array(rng.standard_normal((6, 4, 1, 1)).astype(np.float32), "w")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"] + ([""] if bias == "empty" else []), ["h"], kernel_shape=[1, 1]),
         helper.make_node("Add", ["h", "c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 3, 3])], initializer=inits)

    shapes = {"x": (1, 4, 3, 3), "h": (1, 6, 3, 3), "y": (1, 6, 3, 3)}
    assert _absorb_bare(graph, ["y"], shapes) == 1
    (conv,) = graph.node
    assert len(conv.input) == 3 and conv.output[0] == "y"
    got = numpy_helper.to_array(next(t for t in graph.initializer if t.name == conv.input[2]))
    np.testing.assert_array_equal(got, numpy_helper.to_array(inits[0]).reshape(6))


def test_a_group_read_inside_a_control_flow_body_is_not_removed():
    """Removing the 6-channel layer makes the next conv's output a constant (its bias), and a
    subgraph reads that by name: there is no input slot to rewrite, so the group cannot go whole
    (it used to be offered and then fail the surgery: exit 1)."""
    from onnx import TensorProto, helper

    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 6)])
    r = g.op("Relu", [g.conv(h, 6, 6)])
    body = lambda op: helper.make_graph([helper.make_node(op, [r], ["t"])], op, [],  # noqa: E731
                                        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    cond = g.op("Greater", [g.op("ReduceSum", [x], keepdims=0), g.const(np.float32(0.0))])
    i = g.op("If", [cond], then_branch=body("Relu"), else_branch=body("Neg"))
    m = g.model([g.conv(i, 6, 4, k=1)])
    an = api.analyze(m)
    six = next(gr for gr in an.prunable if gr.size == 6)  # the first conv's (the If freezes the second's)
    why = removal_blocker(an, {six.id})
    assert why and "inside a subgraph" in why
    assert six.id not in removable_groups(an)
    res = api.prune(m, target_macs=0.5, sensitivity=True, drop_layers=True)
    assert res.report["verify"]["passed"] and res.report["removed_whole"]["groups"] == 0


def test_a_dead_layer_removed_whole_leaves_with_its_group():
    """A conv whose output nothing reads: its group costs nothing, so an allocation removes it
    whole; the dead conv then goes too (it used to stay, writing a tensor with no channels)."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Relu", [g.conv(x, 3, 8)])
    g.conv(h, 8, 6)  # dead: read by nothing
    m = g.model([g.conv(g.op("Relu", [g.conv(h, 8, 8)]), 8, 4, k=1)])
    an = api.analyze(m)
    six = next(gr for gr in an.prunable if gr.size == 6)
    effect = removal_effect(an, {six.id})
    assert effect.why is None and effect.nodes == 1
    res = api.prune(m, plan_in=plan_removing(m, lambda gr: gr.size == 6))
    assert res.report["verify"]["passed"] and ops(res.model).count("Conv") == 3
    assert res.report["removed_whole"] == {"groups": 1, "nodes": 1}
    res = api.prune(m, target_macs=0.3, sensitivity=True, drop_layers=True)
    assert res.report["verify"]["passed"]


def test_a_group_a_layernorm_normalises_is_not_removed_whole():
    """Channels made by a MatMul in NHWC and normalised by a LayerNorm pruned through: removing
    them whole would leave the LayerNorm nothing to normalise (the oracle raised: exit 1; found
    by random-graph fuzzing)."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    t = g.op("Transpose", [x], perm=[0, 2, 3, 1])
    n = g.op("LayerNormalization", [g.op("MatMul", [t, g.rand(3, 12)]), g.rand(12, positive=True), g.rand(12)],
             axis=-1)
    h = g.op("Transpose", [n], perm=[0, 3, 1, 2])
    m = g.model([g.conv(g.op("Relu", [g.conv(h, 12, 8, k=1)]), 8, 3, k=1)])
    an = api.analyze(m)
    twelve = next(gr for gr in an.prunable if gr.size == 12)
    why = removal_blocker(an, {twelve.id})
    assert why and "would be left with none" in why
    res = api.prune(m, target_macs=0.4, sensitivity=True, drop_layers=True)
    assert res.report["verify"]["passed"]


def test_a_dead_branch_off_a_removed_layer_goes_with_it():
    """A dead branch (nothing reads its output: valid ONNX) off a layer whose group is removed
    whole: its padded conv stayed, reading a tensor no longer computed, and the run failed shape
    inference (reported as a failed proof, exit 3). Found by random-graph fuzzing."""
    import json

    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda n, *s: numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w1"], ["b"]),
             helper.make_node("Conv", ["b", "wd"], ["dead"], pads=[1, 1, 1, 1]),  # nothing reads it
             helper.make_node("Relu", ["dead"], ["dead2"]),  # ... nor this
             helper.make_node("Conv", ["a", "w2"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "wfc"], ["y"])]
    g = helper.make_graph(nodes, "dead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                          [w("w0", 8, 3, 3, 3), w("w1", 8, 8, 1, 1), w("wd", 6, 8, 3, 3), w("w2", 8, 8, 1, 1),
                           w("wfc", 8, 5)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    plan = json.loads(api.prune(m, ratio=0.0).plan.to_json())
    for grp in plan["groups"]:
        if grp["signature"] == ["w1:0:0", "wd:1:0"]:
            grp["kept"] = []
    plan["options"]["drop_layers"] = True
    res = api.prune(m, plan_in=api.PruningPlan.from_dict(plan))
    assert res.report["verify"]["passed"] and res.report["removed_whole"]["groups"] == 1
    assert not {"b", "dead", "dead2"} & {o for n in res.model.graph.node for o in n.output}


def test_a_bias_that_takes_a_removed_blocks_constant_keeps_its_name():
    """The stem's bias absorbs the removed block's constant: the new value is written under the old
    name (it used to come out renamed '<bias>__prunedN'), and no initializer name is invented where
    an old one was free again."""
    m = resnetish(tail="conv3x3")
    before = {t.name for t in m.graph.initializer}
    res = api.prune(m, plan_in=plan_removing(m, lambda g: g.size == 6))
    assert res.report["verify"]["passed"]
    stem = next(n for n in res.model.graph.node if n.op_type == "Conv")
    assert stem.input[2] == m.graph.node[0].input[2], list(stem.input)
    names = {t.name for t in res.model.graph.initializer}
    assert not any("__pruned" in n for n in names), sorted(names - before)
