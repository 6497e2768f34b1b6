"""SFP, SRFP, ASRFP: per-epoch selection of the weakest filters, zeroed (SFP) or softly scaled (SRFP)."""

from __future__ import annotations

import math

import torch

from compressor.train.regularizers import ASRFP, SRFP, SoftFilterPruning
from compressor.train.regularizers.asrfp import _X

from ._nets import ConvNet, convnet_groups, teacher_data, train


def _zero_filters(model):
    return [int((model.conv1.weight.detach().flatten(1).abs().sum(1) == 0).sum()),
            int((model.conv2.weight.detach().flatten(1).abs().sum(1) == 0).sum())]


def test_sfp_zeroes_the_weakest_each_epoch_and_lets_them_regrow():
    """SFP: floor(P*C) lowest-L2 filters are zeroed at init and every epoch end; in between they regrow."""
    model = ConvNet()
    with torch.no_grad():  # BN beta > 0 as in a trained net, else ReLU'(0) = 0 blocks every gradient
        model.bn1.bias.fill_(0.1)
        model.bn2.bias.fill_(0.1)
    norms = model.conv1.weight.detach().flatten(1).norm(dim=1)
    reg = SoftFilterPruning(model, groups=convnet_groups(model), prune_ratio=0.3)
    assert _zero_filters(model) == [2, 2], "floor(0.3*8) = 2 filters per group zeroed before training"
    assert set(torch.argsort(norms)[:2].tolist()) == set(torch.nonzero(reg.selected[0]).flatten().tolist()), \
        "the zeroed filters must be the two smallest L2 norms"
    train(model, reg, teacher_data(), steps=3, attach=False)
    assert _zero_filters(model) == [0, 0], "zeroed filters must regrow while training (soft pruning)"
    reg.epoch_end()
    assert _zero_filters(model) == [2, 2], "the epoch end zeroes 2 filters per group again"
    imp = reg.importance()
    assert bool((imp[0][reg.selected[0]] == 0).all()), "importance of zeroed filters is 0"


def test_sfp_producer_scope_zeroes_bn_too():
    """scope='producers': BN gamma/beta of the selected channels are zeroed too (exact zero output)."""
    model = ConvNet()
    with torch.no_grad():
        model.bn1.bias.fill_(0.5)
    reg = SoftFilterPruning(model, groups=convnet_groups(model), prune_ratio=0.25, scope="producers")
    sel = reg.selected[0]
    assert bool((model.bn1.bias.detach()[sel] == 0).all()) and bool((model.bn1.bias.detach()[~sel] == 0.5).all()), \
        "BN beta must be zeroed exactly on the selected channels"


def test_srfp_scales_softly_then_zeroes_at_the_last_epoch():
    """SRFP: selected filters are multiplied by alpha_t = 1 - t/T (not zeroed) until the last epoch."""
    model = ConvNet()
    reg = SRFP(model, groups=convnet_groups(model), prune_ratio=0.5, epochs=4)
    assert _zero_filters(model) == [0, 0], "SRFP does not zero at init (alpha_0 = 1)"
    w = model.conv1.weight.detach().clone()
    reg.epoch_end()
    sel = reg.selected[0]
    assert torch.allclose(model.conv1.weight.detach()[sel], 0.75 * w[sel]), "epoch 1 of 4: selected filters x0.75"
    assert torch.equal(model.conv1.weight.detach()[~sel], w[~sel]), "unselected filters untouched"
    data = teacher_data()
    for _ in range(3):
        train(model, reg, data, steps=2, attach=False)
        reg.epoch_end()
    assert _zero_filters(model) == [4, 4], "after the last epoch floor(0.5*8) filters per group are exactly 0"


def test_asrfp_rate_rises_asymptotically():
    """ASRFP: the pruned fraction is 0 at t=0, 3P/4 at T/4 and P at T, increasing in between."""
    assert abs(1 + _X + _X**2 + _X**3 - 4 / 3) < 1e-12, "x must solve 1 + x + x^2 + x^3 = 4/3"
    model = ConvNet()
    reg = ASRFP(model, groups=convnet_groups(model), prune_ratio=0.5, epochs=8)
    g = reg.groups[0]
    rates = [reg.ratio_at(g, t) for t in range(9)]
    assert rates[0] == 0 and math.isclose(rates[2], 0.375, rel_tol=1e-9) and math.isclose(rates[8], 0.5, rel_tol=1e-9), rates
    assert all(a <= b for a, b in zip(rates, rates[1:])), f"rates must not decrease: {rates}"
    for _ in range(8):
        reg.epoch_end()
    assert _zero_filters(model) == [4, 4], "the final epoch ends with floor(P*C) exact zeros"
