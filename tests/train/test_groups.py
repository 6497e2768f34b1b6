"""groups.py: torch groups come from the project's ONNX analysis, mapped back to parameters and buffers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.train.groups import export_proto, from_model, make_group
from compressor.train.regularizers import CentripetalSGD, GroupGates

from ._nets import ConcatNet, ConvNet, TinyResNet, teacher_data, train

pytest.importorskip("compressor.api")


def _by_producers(groups):
    return {tuple(sorted(s.name for s in g.producer_kernels)): g for g in groups if g.prunable}


def test_export_keeps_names_and_leaves_model_state_untouched():
    """Training-mode export keeps BN nodes and torch names; running stats and train flag are restored."""
    model = TinyResNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    proto = export_proto(model, torch.randn(2, 3, 8, 8))
    names = {i.name for i in proto.graph.initializer}
    assert {"bn1.running_mean", "bn1.weight", "stem.weight", "fc.weight"} <= names, f"torch names lost: {names}"
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 3, "every BN must survive export"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "export must not change running statistics"
    assert model.training, "export must restore train mode"


def test_eval_export_undoes_initializer_dedup():
    """Eval export merges equal tensors (fresh BN gammas) behind Identity; export_proto restores one per name."""
    model = TinyResNet()
    proto = export_proto(model, torch.randn(1, 3, 8, 8), training=False)
    names = [i.name for i in proto.graph.initializer]
    for bn in ("bn", "bn1", "bn2"):
        assert f"{bn}.weight" in names and f"{bn}.bias" in names, f"{bn} params must be initializers: {names}"
    assert not any(n.op_type == "Identity" for n in proto.graph.node), "dedup Identity nodes must be gone"


def test_resnet_groups_from_the_analysis():
    """Residual trunk: stem and the block's last conv share one group with both BNs; conv1 is internal."""
    model = TinyResNet()
    groups = _by_producers(from_model(model, torch.randn(2, 3, 8, 8)))
    trunk = groups[("conv2.weight", "stem.weight")]
    inner = groups[("conv1.weight",)]
    names = {s.name: s for s in trunk.slices}
    assert {"bn.weight", "bn2.bias", "bn2.running_var"} <= set(names), f"trunk BN tensors missing: {sorted(names)}"
    assert names["conv1.weight"].role == "consumer" and names["conv1.weight"].dim == 1, "conv1 consumes the trunk"
    assert names["fc.weight"].dim == 1, "the classifier consumes the trunk along its input axis"
    assert names["bn2.running_mean"].tensor is model.bn2.running_mean, "buffers map to the live tensors"
    assert names["stem.weight"].tensor is model.stem.weight, "parameters map to the live tensors"
    assert inner.size == 8 and {s.name for s in inner.slices} >= {"bn1.weight", "conv2.weight"}


def test_concat_groups_have_offsets_and_prelu_maps_through_unsqueeze():
    """Concat: branch b's channels sit at offset 4 of bn/prelu/mix; PReLU's Unsqueeze maps to act.weight."""
    model = ConcatNet()
    groups = _by_producers(from_model(model, torch.randn(2, 3, 8, 8)))
    b = {s.name: s for s in groups[("b.weight",)].slices}
    assert b["bn.weight"].offset == 4 and b["mix.weight"].offset == 4, f"offsets: {[(n, s.offset) for n, s in b.items()]}"
    assert "act.weight" in b and b["act.weight"].tensor is model.act.weight, "PReLU slope must map through Unsqueeze"
    head = {s.name: s for s in groups[("mix.weight",)].slices}
    assert head["fc.weight"].inner == 16, "flatten after a 4x4 pool: 16 features per channel"


def test_csgd_default_path_on_resnet_ties_the_whole_trunk():
    """C-SGD built from (model, example_input): one partition across the coupled trunk producers."""
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    reg = CentripetalSGD(model, x, keep_ratio=0.5, centri_strength=0.5)
    assert len(reg.groups) == 2, f"expected trunk + internal group, got {[g.id for g in reg.groups]}"
    train(model, reg, teacher_data(), steps=120, lr=0.05)
    trunk = next(g for g in reg.groups if len(g.producer_kernels) == 2)
    for members in reg.clusters()[trunk.id]:
        for name in ("stem.weight", "conv2.weight", "bn2.weight"):
            t = dict(model.named_parameters())[name].detach()
            spread = float((t[members] - t[members].mean(0)).abs().max())
            assert spread < 1e-3, f"{name}: cluster {members} not tied (spread {spread:.2e})"


def test_gates_default_path_on_concat_model():
    """Gates from (model, example_input) on a concat net: a BN spanning two groups gets one gate tensor."""
    model = ConcatNet()
    reg = GroupGates(model, torch.randn(2, 3, 8, 8), lam=0.3, sigma=0.1, penalty="l1")
    assert set(reg.wrappers) == {"bn", "bn2"}, f"gated BNs: {set(reg.wrappers)}"
    gate_slices = [s for g in reg.groups for s in g.select("param", ("gate",))]
    assert sorted((s.name, s.offset) for s in gate_slices) == [("bn.gate", 0), ("bn.gate", 4), ("bn2.gate", 0)]
    train(model, reg, teacher_data(), steps=5, lr=0.05)
    assert set(reg.importance()) == {g.id for g in reg.groups}


def test_make_group_validates_names_and_sizes():
    """Hand-made groups: unknown names and out-of-range slices are errors."""
    model = ConvNet()
    with pytest.raises(KeyError):
        make_group(model, 0, producers=["nope.weight"])
    with pytest.raises(ValueError):
        make_group(model, 0, producers=["conv1.weight"], consumers=[("fc.weight", 1, 4)])


class _LiteralScale(torch.nn.Module):
    """A per-channel literal in forward becomes an ONNX Constant: no torch tensor behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.conv(x) * torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1))


def test_constant_members_are_noted_not_mapped():
    """Members that are ONNX Constants (literals) are skipped with a note; the rest of the group maps."""
    model = _LiteralScale()
    groups = _by_producers(from_model(model, torch.randn(1, 3, 8, 8)))
    g = groups[("conv.weight",)]
    assert {s.name for s in g.slices} >= {"conv.weight", "conv.bias", "head.weight"}, [s.name for s in g.slices]
    assert all(s.name in dict(model.named_parameters()) for s in g.slices), "only real tensors become slices"
    assert any("ONNX Constant" in n for n in g.notes), f"the literal must be reported: {g.notes}"


def test_groups_of_a_network_whose_last_map_is_1x1_from_a_batch_of_one():
    """BatchNorm in training mode cannot trace a batch of 1 on a 1x1 map (VGG on 28x28 ends at
    1x1); the analysis export widens the example batch instead of failing."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = from_model(model, torch.zeros(1, 1, 6, 6))
    assert sorted(g.size for g in groups if g.prunable) == [8, 8]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "BN statistics untouched"
