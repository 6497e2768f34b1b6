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


@pytest.mark.filterwarnings("ignore:gates. the bounded-L1 slope")  # sigma 0.1 on purpose: gates >> sigma
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


def test_a_second_regularizer_on_a_gated_model_takes_over_its_gates():
    """Round 2 of an iterative schedule (or a rebuilt regularizer) on a gated model: no second gate
    inside the first; the new regularizer owns the existing gates, so dead channels score 0."""
    model, x = ConvNet(), torch.randn(2, 3, 8, 8)
    first = GroupGates(model, x, lam=0.4, penalty="l1")
    train(model, first, teacher_data(), steps=60, lr=0.05)
    first.detach()
    dead = {name: w.gate_mask == 0 for name, w in first.wrappers.items()}
    assert any(bool(d.any()) for d in dead.values()), "round 1 should freeze some gates at 0"
    second = GroupGates(model, x, lam=0.4, penalty="l1")
    assert type(model.bn1.bn) is torch.nn.BatchNorm2d, f"nested gate wrappers: {model.bn1}"
    assert set(second.wrappers) == {"bn1", "bn2"}, f"gated modules: {set(second.wrappers)}"
    assert all(second.wrappers[n] is w for n, w in first.wrappers.items()), "the existing wrappers must be reused"
    imp = second.importance()
    for g in second.groups:
        (gate,) = [s for s in g.select("param", ("gate",))]
        name = gate.name.rpartition(".")[0]
        assert torch.equal(imp[g.id] == 0, dead[name]), f"{name}: importance {imp[g.id].tolist()}, dead {dead[name].tolist()}"


def test_default_sigma_lets_bounded_l1_reach_exact_zeros():
    """Gates start at 1: with the default sigma (0.5, on the gates' scale) bounded L1 acts from the
    start and reaches exact zeros; at sigma 0.1 its slope at 1 is 4.5e-4, so it did nothing."""
    model = ConvNet()
    reg = GroupGates(model, groups=convnet_groups(model), lam=0.5)
    train(model, reg, teacher_data(), steps=60, lr=0.05)
    assert reg.zero_fraction() > 0, "default bounded-L1 gates should reach some exact zeros"


def test_warns_when_bounded_l1_is_flat_at_the_gates():
    """A sigma far below the gates (slope < 1% of L1's) gets a warning; defaults and L1 do not."""
    import warnings

    model = ConvNet()
    with pytest.warns(UserWarning, match="sigma=0.1"):
        GroupGates(model, groups=convnet_groups(model), sigma=0.1)
    for kwargs in ({}, {"sigma": 0.1, "penalty": "l1"}):
        model = ConvNet()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            GroupGates(model, groups=convnet_groups(model), **kwargs)
