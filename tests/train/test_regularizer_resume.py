"""Resuming from ``reg.state_dict()`` without an attached optimizer (``lr=``) continues exactly.

In that mode the edit that follows an update (the proximal step) runs at the next ``step()``, so a
checkpoint written between ``optimizer.step()`` and the next ``step()`` still owes it. Attaching an
optimizer at that point must not drop it either.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.train import regularizers

from ._nets import ConvNet, convnet_groups, teacher_data

PROXIMAL = {
    "group_lasso": {"lam": 0.5},
    "slimming": {"s": 0.5},
    "gates": {"lam": 0.5, "penalty": "l1"},
}


def _build(name):
    torch.manual_seed(0)
    model = ConvNet()
    reg = regularizers.create(name, model, groups=convnet_groups(model), lr=0.05, **PROXIMAL[name])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # built after the regularizer: gates included
    return model, reg, opt


def _run(model, reg, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        reg.step()
        opt.step()


def _checkpoint(model, reg, opt):
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
            "reg": reg.state_dict()}


def _resume(name, ckpt):
    model, reg, opt = _build(name)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    reg.load_state_dict(ckpt["reg"])
    return model, reg, opt


def _max_diff(a: dict, model) -> float:
    return max(float((a[k] - v).abs().max()) for k, v in model.state_dict().items())


def _straight(name: str, data) -> dict:
    """The weights after running ``data`` in one go, the last edit applied."""
    model, reg, opt = _build(name)
    _run(model, reg, opt, data)
    reg.finalize()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(PROXIMAL))
def test_resume_without_optimizer_matches_a_straight_run(name):
    """4 steps straight == 2 steps, checkpoint (model, optimizer, regularizer), fresh objects, 2 steps."""
    data = teacher_data(n_batches=4)
    straight = _straight(name, data)

    model, reg, opt = _build(name)
    _run(model, reg, opt, data[:2])
    model, reg, opt = _resume(name, _checkpoint(model, reg, opt))
    _run(model, reg, opt, data[2:])
    reg.finalize()
    diff = _max_diff(straight, model)
    assert diff == 0.0, f"{name}: resumed run differs from the straight run by {diff:.3g}"


@pytest.mark.parametrize("name", sorted(PROXIMAL))
def test_attaching_an_optimizer_keeps_the_owed_edit(name):
    """After steps without an optimizer, attach() (directly, or to a resumed regularizer) must not
    drop the edit owed to the last update: finalize() then gives what it gives without attach."""
    data = teacher_data(n_batches=2)
    want = _straight(name, data)

    model, reg, opt = _build(name)
    _run(model, reg, opt, data)
    ckpt = _checkpoint(model, reg, opt)
    reg.attach(opt)
    reg.finalize()
    assert _max_diff(want, model) == 0.0, f"{name}: attach() dropped the owed edit"

    model, reg, opt = _resume(name, ckpt)
    reg.attach(opt)
    reg.finalize()
    assert _max_diff(want, model) == 0.0, f"{name}: attach() after resume dropped the owed edit"
