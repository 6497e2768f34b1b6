"""IncReg and GReg: the targeted channels' norms fall by orders of magnitude, the kept ones' do not."""

from __future__ import annotations

import math

import torch
from torch import nn

from compressor.train.groups import make_group
from compressor.train.regularizers import GReg1, GReg2, IncReg

from ._nets import ConvNet, convnet_groups, teacher_data


def _filter_norms(model: ConvNet) -> dict[int, torch.Tensor]:
    return {0: model.conv1.weight.detach().flatten(1).norm(dim=1).clone(),
            1: model.conv2.weight.detach().flatten(1).norm(dim=1).clone()}


def _run(model, reg, steps, lr=0.05, stop=None):
    data = teacher_data()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    reg.attach(opt)
    loss_fn = nn.CrossEntropyLoss()
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        reg.step()
        opt.step()
        if stop is not None and stop():
            return i + 1
    return steps


def test_increg_pushes_exactly_the_target_count_to_the_ceiling_and_shrinks_them():
    """IncReg: ceil(ratio*N) channels per group reach the ceiling; their norms fall >= 100x, kept ones stay."""
    model = ConvNet()
    before = _filter_norms(model)
    reg = IncReg(model, groups=convnet_groups(model), prune_ratio=0.5, unit=0.15, ceiling=3.0, zero_at_ceiling=False)
    _run(model, reg, 200)
    assert reg.done, f"all targets should be reached, pruned counts {[int(v.sum()) for v in reg.pruned.values()]}"
    after = _filter_norms(model)
    for gid in (0, 1):
        pruned = reg.pruned[gid]
        assert int(pruned.sum()) == 4, f"group {gid}: exactly 4 of 8 channels must be pruned"
        fall = (before[gid][pruned] / after[gid][pruned]).min()
        assert fall >= 100, f"group {gid}: pruned norms must fall >= 100x, fell {float(fall):.1f}x"
        kept = (after[gid][~pruned] / before[gid][~pruned]).min()
        assert kept >= 0.3, f"group {gid}: kept norms must not collapse, min ratio {float(kept):.3f}"
        imp = reg.importance()[gid]
        assert float(imp[pruned].max()) < float(imp[~pruned].min()), "pruned channels must score lowest"


def test_increg_increment_profile():
    """Delta(0) = A, Delta(N_c) = uA, Delta(N_p) = 0, negative beyond N_p (relief for important channels)."""
    model = ConvNet()
    reg = IncReg(model, groups=convnet_groups(model), unit=1.0, u=0.25)
    n_p = 5
    alpha = math.log(2 / 0.25) / n_p
    n_c = -math.log(0.25) / alpha
    d = reg.increment(torch.tensor([0.0, n_c, float(n_p), n_p + 1.0], dtype=torch.float64), n_p)
    assert abs(float(d[0]) - 1.0) < 1e-9 and abs(float(d[1]) - 0.25) < 1e-9, f"got {d.tolist()}"
    assert abs(float(d[2])) < 1e-9 and float(d[3]) < 0, f"got {d.tolist()}"


def test_increg_zero_at_ceiling_gives_exact_zeros():
    """Paper mode: a channel at the ceiling is zeroed and stays zero under momentum."""
    model = ConvNet()
    reg = IncReg(model, groups=convnet_groups(model), prune_ratio=0.25, unit=0.2, ceiling=1.0)
    _run(model, reg, 60)
    w = model.conv1.weight.detach().flatten(1)
    assert bool((w[reg.pruned[0]] == 0).all()) and int(reg.pruned[0].sum()) == 2, "2 filters exactly zero"


def test_greg1_grows_penalty_until_magnitude_ratio_and_kept_survive():
    """GReg-1: the picked (lowest-magnitude) channels fall >= 100x in norm; kept channels keep their norm."""
    model = ConvNet()
    before = _filter_norms(model)
    reg = GReg1(model, groups=convnet_groups(model), prune_ratio=0.5, delta=0.1, update_interval=1,
                ceiling=4.0, stabilize_steps=100)
    initial_pick = {gid: v.clone() for gid, v in reg.pruned.items()}
    steps = _run(model, reg, 300, lr=0.05, stop=lambda: reg.done)
    assert reg.done, f"GReg-1 should finish within 300 steps (phase {reg.phase}, ratios {reg.mag_ratio})"
    after = _filter_norms(model)
    for gid in (0, 1):
        pruned = reg.pruned[gid]
        assert torch.equal(pruned, initial_pick[gid]), "GReg-1 never changes its pick"
        fall = (before[gid][pruned] / after[gid][pruned]).min()
        assert fall >= 100, f"group {gid}: pruned norms fell only {float(fall):.1f}x in {steps} steps"
        kept = (after[gid][~pruned] / before[gid][~pruned]).min()
        assert kept >= 0.3, f"group {gid}: kept norms must not collapse, min ratio {float(kept):.3f}"


class _Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.lin(x)


def test_greg2_pick_is_hessian_aware():
    """GReg-2 claim: after uniform growth, magnitude reflects curvature. Two outputs with high loss weight
    (curvature) and slightly smaller weights vs two with tiny curvature: GReg-1 picks by magnitude (the
    important ones), GReg-2 picks the low-curvature ones, whose removal costs far less loss."""
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(4, 8, generator=gen)
    target = target / target.norm(dim=1, keepdim=True) * torch.tensor([[0.9], [0.9], [1.0], [1.0]])
    h = torch.tensor([1.0, 1.0, 0.01, 0.01])
    xs = [torch.randn(64, 8, generator=gen) for _ in range(8)]

    def loss_of(w, x):
        return ((x @ w.T - x @ target.T) ** 2 * h).sum(1).mean()

    picks = {}
    for cls, kw in ((GReg1, {}), (GReg2, {"delta_pick": 0.002, "pick_ceiling": 0.1})):
        model = _Lin()
        with torch.no_grad():
            model.lin.weight.copy_(target)
        group = make_group(model, 0, producers=["lin.weight"])
        reg = cls(model, groups=[group], prune_ratio=0.5, update_interval=1, delta=0.01, stabilize_steps=0, **kw)
        opt = torch.optim.SGD(model.parameters(), lr=0.4)
        reg.attach(opt)
        for i in range(80):
            opt.zero_grad()
            loss_of(model.lin.weight, xs[i % 8]).backward()
            reg.step()
            opt.step()
        picks[cls.__name__] = torch.nonzero(reg.pruned[0]).flatten().tolist()
    assert picks["GReg1"] == [0, 1], f"magnitude pick should take the smaller rows: {picks}"
    assert picks["GReg2"] == [2, 3], f"Hessian-aware pick should take the low-curvature rows: {picks}"

    def removal_cost(rows):
        w = target.clone()
        w[rows] = 0
        return float(sum(loss_of(w, x) for x in xs))

    assert removal_cost(picks["GReg2"]) < 0.1 * removal_cost(picks["GReg1"]), "GReg-2's pick must cost less loss"
