"""End to end: C-SGD makes clustered filters identical; the exported clusters merge exactly in ONNX."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from compressor.importance.learned import KEY  # noqa: E402
from compressor.surgery import merge_identical, merge_learned  # noqa: E402
from compressor.train.export import export  # noqa: E402
from compressor.train.regularizers import CentripetalSGD  # noqa: E402
from tests.train._nets import ConvNet, TinyResNet, teacher_data, train  # noqa: E402

from ._graphs import rel_err  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("net", [ConvNet, TinyResNet])
def test_csgd_clusters_merge_exactly_after_export(net):
    """Train with C-SGD until the within-cluster deviation is ~0, export with metadata, merge the stored
    clusters: half the channels of every group go, and the result reproduces the unmerged export <= 1e-5."""
    model = net()
    x = torch.randn(2, 3, 8, 8)
    reg = CentripetalSGD(model, x, keep_ratio=0.5, centri_strength=0.5)
    start = reg.deviation()
    train(model, reg, teacher_data(n_batches=4), steps=300, lr=0.05, wd=1e-4)
    assert reg.deviation() < 1e-6 * start, f"C-SGD should converge: {start:.3e} -> {reg.deviation():.3e}"
    proto = export(model, x, None, regularizer=reg)
    merged, report = merge_learned(proto, tol=1e-4)
    assert all(e["status"] == "merged" for e in report["groups"]), report["groups"]
    assert report["channels_removed"] == sum(g.size // 2 for g in reg.groups)
    assert report["macs_after"] < 0.5 * report["macs_before"] + 1, (report["macs_before"], report["macs_after"])
    assert report["max_rel_err"] <= 1e-5 and rel_err(proto, merged) <= 1e-5, report["verify"]
    assert not any(p.key == KEY for p in merged.metadata_props), "stale learned metadata is dropped"
    # the filters are identical up to float32 round-off: the identity search finds the same clusters
    _, found = merge_identical(proto, tol=1e-4)
    assert found["channels_removed"] == report["channels_removed"]
