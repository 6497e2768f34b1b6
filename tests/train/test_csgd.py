"""C-SGD: within-cluster deviation falls to ~0, the merge is then lossless, residual groups share a partition."""

from __future__ import annotations

import pytest
import torch

from compressor.train.regularizers import CentripetalSGD
from compressor.train.regularizers.csgd import clusters_from_labels, kmeans

from ._nets import ConvNet, TinyResNet, convnet_groups, teacher_data, tinyresnet_groups, train


def test_kmeans_is_deterministic_and_finds_obvious_clusters():
    """Our k-means separates three well-separated blobs and gives the same labels for the same seed."""
    gen = torch.Generator().manual_seed(1)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(4, 2, generator=gen) for c in centers])
    a, b = kmeans(x, 3, seed=5), kmeans(x, 3, seed=5)
    assert torch.equal(a, b), "same seed must give the same partition"
    assert clusters_from_labels(a) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], f"got {clusters_from_labels(a)}"


def test_identical_points_still_give_k_nonempty_clusters():
    """Duplicate rows (already-converged filters) never produce empty clusters."""
    x = torch.zeros(6, 3)
    labels = kmeans(x, 4)
    assert int(labels.max()) + 1 == 4 and torch.bincount(labels).min() >= 1, f"labels={labels.tolist()}"


def _merged_output(model, reg, x):
    """Masked-original oracle of the merge: sum each cluster's consumer slices into its first member."""
    merged = {name: t.detach().clone() for name, t in model.state_dict().items()}
    for g in reg.groups:
        for members in reg.clusters()[g.id]:
            for s in g.select("consumer"):
                w = merged[s.name]
                rep = w.select(s.dim, members[0])
                for j in members[1:]:
                    rep += w.select(s.dim, j)
                    w.select(s.dim, j).zero_()
    clone = type(model)()
    clone.load_state_dict(merged)
    clone.eval()
    with torch.no_grad():
        return clone(x)


@pytest.mark.parametrize("net,groups_of", [(ConvNet, convnet_groups), (TinyResNet, tinyresnet_groups)])
def test_deviation_falls_to_zero_and_merge_is_lossless(net, groups_of):
    """C-SGD claim: clustered filters become identical (deviation ~0), so merging them changes nothing."""
    model = net()
    reg = CentripetalSGD(model, groups=groups_of(model), keep_ratio=0.5, centri_strength=0.5)
    start = reg.deviation()
    train(model, reg, teacher_data(), steps=200, lr=0.05, wd=1e-4)
    end = reg.deviation()
    assert start > 1e-2, f"random init should start with a large deviation, got {start}"
    assert end < 1e-6 * start, f"deviation should collapse: {start:.3e} -> {end:.3e}"
    assert reg.deviation(include_buffers=True) < 1e-6, "BN running stats of identical channels converge too"
    x = torch.randn(4, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    got = _merged_output(model, reg, x)
    assert torch.allclose(ref, got, atol=1e-4), f"merge must be lossless, max diff {float((ref - got).abs().max()):.2e}"
    for g in reg.groups:
        assert len(reg.clusters()[g.id]) == 4, "keep_ratio 0.5 of 8 channels = 4 clusters"


def test_rewrite_keeps_cluster_mean_training_and_handles_weight_decay():
    """One step on a 2-member cluster: grads become mean + (eps+wd)-pull; optimizer wd is not applied twice."""
    model = ConvNet()
    groups = convnet_groups(model)
    clusters = {0: [[0, 1]] + [[i] for i in range(2, 8)], 1: [[i] for i in range(8)]}
    reg = CentripetalSGD(model, groups=groups, clusters=clusters, centri_strength=0.3, weight_decay=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.05)
    reg.attach(opt)
    x, y = teacher_data(n_batches=1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    w = model.conv1.weight.detach().clone()
    g = model.conv1.weight.grad.detach().clone()
    gamma, ggamma = model.bn1.weight.detach().clone(), model.bn1.weight.grad.detach().clone()
    reg.step()
    got = model.conv1.weight.grad
    mean_g, mean_w = (g[0] + g[1]) / 2, (w[0] + w[1]) / 2
    want0 = mean_g + (0.01 - 0.05) * w[0] + 0.3 * (w[0] - mean_w)
    assert torch.allclose(got[0], want0, atol=1e-6), "kernel rewrite must be mean grad + wd correction + centripetal pull"
    assert torch.allclose(got[2], g[2] + (0.01 - 0.05) * w[2], atol=1e-6), "singletons keep their own gradient"
    want_gamma0 = (ggamma[0] + ggamma[1]) / 2 - 0.05 * gamma[0] + 0.03 * (gamma[0] - (gamma[0] + gamma[1]) / 2)
    assert torch.allclose(model.bn1.weight.grad[0], want_gamma0, atol=1e-6), "vectors: 0.1*eps pull, no decay"


def test_state_dict_round_trip_keeps_the_partition():
    """Checkpointing: labels survive torch.save / torch.load(weights_only=True)."""
    import io

    model = ConvNet()
    reg = CentripetalSGD(model, groups=convnet_groups(model), keep_ratio=0.5, seed=3)
    buf = io.BytesIO()
    torch.save(reg.state_dict(), buf)
    buf.seek(0)
    other = CentripetalSGD(model, groups=convnet_groups(model), keep_ratio=0.75)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.clusters() == reg.clusters(), "loaded partition must equal the saved one"
