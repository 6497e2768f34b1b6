"""Property: for random CNN graphs (branches, residuals, concats, splits, depthwise and grouped
convs, SE blocks) and random plans, the pruned model reproduces the masked original."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor import api
from tests.core.graphs import G

BLOCKS = ["cbr", "res", "concat", "dw", "split", "se", "grouped"]
# blocks a removal (surgery/drop.py) and the absorption of its constants (surgery/absorb.py) meet
DROP_BLOCKS = BLOCKS + ["mlp", "mlp-sub", "resplain", "ln"] + ["mlp", "resplain", "res"] * 2  # removable ones often


def build(blocks: list[tuple[str, int]], seed: int):
    g = G(seed=seed)
    x = g.input("x", [1, 3, 8, 8])
    h, c = g.cbr(x, 3, 8), 8
    for kind, width in blocks:
        if kind == "cbr":
            h, c = g.cbr(h, c, width), width
        elif kind == "res":
            h = g.op("Relu", [g.op("Add", [h, g.bn(g.conv(g.cbr(h, c, width), width, c, bias=False), c)])])
        elif kind == "concat":
            a, b = g.cbr(h, c, width), g.cbr(h, c, 2 + width // 2)
            h, c = g.op("Concat", [a, b], axis=1), width + 2 + width // 2
        elif kind == "dw":
            h = g.op("Relu", [g.conv(h, c, c, group=c)])
        elif kind == "split" and c % 2 == 0:
            a, b = g.op("Split", [h, g.const(np.array([c // 2, c // 2], dtype=np.int64))], n_out=2, axis=1)
            h = g.op("Concat", [g.cbr(b, c // 2, width), g.op("Sigmoid", [a])], axis=1)
            c = width + c // 2
        elif kind == "se":
            s = g.op("GlobalAveragePool", [h])
            s = g.op("HardSigmoid", [g.conv(g.op("Relu", [g.conv(s, c, 4, k=1)]), 4, c, k=1)])
            h = g.op("Mul", [h, s])
        elif kind == "grouped" and c % 2 == 0:
            h, c = g.op("Relu", [g.conv(h, c, 2 * width, group=2)]), 2 * width
        elif kind in ("mlp", "mlp-sub"):  # ConvNeXt-style: NHWC MLP with a layer scale, added back
            t = g.op("Transpose", [h], perm=[0, 2, 3, 1])
            m = g.op("Relu", [g.op("Add", [g.op("MatMul", [t, g.rand(c, width)]), g.rand(width, base="b")])])
            m = g.op("Mul", [g.op("Add", [g.op("MatMul", [m, g.rand(width, c)]), g.rand(c, base="b")]),
                             g.rand(c, base="s")])
            h = g.op("Sub" if kind == "mlp-sub" else "Add", [h, g.op("Transpose", [m], perm=[0, 3, 1, 2])])
        elif kind == "resplain":  # a residual without the ReLU after the sum
            h = g.op("Add", [h, g.bn(g.conv(g.cbr(h, c, width), width, c, bias=False), c)])
        elif kind == "ln":  # LayerNorm over the channels, between transposes (torchvision's LayerNorm2d)
            t = g.op("Transpose", [h], perm=[0, 2, 3, 1])
            t = g.op("LayerNormalization", [t, g.rand(c, base="s", positive=True), g.rand(c, base="b")], axis=-1)
            h = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [h])], axis=1)
    y = g.op("Gemm", [f, g.rand(10, c), g.rand(10)], transB=1)
    return g.model([y])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(st.tuples(st.sampled_from(BLOCKS), st.integers(2, 10)), min_size=1, max_size=5),
    seed=st.integers(0, 1000),
    ratio=st.floats(0.0, 0.9),
    global_ranking=st.booleans(),
    round_to=st.sampled_from([1, 2, 4]),
    importance=st.sampled_from(["random", "l2", "l1", "bn"]),
)
def test_random_graphs_prune_exactly(blocks, seed, ratio, global_ranking, round_to, importance):
    model = build(blocks, seed)
    res = api.prune(model, ratio=ratio, global_ranking=global_ranking, round_to=round_to,
                    importance=importance, seed=seed)
    v = res.report["verify"]
    assert v["passed"] and v["max_rel_err"] <= 1e-4, f"blocks={blocks}: {v}"
    assert res.report["macs_after"] <= res.report["macs_before"]


def test_kept_count_equals_the_number_of_kept_positions():
    """layout.kept_count (the shape path of the surgery and of every MACs count) agrees with
    len(positions) for every tensor and axis under random plans of a concat/flatten model."""
    import numpy as np

    from compressor import api
    from compressor.analysis.layout import kept_count, positions
    from compressor.importance import score_groups
    from compressor.planning import PlanOptions, make_plan
    from tests.core.test_latency_table import branchy

    an = api.analyze(branchy())
    scores = score_groups(an, "l2")
    rng = np.random.default_rng(0)
    for _ in range(5):
        plan = make_plan(an, scores, PlanOptions(ratio=float(rng.uniform(0.1, 0.7)), global_ranking=True))
        for tensor, axes in an.ctx.layout_map.items():
            for ax, lay in axes.items():
                pos = positions(an.ctx.table, lay, plan.keep)
                assert kept_count(an.ctx.table, lay, plan.keep) == (None if pos is None else len(pos)), tensor


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(st.tuples(st.sampled_from(DROP_BLOCKS), st.integers(2, 10)), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_random_graphs_with_groups_removed_whole_prune_exactly(blocks, seed, data):
    """Any set of groups that can be removed together, with random widths elsewhere: the removal,
    the constants carried to the live tensors and absorbed into the biases before them, and the
    concats bypassed all reproduce the masked original."""
    from compressor.planning import PlanOptions, PruningPlan
    from compressor.planning.plan import GroupDecision, signature
    from compressor.surgery.drop import removable_groups, removal_blocker

    model = build(blocks, seed)
    an = api.analyze(model)
    candidates = removable_groups(an)
    chosen: set[int] = set()
    for gid in data.draw(st.permutations(candidates)):
        if data.draw(st.booleans()) and removal_blocker(an, chosen | {gid}) is None:
            chosen.add(gid)
    rng = np.random.default_rng(seed)
    decisions = []
    for g in an.groups:
        if g.id in chosen:
            kept = []
        elif g.prunable and rng.random() < 0.5:
            kept = sorted(rng.choice(g.size, size=int(rng.integers(1, g.size + 1)), replace=False).tolist())
        else:
            kept = list(range(g.size))
        decisions.append(GroupDecision(g.id, g.size, kept, signature(g)))
    res = api.prune(model, plan_in=PruningPlan(PlanOptions(), decisions), seed=seed)
    v = res.report["verify"]
    assert v["passed"] and v["max_rel_err"] <= 1e-4, f"blocks={blocks} removed={sorted(chosen)}: {v}"
    assert res.report["removed_whole"]["groups"] == len(chosen)
