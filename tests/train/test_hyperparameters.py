"""Hyperparameters outside their range are refused at construction with a ValueError that names them.

Without the checks these values gave silent NaN weights (gates sigma <= 0), penalties that grow
the weights instead of shrinking them (negative strengths), silently clamped ratios, or errors far
from the cause (ZeroDivisionError at the first step, IndexError for a bad cluster index).
"""

from __future__ import annotations

import pytest
import torch

from compressor.train import regularizers

from ._nets import ConvNet, convnet_groups

BAD = [
    ("gates", {"sigma": 0.0}, "sigma"),
    ("gates", {"sigma": -0.1}, "sigma"),
    ("gates", {"weight_lambda": 1e-3, "weight_sigma": 0.0}, "weight_sigma"),
    ("gates", {"lam": -1e-3}, "lam"),
    ("group_lasso", {"lam": -0.5}, "lam"),
    ("slimming", {"s": -0.5}, "s"),
    ("orthoreg", {"lam": -1.0}, "lam"),
    ("increg", {"unit": -0.5}, "unit"),
    ("increg", {"ceiling": 0.0}, "ceiling"),
    ("increg", {"prune_ratio": -1.0}, "prune_ratio"),
    ("increg", {"prune_ratio": 1.0}, "prune_ratio"),
    ("greg1", {"delta": -0.5}, "delta"),
    ("greg1", {"update_interval": 0}, "update_interval"),
    ("greg2", {"prune_ratio": {0: 0.5, 1: 3.0}}, "prune_ratio"),
    ("csgd", {"keep_ratio": 0.0}, "keep_ratio"),
    ("csgd", {"keep_ratio": 3.0}, "keep_ratio"),
    ("csgd", {"keep_ratio": -0.5}, "keep_ratio"),
    ("csgd", {"centri_strength": -1.0}, "centri_strength"),
    ("csgd", {"clusters": {0: [[0, 1, 2, 3], [4, 5, 6, 7, 8]]}}, "clusters"),
    ("sfp", {"prune_ratio": 3.0}, "prune_ratio"),
    ("sfp", {"prune_ratio": -1.0}, "prune_ratio"),
    ("srfp", {"epochs": 2, "prune_ratio": 3.0}, "prune_ratio"),
    ("asrfp", {"epochs": 2, "prune_ratio": float("nan")}, "prune_ratio"),
    ("dsa", {"rho": 0.0}, "rho"),
    ("dsa", {"beta2": 0.0}, "beta2"),
    ("dsa", {"beta2": -1.0}, "beta2"),
]


@pytest.mark.parametrize("name,kwargs,param", BAD, ids=[f"{n}-{k}" for n, k, _ in BAD])
def test_out_of_range_hyperparameter_is_refused_at_construction(name, kwargs, param):
    """ValueError naming the parameter (and its range), before any training step."""
    model = ConvNet()
    with pytest.raises(ValueError, match=rf"\b{param}\b") as info:
        regularizers.create(name, model, torch.randn(2, 3, 8, 8), groups=convnet_groups(model), **kwargs)
    if param != "clusters":
        assert "must be" in str(info.value), f"the message should give the allowed range: {info.value}"


@pytest.mark.parametrize("name,kwargs", [
    ("gates", {"lam": 0.0, "weight_lambda": 0.0}), ("group_lasso", {"lam": 0.0}), ("increg", {"prune_ratio": 0.0}),
    ("csgd", {"keep_ratio": 1.0, "centri_strength": 0.0}), ("sfp", {"prune_ratio": 0.0}),
    ("greg1", {"prune_ratio": {0: 0.0, 1: 0.5}, "update_interval": 1}), ("dsa", {"dual_lr": 0.0}),
])
def test_boundary_values_of_the_ranges_are_accepted(name, kwargs):
    """The checks refuse only what is outside the documented range (0 strength = off is allowed)."""
    model = ConvNet()
    regularizers.create(name, model, torch.randn(2, 3, 8, 8), groups=convnet_groups(model), **kwargs)
