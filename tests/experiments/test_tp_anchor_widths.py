"""The Torch-Pruning anchor prunes every model of the experiment tables to exactly our widths.

The anchor maps our per-group kept counts onto TP's groups by (group size, trunk). A depthwise conv
is one of TP's out-channel members of a MobileNetV2 expansion group; counted as a producer it made
every such group look like a residual trunk, so TP left them whole (20.0 M MACs against our 10.4 M).
No training here: the untrained model is pruned at once and its exported MACs/params compared."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import models  # noqa: E402
from compressor import api  # noqa: E402
from compressor.planning.budget import plan_cost  # noqa: E402
from compressor.train.export import export  # noqa: E402
from exp import tp_anchor  # noqa: E402
from exp.widths import counts_for_cut, is_trunk  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("name", ["mobilenet_v2_small", "vgg11_small", "resnet20"])
@pytest.mark.parametrize("cut,policy", [(2.0, "uniform"), (4.0, "uniform"), (2.0, "internal")])
def test_tp_prunes_to_our_widths(tmp_path, name, cut, policy):
    torch.manual_seed(0)
    model = models.create_model(name, in_channels=1, num_classes=10, input_size=28)
    example = torch.zeros(1, 1, 28, 28)
    export(model, example, tmp_path / "init.onnx", dynamic_batch=True)
    an = api.analyze(tmp_path / "init.onnx")
    counts, _ = counts_for_cut(an, cut, policy, 8)
    by_shape = {(g.size, is_trunk(g)): counts[g.id] for g in an.prunable}
    anchor = tp_anchor.TPAnchor("tp_groupnorm", model, example, by_shape, steps=10, sum_lr=1.0)
    got = anchor.prune()
    assert got == {k: f"{kept}/{size}" for k, (size, kept) in anchor.targets.items()}
    model.eval()
    export(model, example, tmp_path / "tp.onnx", dynamic_batch=True)
    want = plan_cost(an, {gid: list(range(n)) for gid, n in counts.items()})
    m = api.inspect(tmp_path / "tp.onnx")
    assert (m["macs"], m["params"]) == want
    if name == "mobilenet_v2_small":  # the expansion groups are pruned, not skipped as trunks
        assert any(".conv.1.0" in k or ".conv.0.0" in k for k in anchor.targets)
