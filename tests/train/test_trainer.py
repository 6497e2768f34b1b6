"""Trainer: evaluation works, and a run resumed from a checkpoint ends with exactly the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.train import regularizers
from compressor.train.trainer import Trainer

from ._nets import ConvNet, convnet_groups, teacher_data

KWARGS = {
    "csgd": {"keep_ratio": 0.5, "centri_strength": 0.1},
    "increg": {"unit": 0.05, "ceiling": 0.5},
    "greg2": {"delta_pick": 0.01, "pick_ceiling": 0.02, "update_interval": 1, "delta": 0.05},
    "sfp": {"prune_ratio": 0.25},
    "gates": {"lam": 0.1, "penalty": "l1"},
}


def _trainer(name, tmp_path, epochs):
    torch.manual_seed(0)
    model = ConvNet()
    reg = regularizers.create(name, model, groups=convnet_groups(model), **KWARGS[name])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    data = teacher_data(n_batches=4)
    return Trainer(model, opt, nn.CrossEntropyLoss(), data, val_data=data[:2], regularizer=reg, scheduler=sched,
                   epochs=epochs, checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("name", sorted(KWARGS))
def test_resume_from_checkpoint_is_exact(name, tmp_path):
    """Two epochs straight == one epoch, checkpoint, fresh process state, load (weights_only), one more epoch."""
    straight = _trainer(name, tmp_path / "a", epochs=2)
    history = straight.fit()
    assert len(history) == 2 and "val_metric" in history[-1], "fit must evaluate every epoch"
    first = _trainer(name, tmp_path / "b", epochs=1)
    first.fit()
    resumed = _trainer(name, tmp_path / "c", epochs=2)
    resumed.load_checkpoint(tmp_path / "b" / "last.pt")
    assert resumed.epoch == 1, "the checkpoint records the finished epoch"
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert diff == 0.0, f"{name}: resumed run differs from the straight run by {diff:.2e}"
    assert resumed.regularizer.state_dict()["steps"] == straight.regularizer.state_dict()["steps"]
