"""Bounded-Lp gating: exact, frozen zeros appear; folding gates into BN gives the same function."""

from __future__ import annotations

import pytest
import torch

from compressor.train.regularizers import GatedBatchNorm, GroupGates

from ._nets import TinyResNet, ConvNet, convnet_groups, teacher_data, tinyresnet_groups, train


@pytest.mark.parametrize("penalty,lam,sigma", [("l1", 0.5, 0.1), ("bounded_l1", 0.5, 0.5)])
def test_gates_reach_exact_zeros_and_stay_frozen(penalty, lam, sigma):
    """With the proximal step, some gates become exactly 0 and never move again."""
    model = ConvNet()
    reg = GroupGates(model, groups=convnet_groups(model), lam=lam, sigma=sigma, penalty=penalty)
    assert isinstance(model.bn1, GatedBatchNorm) and isinstance(model.bn2, GatedBatchNorm), "BNs must be wrapped"
    data = teacher_data()
    opt = train(model, reg, data, steps=60, lr=0.05)
    frac = reg.zero_fraction()
    assert 0 < frac < 1, f"expected some but not all gates exactly zero, got fraction {frac}"
    zero_before = {n: (w.gate == 0).clone() for n, w in reg.wrappers.items()}
    # keep training with a strong opposite push: frozen gates must stay exactly 0
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(10):
        x, y = data[i % len(data)]
        opt.zero_grad()
        (loss_fn(model(x), y) - 10 * sum(w.gate.sum() for w in reg.wrappers.values())).backward()
        reg.step()
        opt.step()
    for n, w in reg.wrappers.items():
        assert bool((w.gate[zero_before[n]] == 0).all()), f"{n}: a zeroed gate moved after being frozen"
    imp = reg.importance()
    gates = reg.gates()
    for g in reg.groups:
        assert torch.equal(imp[g.id] == 0, gates[g.id] == 0), "importance is 0 exactly where all gates are 0"


def test_bounded_l1_spares_large_gates_more_than_l1():
    """Bounded L1 penalises gates far above sigma much less than L1 does (little shrinkage bias)."""
    shrink = {}
    for penalty in ("l1", "bounded_l1"):
        torch.manual_seed(0)
        model = ConvNet()
        reg = GroupGates(model, groups=convnet_groups(model), lam=0.05, sigma=0.1, penalty=penalty)
        train(model, reg, teacher_data(), steps=20, lr=0.05)
        shrink[penalty] = float(torch.cat([w.gate.detach() for w in reg.wrappers.values()]).mean())
    assert shrink["bounded_l1"] > shrink["l1"] + 0.02, f"mean gate after 20 steps: {shrink}"


def test_folded_model_matches_gated_model_and_zero_channels_output_zero():
    """Deployment fold: gamma*g, beta*g reproduces the gated net; a zero-gate channel is exactly 0."""
    model = TinyResNet()
    reg = GroupGates(model, groups=tinyresnet_groups(model), lam=0.5, sigma=0.1, penalty="l1")
    train(model, reg, teacher_data(), steps=40, lr=0.05)
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        with reg.folded() as plain:
            assert not any(isinstance(m, GatedBatchNorm) for m in plain.modules()), "fold must unwrap"
            got = plain(x)
            dead = plain.bn1.weight == 0
            inner = plain.bn1(plain.conv1(torch.relu(plain.bn(plain.stem(x)))))
        assert isinstance(model.bn1, GatedBatchNorm), "leaving folded() restores the gates"
        after = model(x)
    assert torch.allclose(ref, got, atol=1e-5), "folded model must compute the same function"
    assert torch.allclose(ref, after, atol=0), "unfolding must restore the exact parameters"
    assert bool(dead.any()), "this setting should zero at least one internal gate"
    assert bool((inner[:, dead] == 0).all()), "zero-gate channels must output exactly 0 after folding"


def test_gates_are_added_to_an_existing_optimizer():
    """optimizer= given: gates join it (weight decay 0), so the three-line integration works."""
    model = ConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-4)
    reg = GroupGates(model, groups=convnet_groups(model), optimizer=opt)
    params = {id(p) for grp in opt.param_groups for p in grp["params"]}
    assert all(id(g) in params for g in reg.gate_parameters()), "every gate must be optimised"
    assert opt.param_groups[-1]["weight_decay"] == 0.0, "gates must not be weight-decayed"
