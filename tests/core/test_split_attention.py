"""Split attention (SKNet's selective kernel, ResNeSt's radix softmax): a Reshape [2C] -> [2, C]
whose radix axis is only softmaxed and summed over. Each radix slice holds the same channels, so
the branch convs and the attention's two halves lose the same channels (rules/reshape.py,
_mixes_only); the radix softmax used to freeze them as a softmax over a channel axis."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from compressor import api
from compressor.verify.oracle import masked_original
from tests.core.graphs import G


def sk_unit(c: int = 8, d: int = 4):
    g = G(11, opset=17)
    x = g.input("x", [2, 3, 8, 8])
    stem = g.op("Relu", [g.conv(x, 3, c, k=3)])
    b1 = g.op("Relu", [g.conv(stem, c, c, k=3)])
    b2 = g.op("Relu", [g.op("Conv", [stem, g.rand(c, c, 3, 3), g.rand(c, base="b")], kernel_shape=[3, 3],
                             pads=[2] * 4, dilations=[2, 2])])
    ax = g.const(np.array([1], np.int64), "ax")
    feats = g.op("Concat", [g.op("Unsqueeze", [b1, ax]), g.op("Unsqueeze", [b2, ax])], axis=1)  # [N, 2, C, H, W]
    u = g.op("ReduceSum", [feats, ax], keepdims=0)
    s = g.op("GlobalAveragePool", [u])
    z = g.op("Relu", [g.conv(s, c, d, k=1)])
    a = g.conv(z, d, 2 * c, k=1)  # [N, 2C, 1, 1]
    a = g.op("Reshape", [a, g.const(np.array([2, 2, c, 1, 1], np.int64), "shape")])
    a = g.op("Softmax", [a], axis=1)
    v = g.op("ReduceSum", [g.op("Mul", [feats, a]), ax], keepdims=0)
    return g.model([g.conv(v, c, 4, k=1)])


def _run(model, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_selective_kernel_branches_and_radix_attention_prune_together():
    model = sk_unit()
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"], rep["verify"]
    # the stem, the attention's hidden width and the branches' shared channels all lose half
    assert rep["channels"]["removed"] == 4 + 2 + 4, (rep["channels"], rep["unprunable"])
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    keep = res.plan.keep() if callable(res.plan.keep) else res.plan.keep
    ref, got = _run(masked_original(res.analysis, keep), x), _run(res.model, x)
    assert np.max(np.abs(ref - got)) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))


def _resnest_split_attention(how: str):
    """timm's SplitAttn (radix 2, cardinality 1) in a residual block, exported by torch: the grouped
    conv's 2C outputs viewed [N, 2, C, H, W] and summed over the radix; the attention's 2C logits
    viewed [N, 1, 2, C], transposed, softmaxed over the radix and merged back to [N, 2C], then
    viewed [N, 2, C, 1, 1], multiplied into the radix branches and summed over the radix."""
    import io

    import onnx
    import pytest

    torch = pytest.importorskip("torch")

    class SplitAttn(torch.nn.Module):
        def __init__(self, c: int = 8, radix: int = 2):
            super().__init__()
            self.radix = radix
            self.conv = torch.nn.Conv2d(c, c * radix, 3, padding=1, groups=radix)
            self.bn0 = torch.nn.BatchNorm2d(c * radix)
            self.fc1 = torch.nn.Conv2d(c, 4, 1)
            self.fc2 = torch.nn.Conv2d(4, c * radix, 1)

        def forward(self, x):
            x = torch.relu(self.bn0(self.conv(x)))
            b, rc, h, w = x.shape
            x = x.reshape((b, self.radix, rc // self.radix, h, w))
            gap = torch.relu(self.fc1(x.sum(dim=1).mean((2, 3), keepdim=True)))
            attn = self.fc2(gap).view(b, 1, self.radix, -1).transpose(1, 2)
            attn = torch.softmax(attn, dim=1).reshape(b, -1).view(b, -1, 1, 1)
            return (x * attn.reshape((b, self.radix, rc // self.radix, 1, 1))).sum(dim=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.split = SplitAttn()
            self.conv3 = torch.nn.Conv2d(8, 8, 1)
            self.head = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            s = torch.relu(self.stem(x))
            return self.head(torch.relu(s + self.conv3(self.split(s))))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.split.bn0.running_mean.uniform_(-0.5, 0.5)
        net.split.bn0.bias.uniform_(-0.5, 0.5)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(2, 3, 8, 8),), buf, dynamo=False, opset_version=int(how[-2:]),
                      input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buf.getvalue())


import pytest  # noqa: E402


@pytest.mark.parametrize("how", ["legacy13", "legacy17"])
def test_resnest_radix_attention_prunes_with_its_branches(how):
    """The radix slices are multiplied by the attention position by position, then summed over
    the radix: the branches, the attention's halves and the stem lose the same channels (the
    attention's merge back to [N, 2C] used to freeze them: timm resnest14d 2.46x -> 3.97x MACs)."""
    model = _resnest_split_attention(how)
    res = api.prune(model, ratio=0.5)
    rep = res.report
    assert rep["verify"]["passed"] and rep["verify"]["max_rel_err"] <= 1e-5, rep["verify"]
    assert not [u for u in rep["unprunable"] if not any("graph output" in r for r in u["reasons"])], \
        rep["unprunable"]
    # the trunk's 8 channels feed a conv with 2 groups: they are cut alike in both (4 units of 2),
    # 2 of them go; the radix branches' 8 shared channels -> 4; the attention's hidden 4 -> 2
    assert rep["channels"] == {"total": 4 + 8 + 4, "removed": 2 + 4 + 2}, rep["channels"]
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    keep = res.plan.keep() if callable(res.plan.keep) else res.plan.keep
    ref, got = _run(masked_original(res.analysis, keep), x), _run(res.model, x)
    assert np.max(np.abs(ref - got)) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))
