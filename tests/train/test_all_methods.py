"""Every registered method works in the three-line loop on analysis-derived groups and exports scores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.importance.learned import learned_scores
from compressor.train import regularizers
from compressor.train.export import export

from ._nets import TinyResNet, teacher_data

api = pytest.importorskip("compressor.api")

EXTRA = {"srfp": {"epochs": 2}, "asrfp": {"epochs": 2}}


@pytest.mark.parametrize("name", regularizers.names())
def test_three_line_integration_and_export(name):
    """construct(model, x, optimizer=opt) / step() / importance(): scores per group, exported, mapped back."""
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    data = teacher_data(n_batches=2)
    loss_fn = nn.CrossEntropyLoss()
    extra = dict(EXTRA.get(name, {}))
    if name == "orthoreg":
        extra.update(data=data, loss_fn=loss_fn)
    if name == "gates":  # gates add parameters: build the regularizer first, then the optimizer
        reg = regularizers.create(name, model, x, **extra)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        reg.attach(opt)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        reg = regularizers.create(name, model, x, optimizer=opt, **extra)
    for xb, yb in data:
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        reg.step()
        opt.step()
    reg.epoch_end()
    scores = reg.importance()
    assert {g.id for g in reg.groups} == set(scores), f"{name}: one score vector per selected group"
    assert all(scores[g.id].shape == (g.size,) and torch.isfinite(scores[g.id]).all() for g in reg.groups)
    proto = export(model, x, None, regularizer=reg)
    mapped, notes = learned_scores(proto, api.analyze(proto))
    assert len(mapped) == len(reg.groups), f"{name}: every group must map back: {notes}"
    # the round trip: the learned importances drive `compress`, and the oracle proves the cut
    res = api.prune(proto, ratio=0.5)
    assert res.report["importance"] == "learned", f"{name}: {res.report['importance_notes']}"
    assert res.report["verify"]["passed"] and res.report["groups"]["pruned"] >= 1, (name, res.report["verify"])
