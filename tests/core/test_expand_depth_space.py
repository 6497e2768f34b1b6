"""Expand with a shape computed at run time, and DepthToSpace / SpaceToDepth.

Property checked: the group these ops pass channels through is pruned (an Expand of a run-time
shape or a pixel shuffle used to freeze it), and the pruned model computes what the masked original
computes (the removed input channels of every consumer zeroed), at the verification shape and at a
second input shape with another batch and H/W: no shape entry is pinned to the verification shape.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compressor import api
from tests.core._dynamic_graphs import Net, masked_original, run

VERIFY_SHAPE = (2, 3, 16, 16)
SECOND_SHAPE = (3, 3, 24, 12)


def prune_and_compare(model: onnx.ModelProto, pruned_weight: str, multiple: int = 1):
    """Prune at VERIFY_SHAPE; ``pruned_weight`` (a producer) must lose output channels (a multiple
    of ``multiple``), and the pruned model must match the masked original at both shapes."""
    res = api.prune(model, ratio=0.5, importance="l2", input_shapes={"x": VERIFY_SHAPE})
    assert res.report["verify"]["passed"], res.report["verify"]
    assert not res.report["barriers"], f"expected no barrier: {res.report['barriers']}"
    size = next(t.dims[0] for t in model.graph.initializer if t.name == pruned_weight)
    entry = next((e for e in res.report["plan"] if e["tensor"] == pruned_weight and e["axis"] == 0), None)
    assert entry is not None, f"expected '{pruned_weight}' to be pruned; unprunable: {res.report['unprunable']}"
    lost = size - len(entry["kept"])
    assert lost > 0 and lost % multiple == 0, f"'{pruned_weight}' lost {lost} of {size} channels, " \
                                              f"expected a positive multiple of {multiple}"
    for shape in (VERIFY_SHAPE, SECOND_SHAPE):
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        want = run(masked_original(model, res.report["plan"]), x)
        try:
            got = run(res.model, x)
        except Exception as exc:  # noqa: BLE001 - the failure is the finding
            pytest.fail(f"the pruned model does not run at {shape}: {str(exc).splitlines()[0][-200:]}")
        assert got.shape == want.shape, f"at {shape} the pruned model gives {got.shape}, original {want.shape}"
        err = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-12))
        assert err <= 1e-5, f"at {shape} the pruned model differs from the masked original by {err:.2e}"
    return res


# ---- Expand with a shape computed at run time ------------------------------------------------

@pytest.mark.parametrize("shape_from", ["shape_of_y", "gathered", "literal_channels", "where_minus_one"])
def test_se_gate_expanded_to_the_gated_tensor_prunes_the_gated_channels(shape_from):
    """SE block ``y * gate.expand_as(y)``: c1 -> relu -> GlobalAveragePool -> 1x1 conv (the gate)
    -> Expand(shape) -> Mul(y, .) -> conv. The shape is Shape(y) (legacy expand_as), a Concat of
    Shape(y)[k] (``expand(b, c, h, w)``), the same with the channel count written as the literal 8
    (dynamo: surgery restates it), or ``expand(b, -1, h, w)`` through the legacy Where(Equal(s, -1))."""
    g = Net()
    y = g.node("Relu", [g.conv("x", "c1", 3, 8)], "y")
    gate = g.node("Sigmoid", [g.conv(g.node("GlobalAveragePool", [y], "gap"), "fc", 8, 8, k=1)], "gate")
    if shape_from == "shape_of_y":
        shape = g.node("Shape", [y], "shape")
    elif shape_from == "where_minus_one":
        n, h, w = g.dims(y, 0, 2, 3)
        shape = g.keep_minus_one(g.node("Concat", [n, g.const("m1", np.array([-1], np.int64)), h, w], "s", axis=0))
    else:
        n, c, h, w = g.dims(y, 0, 1, 2, 3)
        if shape_from == "literal_channels":
            c = g.const("c_lit", np.array([8], np.int64))
        shape = g.node("Concat", [n, c, h, w], "shape", axis=0)
    gated = g.node("Mul", [y, g.node("Expand", [gate, shape], "e")], "gated")
    prune_and_compare(g.model(g.conv(gated, "out", 8, 4)), "c1_w")


def test_constant_expanded_to_the_shape_of_channels_follows_them():
    """``torch.cat([y, zeros_like(y)], 1)`` (dynamo: Expand(0, Shape(y))) and a per-channel constant
    [1, 8, 1, 1] expanded to Shape(y) and added: the zeros follow y's channel count at run time, the
    constant of full channel length is sliced with y's channels."""
    g = Net()
    y = g.node("Relu", [g.conv("x", "c1", 3, 8)], "y")
    shape = g.node("Shape", [y], "shape")
    zeros = g.node("Expand", [g.const("zero", np.array(0, np.float32)), shape], "zeros")
    bias = g.node("Expand", [g.weight("per_channel", 1, 8, 1, 1), shape], "bias")
    cat = g.node("Concat", [g.node("Add", [y, bias], "yb"), zeros], "cat", axis=1)
    res = prune_and_compare(g.model(g.conv(cat, "out", 16, 4)), "c1_w")
    assert any(e["tensor"] == "per_channel" and e["axis"] == 1 for e in res.report["plan"]), \
        f"expected the per-channel constant to be sliced with y's channels: {res.report['plan']}"


@pytest.mark.parametrize("keep", ["literal_one", "where_minus_one"])
def test_class_token_expanded_to_the_batch_is_sliced_with_the_token_channels(keep):
    """ViT: patch conv -> [N, 8, HW] -> [N, HW, 8]; a class token [1, 1, 8] expanded to the batch
    (``cls.expand(b, -1, -1)``, dynamo writes 1, legacy -1 through Where) is concatenated before the
    patch tokens, then a token MLP. The token channels are pruned and the class token sliced."""
    g = Net()
    p = g.conv("x", "patch", 3, 8, k=4, stride=4)
    flat = g.node("Reshape", [p, g.node("Concat", [g.node("Slice", [g.node("Shape", [p], "psh"),
                                                                     g.const("s0", np.array([0], np.int64)),
                                                                     g.const("s2", np.array([2], np.int64))], "nc"),
                                                   g.const("rest", np.array([-1], np.int64))], "ft", axis=0)], "flat")
    tokens = g.node("Transpose", [flat], "tokens", perm=[0, 2, 1])
    (n,) = g.dims(tokens, 0)
    lit = np.array([1, 1] if keep == "literal_one" else [-1, -1], np.int64)
    shape = g.node("Concat", [n, g.const("keep", lit)], "cls_shape", axis=0)
    if keep == "where_minus_one":
        shape = g.keep_minus_one(shape)
    cls = g.node("Expand", [g.weight("cls", 1, 1, 8), shape], "cls_b")
    t = g.node("Concat", [cls, tokens], "t", axis=1)
    h = g.node("Relu", [g.node("MatMul", [t, g.weight("fc1", 8, 8)], "h1")], "h")
    out = g.node("MatMul", [h, g.weight("fc2", 8, 4)], "out")
    res = prune_and_compare(g.model(out, rank=3), "patch_w")
    assert any(e["tensor"] == "cls" and e["axis"] == 2 for e in res.report["plan"]), \
        f"expected the class token to be sliced with the token channels: {res.report['plan']}"


def test_expand_whose_channel_entry_reads_a_spatial_length_freezes_only_its_group():
    """y [N, 8, H, W] gated by a [N, 8, 1, 1] tensor expanded to [N, Shape(x)[2], H, W]: equal to 8
    only at H = 8, so the gated group stays whole with a reason, while Expand is no barrier and the
    group of another conv still prunes."""
    g = Net()
    y = g.node("Relu", [g.conv("x", "c1", 3, 8)], "y")
    gate = g.node("GlobalAveragePool", [y], "gap")
    n, h, w = g.dims(y, 0, 2, 3)
    (hx,) = g.dims("x", 2)
    gated = g.node("Mul", [y, g.node("Expand", [gate, g.node("Concat", [n, hx, h, w], "s", axis=0)], "e")], "gated")
    z = g.node("Relu", [g.conv(gated, "c2", 8, 8)], "z")
    m = g.model(g.conv(z, "out", 8, 4))
    res = api.prune(m, ratio=0.5, importance="l2", input_shapes={"x": (1, 3, 8, 8)})
    assert res.report["verify"]["passed"], res.report["verify"]
    assert not res.report["barriers"], f"expected no barrier: {res.report['barriers']}"
    frozen = [u for u in res.report["unprunable"] if any("Expand 'e'" in r for r in u["reasons"])]
    assert frozen and frozen[0]["channels"] == 8, f"expected y's group frozen by the Expand: {res.report['unprunable']}"
    assert any(e["tensor"] == "c2_w" and e["axis"] == 0 for e in res.report["plan"]), \
        f"expected c2's group pruned: {res.report['plan']}"


# ---- DepthToSpace / SpaceToDepth ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_prunes_the_upsampler_conv_in_blocks(mode):
    """conv 3 -> 16 -> relu -> DepthToSpace(2) -> conv 4 -> 4: an output channel removed removes its
    4 input channels (DCR: c, 4+c, 8+c, 12+c; CRD: 4c .. 4c+3)."""
    g = Net()
    y = g.node("Relu", [g.conv("x", "c1", 3, 16)], "y")
    up = g.node("DepthToSpace", [y], "up", blocksize=2, mode=mode)
    res = prune_and_compare(g.model(g.conv(up, "out", 4, 4)), "c1_w", multiple=4)
    kept = next(e["kept"] for e in res.report["plan"] if e["tensor"] == "c1_w" and e["axis"] == 0)
    blocks = [[k * 4 + c for c in range(4)] for k in range(4)] if mode == "CRD" else \
        [[c + 4 * k for k in range(4)] for c in range(4)]
    assert all(set(b) <= set(kept) or not set(b) & set(kept) for b in blocks), \
        f"{mode}: kept {kept} splits a block of one output channel"


def test_space_to_depth_repeats_the_channels_of_each_block():
    """conv 3 -> 4 -> relu -> SpaceToDepth(2) -> conv 16 -> 4: each kept channel of c1 appears 4 times."""
    g = Net()
    y = g.node("Relu", [g.conv("x", "c1", 3, 4)], "y")
    down = g.node("SpaceToDepth", [y], "down", blocksize=2)
    res = prune_and_compare(g.model(g.conv(down, "out", 16, 4)), "c1_w")
    kept = next(e["kept"] for e in res.report["plan"] if e["tensor"] == "out_w" and e["axis"] == 1)
    c1 = next(e["kept"] for e in res.report["plan"] if e["tensor"] == "c1_w" and e["axis"] == 0)
    assert kept == [k * 4 + c for k in range(4) for c in c1], f"out's inputs {kept} do not repeat c1's {c1}"


def test_zeros_like_as_constant_of_shape_follows_the_channels():
    """torch's legacy exporter writes ``torch.cat([y, zeros_like(y)], 1)`` as
    ConstantOfShape(Shape(y)): it was a source of untracked channels, so the Concat froze y's
    group (0 of 8 channels removed; the dynamo export, an Expand, pruned 4)."""
    g = Net()
    y = g.node("Relu", [g.conv("x", "c1", 3, 8)], "y")
    zeros = g.node("ConstantOfShape", [g.node("Shape", [y], "shape")], "zeros",
                   value=numpy_helper.from_array(np.array([0.0], np.float32)))
    cat = g.node("Concat", [y, zeros], "cat", axis=1)
    prune_and_compare(g.model(g.conv(cat, "out", 16, 4)), "c1_w")
