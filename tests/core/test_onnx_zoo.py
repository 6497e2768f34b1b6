"""The model zoo that the onnx package ships for its backend tests, pruned where the structure
allows, with barriers explained where it does not.

Those 'light' models compute their weights with ConstantOfShape (constant values); the engine
folds them, and the test then gives every weight random values so the oracle sees real numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compressor import api
from compressor.ir.fold import prepare

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# (model, min MACs ratio at --ratio 0.5)
EXPECT = {
    "squeezenet": 2.0, "inception_v1": 2.0, "inception_v2": 2.0, "resnet50": 2.0, "densenet121": 2.0,
    "shufflenet": 1.3, "bvlc_alexnet": 1.3, "zfnet512": 1.3, "vgg19": 2.0,
}
BIG = {"bvlc_alexnet", "zfnet512", "vgg19"}


def randomized(name: str) -> onnx.ModelProto:
    m, _ = prepare(onnx.load(LIGHT / f"light_{name}.onnx"))
    rng = np.random.default_rng(0)
    for i, t in enumerate(m.graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 1:
            fan = a[0].size if a.ndim > 1 else 1
            v = rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(fan)
            if a.ndim == 1:  # BN scales/variances must stay positive; biases small
                v = np.abs(v) * 0.5 + 0.5
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(v.astype(np.float32), t.name))
    return m


@pytest.mark.parametrize("name", [n if n not in BIG else pytest.param(n, marks=pytest.mark.slow) for n in EXPECT])
def test_light_zoo_model_prunes_and_verifies(name):
    res = api.prune(randomized(name), ratio=0.5)
    r = res.report
    assert r["verify"]["passed"], f"{name}: {r['verify']}"
    ratio = r["macs_before"] / r["macs_after"]
    assert ratio >= EXPECT[name], f"{name}: MACs ratio {ratio:.2f} < {EXPECT[name]}"


def test_shufflenet_channel_shuffle_is_mapped_and_the_rest_is_explained():
    """The Reshape/Transpose/Reshape shuffle gets an exact index map (most groups prunable);
    every group left frozen carries a reason."""
    info = api.inspect(randomized("shufflenet"))
    assert info["groups"]["prunable"] >= 10, info["groups"]
    frozen = [g for g in info["group_list"] if not g["prunable"]]
    assert all(g["reasons"] for g in frozen), "every frozen group must say why"
