"""Does OrthoReg make per-filter loss changes add up? A small probe of the seed claim.

OrthoReg's premise (../shared/methods.md, section 1): with correlated filters the loss change of
removing a *set* of filters is not the sum of the single-filter changes (cross terms); orthonormal
filters make them additive, so summed per-filter scores rank groups correctly.

Setup: the tests' ConvNet (conv 3->8, conv 8->8, pool, linear), conv2's filters initialised
strongly correlated (one shared filter + 0.3 noise), trained on a noisy regression teacher (MSE,
so the loss does not saturate at 0) with plain SGD or with OrthoReg (same seed, same steps). Then
for every set S of 3 of conv2's 8 channels (removed exactly: their BN scale and shift zeroed), the
true loss change dL(S) against the sum of the single-channel changes:

    additivity error = sum_S |dL(S) - sum_f dL(f)| / sum_S |dL(S)|
    Pearson / Spearman = correlation of dL(S) and sum_f dL(f) over the sets (values / ranks)
    choice rank = where the set with the smallest sum ranks by its true dL(S) (0 best, 1 worst)

    .venv/bin/python tools/orthoreg_additivity.py [--lam 1] [--steps 200] [--seeds 4] [--width 8] [--k 3]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compressor.train.regularizers import OrthoReg  # noqa: E402
from tests.train._nets import ConvNet, convnet_groups  # noqa: E402


def regression_data(seed: int = 0, n_batches: int = 8, batch: int = 32):
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(6, 4))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, 3, 8, 8, generator=g)
        with torch.no_grad():
            y = teacher(x) + 0.3 * torch.randn(batch, 4, generator=g)
        out.append((x, y))
    return out


def loss(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(nn.functional.mse_loss(model(x), y, reduction="sum")) for x, y in data) / \
            sum(len(y) for _, y in data)


def loss_without(model, data, channels) -> float:
    bn = model.bn2
    w, b = bn.weight.detach().clone(), bn.bias.detach().clone()
    with torch.no_grad():
        bn.weight[channels] = 0
        bn.bias[channels] = 0
    try:
        return loss(model, data)
    finally:
        with torch.no_grad():
            bn.weight.copy_(w)
            bn.bias.copy_(b)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).double()


def additivity(model, data, k: int = 3) -> dict:
    """How well the sum of single-channel loss changes stands for the true loss change of removing
    a set of k channels, over every set: the relative error, Pearson and Spearman correlations, and
    the choice a pruner makes (the set with the smallest sum): where its true loss change ranks
    among all sets (0 = the best set, 1 = the worst)."""
    base = loss(model, data)
    c = model.bn2.weight.numel()
    single = [loss_without(model, data, [f]) - base for f in range(c)]
    true, summed = [], []
    for s in itertools.combinations(range(c), k):
        true.append(loss_without(model, data, list(s)) - base)
        summed.append(sum(single[f] for f in s))
    t, p = torch.tensor(true, dtype=torch.float64), torch.tensor(summed, dtype=torch.float64)
    chosen = int(torch.argmin(p))
    return {"error": float((t - p).abs().sum() / t.abs().sum()),
            "pearson": float(torch.corrcoef(torch.stack([t, p]))[0, 1]),
            "spearman": float(torch.corrcoef(torch.stack([_ranks(t), _ranks(p)]))[0, 1]),
            "choice_rank": float((t < t[chosen]).sum()) / (len(t) - 1)}


def train(seed: int, ortho: bool, lam: float, steps: int, data, width: int = 8):
    torch.manual_seed(seed)
    model = ConvNet(width=width, classes=4)
    with torch.no_grad():  # correlated filters, as in an over-parameterised layer
        shared = torch.randn(1, *model.conv2.weight.shape[1:])
        model.conv2.weight.copy_(shared + 0.3 * torch.randn_like(model.conv2.weight))
    reg = OrthoReg(model, groups=convnet_groups(model), lam=lam) if ortho else None
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    if reg is not None:
        reg.attach(opt)
    model.train()
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if reg is not None:
            reg.step()
        opt.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--width", type=int, default=8, help="channels of conv2")
    ap.add_argument("--k", type=int, default=3, help="channels removed per set")
    args = ap.parse_args()
    data = regression_data()
    print("| seed | training | orthogonality | loss | additivity error | Pearson | Spearman | choice rank |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        for ortho in (False, True):
            model = train(seed, ortho, args.lam, args.steps, data, args.width)
            deg = OrthoReg(model, groups=convnet_groups(model)).orthogonality()
            a = additivity(model, data, args.k)
            name = f"OrthoReg lam={args.lam:g}" if ortho else "plain"
            print(f"| {seed} | {name} | {deg:.3f} | {loss(model, data):.3f} | {a['error']:.3f} | {a['pearson']:.3f} | "
                  f"{a['spearman']:.3f} | {a['choice_rank']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
