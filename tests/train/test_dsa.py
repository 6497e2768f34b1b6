"""DSA: the implicit keep-probability gradient is right, and training meets the MACs budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.train.regularizers import DSA
from compressor.train.regularizers.dsa import KeepProbability

from ._nets import TinyResNet, teacher_data, tinyresnet_groups, train


def test_keep_probability_mean_and_implicit_gradient():
    """mean(p) = alpha, and d(sum w_i p_i)/d alpha matches a central finite difference."""
    log_b = torch.log(torch.tensor([0.05, 0.2, 0.5, 1.0, 1.5, 3.0], dtype=torch.float64))
    w = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.0, -0.2], dtype=torch.float64)
    alpha = torch.tensor(0.55, dtype=torch.float64, requires_grad=True)
    p = KeepProbability.apply(alpha, log_b, 1.0)
    assert abs(float(p.detach().mean()) - 0.55) < 1e-9, f"mean(p) must equal alpha, got {float(p.detach().mean())}"
    (w * p).sum().backward()
    h = 1e-5
    f = lambda a: float((w * KeepProbability.apply(torch.tensor(a, dtype=torch.float64), log_b, 1.0)).sum())
    numeric = (f(0.55 + h) - f(0.55 - h)) / (2 * h)
    assert abs(float(alpha.grad) - numeric) < 1e-5, f"implicit grad {float(alpha.grad)} vs numeric {numeric}"


def test_training_meets_the_macs_budget():
    """DSA claim: keep ratios are learned by gradient under the budget: expected MACs end <= budget."""
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    reg = DSA(model, x, groups=tinyresnet_groups(model), budget=0.5)
    start = float(reg.expected_macs_ratio().detach())
    train(model, reg, teacher_data(), steps=80, lr=0.02)
    end = float(reg.expected_macs_ratio().detach())
    assert start > 0.95, f"alpha starts near 1, so expected MACs near full: {start:.3f}"
    assert 0.4 < end <= 0.505, f"expected MACs ratio should settle at the 0.5 budget, got {end:.3f}"
    imp = reg.importance()
    for g, k in zip(reg.groups, reg.keep_counts().values()):
        assert int((imp[g.id] >= 1).sum()) == k, "importance >= 1 marks exactly the kept channels"
    model.eval()
    with torch.no_grad():
        masked = model(x)  # eval: deterministic top-k masks
        with reg.folded() as plain:
            unmasked = plain(x)
    assert not torch.allclose(masked, unmasked), "eval mode must apply the hard masks; folded() removes them"


class _ConcatDepthwise(nn.Module):
    """Branches a, b concatenated -> depthwise 3x3 -> pointwise 1x1 -> pool -> fc.

    The widths are arguments, so the same class builds the pruned net of a keep setting.
    """

    def __init__(self, wa: int = 4, wb: int = 4, wpw: int = 16) -> None:
        super().__init__()
        self.a, self.ba = nn.Conv2d(3, wa, 3, padding=1, bias=False), nn.BatchNorm2d(wa)
        self.b, self.bb = nn.Conv2d(3, wb, 3, padding=1, bias=False), nn.BatchNorm2d(wb)
        c = wa + wb
        self.dw, self.bdw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c)
        self.pw, self.bpw = nn.Conv2d(c, wpw, 1, bias=False), nn.BatchNorm2d(wpw)
        self.fc = nn.Linear(wpw, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.ba(self.a(x))), torch.relu(self.bb(self.b(x)))], 1)
        y = torch.relu(self.bdw(self.dw(y)))
        y = torch.relu(self.bpw(self.pw(y)))
        return self.fc(y.mean((2, 3)))


def _true_macs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one sample, counted layer by layer on the actual (pruned) net."""
    total = 0.0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                h, w = x.shape[2:]  # every conv here keeps the spatial size
                total += h * w * m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.Linear):
                total += m.out_features * m.in_features
    return total


@pytest.mark.parametrize("keep", [(1, 4, 16), (4, 1, 16), (2, 3, 8), (3, 1, 5), (2, 4, 3)])
def test_expected_macs_ratio_is_the_pruned_nets_macs_ratio(keep):
    """With alpha_k = kept_k / C_k, F(alpha)/F(1) equals the true MACs ratio of the net pruned to
    those widths: the depthwise conv scales with the kept channels of both branches, and the
    pointwise conv reading the concat weights each branch by its share of the input."""
    model, x = _ConcatDepthwise(), torch.randn(2, 3, 8, 8)
    reg = DSA(model, x, budget=0.5)
    gid = {s.name.split(".")[0]: g.id for g in reg.groups for s in g.producer_kernels}
    with torch.no_grad():
        for name, kept, full in zip(("a", "b", "pw"), keep, (4, 4, 16)):
            reg.a[gid[name]].fill_(float(torch.logit(torch.tensor(kept / full, dtype=torch.float64))))
    estimate = float(reg.expected_macs_ratio().detach())
    true = _true_macs(_ConcatDepthwise(*keep), x) / _true_macs(_ConcatDepthwise(), x)
    assert abs(estimate - true) < 1e-9, f"keep {keep}: estimated MACs ratio {estimate:.4f}, true {true:.4f}"
