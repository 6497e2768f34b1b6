"""DSA: the implicit keep-probability gradient is right, and training meets the MACs budget."""

from __future__ import annotations

import torch

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
