"""Every registered model at CIFAR (3x32x32) and MNIST-style (1x28x28) inputs:
forward shape, parameter counts, and ONNX export whose onnxruntime output equals torch's."""

from __future__ import annotations

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import models  # noqa: E402
from models.export import IR_VERSION, export_onnx  # noqa: E402


# (in_channels, input_size): CIFAR and MNIST-style inputs.
INPUT_SETTINGS = [(3, 32), (1, 28)]
TEST_WIDTH = 0.25  # keeps every export well under a second


def calibrate_bn(model: torch.nn.Module, in_channels: int, input_size: int, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm the running statistics of a random batch, then switch to eval.

    Freshly initialised deep nets have unit BN statistics and activations that grow with depth;
    calibrated statistics keep outputs O(1), so an absolute tolerance means something, and they
    make BN folding in the exporter non-trivial.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, in_channels, input_size, input_size, generator=gen))
    return model.eval()


ALL_MODELS = models.list_models()
ATOL = 1e-4

# Parameter counts at width 1, 10 classes, 3x32x32, as published for these architectures
# (option-B shortcuts add 2,752 to the CIFAR ResNets; VGG has a 512-unit hidden layer).
EXPECTED_PARAMS = {
    "resnet20": 0.27e6,
    "resnet32": 0.47e6,
    "resnet56": 0.86e6,
    "vgg13_bn": 9.7e6,
    "vgg16_bn": 15.0e6,
    "mobilenet_v1": 3.2e6,
    "mobilenet_v2": 2.2e6,
    "densenet40": 1.0e6,
    "densenet_bc22": 0.07e6,
    # the experiments' small variants, at their default half width (counted here, not published)
    "vgg11_small": 2.38e6,
    "mobilenet_v2_small": 0.70e6,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """One torch thread per test process: under pytest-xdist on a small machine, torch's and
    onnxruntime's thread pools otherwise oversubscribe the cores and every test slows ~20x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ort_run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_every_model_has_an_expected_parameter_count():
    assert set(EXPECTED_PARAMS) == set(ALL_MODELS), "add the new model to EXPECTED_PARAMS"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_count_matches_the_published_architecture(name):
    count = n_params(models.create_model(name))
    expected = EXPECTED_PARAMS[name]
    assert abs(count - expected) <= 0.05 * expected, f"{name}: {count:,} parameters, expected ~{expected:,.0f}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_width_multiplier_shrinks_the_model(name):
    full, slim = (n_params(models.create_model(name, width=w)) for w in (1.0, 0.5))
    assert slim < 0.5 * full, f"{name}: width 0.5 has {slim:,} of {full:,} parameters"


@pytest.mark.parametrize("in_channels,input_size", INPUT_SETTINGS, ids=["cifar", "mnist"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_and_onnx_export_match(name, in_channels, input_size):
    torch.manual_seed(0)
    model = models.create_model(
        name, num_classes=10, in_channels=in_channels, input_size=input_size, width=TEST_WIDTH
    )
    calibrate_bn(model, in_channels, input_size)
    shape = (1, in_channels, input_size, input_size)
    x = torch.randn(shape)
    with torch.no_grad():
        ref = model(x).numpy()
    assert ref.shape == (1, 10), f"{name}: logits shape {ref.shape}, expected (1, 10)"
    assert np.isfinite(ref).all()

    proto = export_onnx(model, None, input_shape=shape)
    assert proto.ir_version == IR_VERSION
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    out = ort_run(proto, x.numpy())
    err = np.abs(out - ref).max()
    assert err <= ATOL, f"{name} {shape}: onnxruntime differs from torch by {err:.2e} (> {ATOL}); |logits| ~ {np.abs(ref).max():.2f}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_keep_bn_export_keeps_batchnorm_nodes_and_names(name):
    torch.manual_seed(0)
    model = calibrate_bn(models.create_model(name, width=TEST_WIDTH), 3, 32)
    x = torch.randn(1, 3, 32, 32)
    proto = export_onnx(model, None, keep_bn=True)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert ops["BatchNormalization"] == n_bn, f"{name}: {ops['BatchNormalization']} BN nodes, {n_bn} BN modules"
    assert ops["Identity"] == 0, "deduplicated initializers must not appear as Identity nodes"
    bn_names = {k for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    missing = bn_names - {i.name for i in proto.graph.initializer}
    assert not missing, f"{name}: BN statistics lost their PyTorch names: {sorted(missing)[:3]}"
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization":
            mode = {a.name: a.i for a in node.attribute}.get("training_mode", 0)
            assert mode == 0 and len(node.output) == 1, "BN must be exported with eval semantics"
    with torch.no_grad():
        ref = model(x).numpy()
    err = np.abs(ort_run(proto, x.numpy()) - ref).max()
    assert err <= ATOL, f"{name} keep_bn: onnxruntime differs from torch by {err:.2e}"


def test_default_export_folds_batchnorm():
    model = calibrate_bn(models.create_model("resnet20", width=TEST_WIDTH), 3, 32)
    proto = export_onnx(model, None)
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]


def test_export_writes_the_file_restores_train_mode_and_is_deterministic(tmp_path):
    model = models.create_model("resnet20", in_channels=1, input_size=28, width=TEST_WIDTH)
    model.train()
    path = tmp_path / "r20.onnx"
    first = export_onnx(model, path, input_shape=(1, 1, 28, 28))
    assert model.training, "export must restore the model's training flag"
    loaded = onnx.load(str(path))
    assert loaded.ir_version == IR_VERSION
    assert [i.name for i in loaded.graph.input] == ["input"]
    assert [o.name for o in loaded.graph.output] == ["logits"]
    second = export_onnx(model, None, input_shape=(1, 1, 28, 28))
    assert first.SerializeToString() == second.SerializeToString(), "two exports of one model must be identical"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,in_channels,input_size,opset,keep_bn",
    [
        ("resnet20", 3, 32, 17, False),  # BN folded, opset converted down from 18
        ("densenet_bc22", 1, 28, 18, True),  # BN kept, concatenations, native opset
    ],
)
def test_dynamo_export_matches(name, in_channels, input_size, opset, keep_bn):
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = models.create_model(name, in_channels=in_channels, input_size=input_size, width=TEST_WIDTH)
    calibrate_bn(model, in_channels, input_size)
    shape = (1, in_channels, input_size, input_size)
    x = torch.randn(shape)
    proto = export_onnx(model, None, input_shape=shape, opset=opset, dynamo=True, keep_bn=keep_bn)
    assert proto.ir_version == IR_VERSION
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    n_bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    if keep_bn:
        assert n_bn == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        ref = model(x).numpy()
    err = np.abs(ort_run(proto, x.numpy()) - ref).max()
    assert err <= ATOL, f"{name} dynamo: onnxruntime differs from torch by {err:.2e}"
