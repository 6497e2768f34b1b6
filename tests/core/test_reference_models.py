"""Every reference architecture in models/ exported to ONNX and pruned at several ratios,
uniform and global, with round-to; each result proven by the oracle."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import models  # noqa: E402
from models.export import export_onnx  # noqa: E402

from compressor import api  # noqa: E402

SMALL = {"width": 0.5}


def _randomize_bn(net) -> None:
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.fixture(scope="module", params=models.list_models())
def exported(request, tmp_path_factory):
    name = request.param
    torch.manual_seed(0)
    try:
        net = models.create_model(name, in_channels=1, num_classes=10, input_size=28, **SMALL)
    except TypeError:
        net = models.create_model(name, in_channels=1, num_classes=10, input_size=28)
    _randomize_bn(net)
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    export_onnx(net, path, input_shape=(1, 1, 28, 28))
    return name, path


@pytest.mark.parametrize("ratio,global_ranking,round_to", [(0.3, False, 1), (0.5, True, 1), (0.6, False, 4)])
def test_reference_model_prunes_and_verifies(exported, ratio, global_ranking, round_to):
    name, path = exported
    res = api.prune(path, ratio=ratio, global_ranking=global_ranking, round_to=round_to)
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] < 1e-4, f"{name}: {r['verify']}"
    assert r["groups"]["prunable"] > 0, f"{name}: nothing prunable; barriers: {r['barriers']}"
    assert r["macs_after"] < r["macs_before"], f"{name}: MACs did not drop"
    if not global_ranking and ratio >= 0.5:
        assert r["macs_before"] / r["macs_after"] > 1.5, f"{name}: MACs ratio {r['macs_before'] / r['macs_after']:.2f}"


@pytest.mark.parametrize("name", models.list_models())
def test_reference_model_dynamo_export_prunes(name, tmp_path):
    """The CI share of the torchvision zoo (`make zoo`): the same architectures through torch's
    default dynamo-based exporter (ReduceMean pooling, Reshape flatten, opset 18), BN kept and folded."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    try:
        net = models.create_model(name, in_channels=1, num_classes=10, input_size=28, **SMALL)
    except TypeError:
        net = models.create_model(name, in_channels=1, num_classes=10, input_size=28)
    _randomize_bn(net)
    path = tmp_path / f"{name}.onnx"
    export_onnx(net, path, input_shape=(1, 1, 28, 28), opset=18, dynamo=True, keep_bn=name.startswith("vgg"))
    r = api.prune(path, ratio=0.5, round_to=8).report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] < 1e-4, f"{name}: {r['verify']}"
    assert r["groups"]["prunable"] > 0, f"{name}: nothing prunable; barriers: {r['barriers']}"
    assert r["macs_before"] / r["macs_after"] > 1.3, f"{name}: MACs ratio {r['macs_before'] / r['macs_after']:.2f}"


def test_reference_model_groups_removed_whole_verify(exported):
    """--drop-layers' surgery on every reference architecture: as many groups removed whole as can
    go together (added one at a time while the removal stays exact), the others pruned by half;
    the oracle proves the result and the removed layers are gone from the graph."""
    import onnx

    from compressor.planning import PlanOptions, PruningPlan
    from compressor.planning.plan import GroupDecision, signature
    from compressor.surgery.drop import removable_together

    name, path = exported
    model = onnx.load(str(path))
    an = api.analyze(model)
    removed = removable_together(an)
    if not removed:
        pytest.skip(f"{name}: no group can be removed whole")
    plan = PruningPlan(PlanOptions(), [
        GroupDecision(g.id, g.size, [] if g.id in removed else
                      (list(range(0, g.size, 2)) if g.prunable else list(range(g.size))), signature(g))
        for g in an.groups])
    res = api.prune(model, plan_in=plan)
    r = res.report
    assert r["verify"]["passed"] and r["verify"]["max_rel_err"] < 1e-4, f"{name}: {r['verify']}"
    assert r["removed_whole"]["groups"] == len(removed) and r["removed_whole"]["nodes"] > 0
    assert len(res.model.graph.node) < len(model.graph.node)
