"""The model registry: names, lookup, duplicate rejection, kwargs pass-through."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import models  # noqa: E402
from compressor.errors import UsageError  # noqa: E402
from models import ModelRegistry, UnknownModelError  # noqa: E402

EXPECTED = {
    "resnet20", "resnet32", "resnet56", "vgg13_bn", "vgg16_bn",
    "mobilenet_v1", "mobilenet_v2", "densenet40", "densenet_bc22",
}  # fmt: skip


def test_all_reference_models_are_registered():
    assert EXPECTED <= set(models.list_models()), f"missing: {EXPECTED - set(models.list_models())}"


def test_list_models_is_sorted_and_filters_by_pattern_and_family():
    names = models.list_models()
    assert names == sorted(names)
    assert models.list_models("resnet*") == ["resnet20", "resnet32", "resnet56"]
    assert models.list_models(family="mobilenet") == ["mobilenet_v1", "mobilenet_v2", "mobilenet_v2_small"]
    assert models.list_models("nothing*") == []


def test_duplicate_name_is_rejected_and_first_registration_kept():
    reg = ModelRegistry()

    def tiny(**kwargs):
        return torch.nn.Identity()

    reg.register(tiny)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(lambda **kw: torch.nn.ReLU(), name="tiny")
    assert isinstance(reg.create("tiny"), torch.nn.Identity), "the first registration must survive"


def test_global_register_model_rejects_an_existing_name():
    with pytest.raises(ValueError, match="'resnet20' is already registered"):

        @models.register_model(name="resnet20")
        def impostor(**kwargs):  # pragma: no cover - never called
            return torch.nn.Identity()

    assert type(models.create_model("resnet20", width=0.25)).__name__ == "CifarResNet"


def test_unknown_model_is_a_usage_error_listing_the_names():
    with pytest.raises(UnknownModelError) as info:
        models.create_model("resnet21")
    assert isinstance(info.value, UsageError)
    assert "unknown model 'resnet21'" in str(info.value) and "resnet20" in str(info.value)


def test_create_model_passes_kwargs_through():
    net = models.create_model("resnet20", in_channels=1, num_classes=7, input_size=28, width=0.5)
    assert net.conv1.in_channels == 1
    assert net.fc.out_features == 7
    assert net.conv1.out_channels == 8, "width 0.5 must halve the 16 stem channels"


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": 0}, {"input_size": 4}, {"width": 0.0}])
def test_nonsense_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        models.create_model("resnet20", **kwargs)
