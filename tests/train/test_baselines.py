"""Baselines: L1-norm importance, network slimming and group lasso reach exact zeros, registry."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import UsageError
from compressor.train import regularizers
from compressor.train.regularizers import GroupLasso, L1Norm, NetworkSlimming

from ._nets import ConvNet, TinyResNet, convnet_groups, teacher_data, tinyresnet_groups, train


def test_registry_lists_every_method_and_rejects_duplicates():
    """Every method is reachable by name; registering a name twice is an error."""
    expected = {"l1", "slimming", "group_lasso", "sfp", "srfp", "asrfp", "csgd", "gates",
                "orthoreg", "increg", "greg1", "greg2"}
    assert expected <= set(regularizers.names()), f"missing: {expected - set(regularizers.names())}"
    with pytest.raises(ValueError):
        regularizers.register("l1")(type("Dup", (regularizers.Regularizer,), {}))
    with pytest.raises(UsageError):
        regularizers.get("nope")


def test_l1_importance_is_filter_l1_summed_over_coupled_producers():
    """L1-norm (Li'17): score = sum |W_f| of the producer kernels; residual groups sum producers."""
    model = TinyResNet()
    reg = L1Norm(model, groups=tinyresnet_groups(model))
    scores = reg.importance()
    want_trunk = model.stem.weight.abs().sum((1, 2, 3)) + model.conv2.weight.abs().sum((1, 2, 3))
    want_inner = model.conv1.weight.abs().sum((1, 2, 3))
    assert torch.allclose(scores[0].float(), want_trunk.detach(), atol=1e-5), "trunk score != sum of producer L1"
    assert torch.allclose(scores[1].float(), want_inner.detach(), atol=1e-5), "internal score != conv1 filter L1"


def test_slimming_proximal_reaches_exact_zero_gammas():
    """Network slimming with the proximal step: some BN gammas are exactly 0; importance = |gamma|."""
    model = ConvNet()
    reg = NetworkSlimming(model, groups=convnet_groups(model)[1:], s=0.25)
    train(model, reg, teacher_data(), steps=100, lr=0.05)
    gamma = model.bn2.weight.detach()
    zeros = int((gamma == 0).sum())
    assert zeros >= 3, f"expected >= 3 exactly-zero gammas out of 8, got {gamma.tolist()}"
    assert zeros < 8, "the penalty should leave the useful channels alive"
    assert torch.equal(reg.importance()[1].float(), gamma.abs()), "importance must be |gamma|"


def test_slimming_subgradient_does_not_give_exact_zeros_but_shrinks():
    """Paper mode (subgradient): gammas shrink but do not hit exact zeros."""
    model = ConvNet()
    before = model.bn1.weight.detach().abs().sum()
    reg = NetworkSlimming(model, groups=convnet_groups(model), s=0.05, proximal=False)
    train(model, reg, teacher_data(), steps=40, lr=0.05)
    after = model.bn1.weight.detach().abs().sum()
    assert after < 0.8 * before, f"gamma L1 should shrink by > 20%: {float(before):.3f} -> {float(after):.3f}"


def test_group_lasso_zeroes_whole_groups_exactly():
    """Group lasso with the block prox: whole channels (kernel, gamma, beta, consumer slice) are exactly 0."""
    model = ConvNet()
    reg = GroupLasso(model, groups=convnet_groups(model), lam=0.3)
    train(model, reg, teacher_data(), steps=100, lr=0.05)
    norms = reg.importance()[0]
    dead = norms == 0
    assert int(dead.sum()) >= 2, f"expected >= 2 exactly-zero channels in group 0, norms={norms.tolist()}"
    idx = torch.nonzero(dead).flatten()
    for t, dim in ((model.conv1.weight, 0), (model.bn1.weight, 0), (model.bn1.bias, 0), (model.conv2.weight, 1)):
        assert bool((t.detach().index_select(dim, idx) == 0).all()), "every slice of a zeroed group must be 0"
    model.eval()
    with torch.no_grad():
        out = torch.relu(model.bn1(model.conv1(torch.randn(2, 3, 8, 8))))
    assert bool((out[:, idx] == 0).all()), "a zeroed group's channel must output exactly 0 (no BN beta left)"


def test_prox_without_optimizer_needs_lr():
    """Without optimizer= and lr=, the proximal step says what is missing."""
    model = ConvNet()
    reg = GroupLasso(model, groups=convnet_groups(model), lam=0.1)
    data = teacher_data(n_batches=1)
    train(model, reg, data, steps=1, attach=False)
    with pytest.raises(UsageError, match="optimizer"):
        reg.importance()
