"""The proof reports how far a wrong cut would land (verify.discrimination: the masked original
against a decoy that removes other channels), and warns when that is too small for the comparison
to tell a right cut from a wrong one."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from compressor import api
from compressor.cli import main
from tests.core.graphs import G


def _dead_relu_net(bias: float):
    """conv -> Relu -> conv: with a bias of -100 the Relu outputs 0 on random inputs, so the output is
    the second conv's bias whatever channels are removed."""
    g = G(8)
    x = g.input("x", [1, 3, 8, 8])
    h = g.op("Conv", [x, g.rand(8, 3, 3, 3), g.const(np.full(8, bias, np.float32), "b")], kernel_shape=[3, 3],
             pads=[1] * 4)
    return g.model([g.conv(g.op("Relu", [h]), 8, 4, k=1)])


def test_outputs_that_no_channel_changes_make_a_weak_proof():
    res = api.prune(_dead_relu_net(-100.0), ratio=0.5)
    ver = res.report["verify"]
    assert ver["passed"] and ver["discrimination"] == 0.0, ver
    assert any("cannot tell this pruning from a wrong one" in w for w in res.report["warnings"]), res.report["warnings"]


def test_a_cut_that_shows_is_measured_and_not_warned_about():
    res = api.prune(_dead_relu_net(0.0), ratio=0.5)
    ver = res.report["verify"]
    assert ver["passed"] and ver["discrimination"] > 3 * ver["tolerance"], ver
    assert not any("cannot tell" in w for w in res.report.get("warnings", []))


def test_nothing_removed_measures_nothing():
    res = api.prune(_dead_relu_net(0.0), ratio=0.0)
    assert res.report["verify"]["discrimination"] is None


def test_dead_channels_removed_are_no_weak_proof():
    """Channels whose BN scale is 0 change nothing when removed, yet a cut of the live ones would:
    the proof can tell them apart, so no warning (network slimming's pruned channels)."""
    g = G(9)
    x = g.input("x", [1, 3, 8, 8])
    h = g.conv(x, 3, 8, k=3)
    scale = np.array([0, 0, 0, 0, 1, 1.5, 0.7, 2], np.float32)
    h = g.op("BatchNormalization", [h, g.const(scale), g.const(np.zeros(8, np.float32)), g.rand(8),
                                    g.rand(8, positive=True)])
    model = g.model([g.conv(g.op("Relu", [h]), 8, 4, k=1)])
    res = api.prune(model, ratio=0.5, importance="bn")
    ver = res.report["verify"]
    assert ver["passed"] and ver["max_rel_err"] < 1e-6 and ver["discrimination"] > 3 * ver["tolerance"], ver
    assert not any("cannot tell" in w for w in res.report.get("warnings", []))


def test_the_cli_prints_the_weak_proof_warning(tmp_path):
    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(_dead_relu_net(-100.0), src)
    out = CliRunner().invoke(main, [str(src), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.5"])
    assert out.exit_code == 0, out.output
    assert "cannot tell this pruning from a wrong one" in out.output
