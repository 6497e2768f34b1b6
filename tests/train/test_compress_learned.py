"""The round trip train -> export -> `compress` uses the learned importances automatically."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from click.testing import CliRunner

from compressor.cli import main
from compressor.train.export import export
from compressor.train.regularizers import NetworkSlimming

from ._nets import TinyResNet, teacher_data, train


def test_compress_picks_learned_importance_and_keeps_the_learned_channels(tmp_path):
    torch.set_num_threads(1)
    model = TinyResNet()
    x = torch.randn(2, 3, 8, 8)
    reg = NetworkSlimming(model, x)
    train(model, reg, teacher_data(n_batches=2), steps=6)
    src = tmp_path / "m.onnx"
    export(model, x, src, regularizer=reg)
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(main, [str(src), "-o", str(out), "--ratio", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    import json

    report = json.loads(res.output)
    assert report["importance"] == "learned", report["importance_notes"]
    assert report["verify"]["passed"]
    # the kept channels of every pruned group are the top half of the learned scores
    learned = {g.id: s.numpy() for g, s in ((g, reg.importance()[g.id]) for g in reg.groups)}
    kept_sets = [set(e["kept"]) for e in report["plan"] if e["axis"] == 0]
    tops = [set(np.argsort(-s, kind="stable")[: len(s) - len(s) // 2].tolist()) for s in learned.values()]
    assert any(k in tops for k in kept_sets), "some producer slice must keep exactly the learned top channels"
    assert onnx.load(out).graph.node
