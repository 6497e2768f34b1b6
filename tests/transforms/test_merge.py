"""merge.py: identical filters are merged exactly (the result reproduces the unmerged original)."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.api import analyze
from compressor.errors import VerificationError
from compressor.surgery import find_identical, merge_clusters, merge_identical
from tests.core.graphs import G

from ._graphs import chain, copy_channels, inits, rel_err, residual


def _entry(report, gid):
    return next(e for e in report["groups"] if e["group"] == gid)


def test_exact_copies_merge_and_macs_drop():
    """Channels 3 and 5 copy channel 0 (conv1 filter, bias and BN params): they merge into 0, conv1 keeps
    6 filters, MACs drop, and the merged model reproduces the original within 1e-5."""
    model, n = chain()
    copy_channels(model, [n["w1"], n["b1"], *n["bn1"]], 0, [3, 5])
    before = model.SerializeToString()
    merged, report = merge_identical(model)
    assert model.SerializeToString() == before, "the input model must not be edited"
    g0 = _entry(report, 0)
    assert g0["status"] == "merged" and g0["clusters"] == [[0, 3, 5]], g0
    assert report["channels_removed"] == 2
    assert inits(merged)[n["w1"]].shape[0] == 6 and inits(merged)[n["w2"]].shape[1] == 6
    assert report["macs_after"] < report["macs_before"], "merging removes MACs"
    assert report["max_rel_err"] <= 1e-5, report["verify"]
    assert rel_err(model, merged) <= 1e-5, "independent run must agree with the proof"


def test_copies_in_two_groups_and_flatten_head():
    """Copies in both groups, the second one read by a Gemm through Flatten (64 features per channel)."""
    model, n = chain(flatten_head=True)
    copy_channels(model, [n["w1"], n["b1"], *n["bn1"]], 1, [2])
    copy_channels(model, [n["w2"], *n["bn2"]], 4, [0, 5])
    merged, report = merge_identical(model)
    assert [e["status"] for e in report["groups"]] == ["merged", "merged"], report["groups"]
    assert _entry(report, 1)["clusters"] == [[0, 4, 5]]
    assert inits(merged)[n["fc"]].shape == (4 * 64, 4), "each merged channel removes its 64 flattened features"
    assert report["max_rel_err"] <= 1e-5 and rel_err(model, merged) <= 1e-5


def test_near_copies_merge_within_tol_only():
    """Copies perturbed by relative 2e-7 (a few float32 ulps) merge with tol 5e-6 (error stays <= 1e-5), not with tol 1e-8."""
    model, n = chain()
    copy_channels(model, [n["w1"], n["b1"], *n["bn1"]], 2, [6], noise=2e-7)
    merged, report = merge_identical(model, tol=5e-6)
    assert _entry(report, 0)["status"] == "merged" and report["max_rel_err"] <= 1e-5
    _, strict = merge_identical(model, tol=1e-8)
    assert strict["channels_removed"] == 0, "perturbed filters are not identical at tol 1e-8"


def test_same_filter_different_bn_is_not_identical():
    """Identity covers every per-channel parameter: equal conv filters with different BN beta stay."""
    model, n = chain()
    copy_channels(model, [n["w1"], n["b1"]] + n["bn1"][:1] + n["bn1"][2:], 0, [1])
    clusters = find_identical(analyze(model), tol=1e-6)
    assert all(len(c) == 1 for c in clusters[0]), f"different BN beta must keep channels apart: {clusters[0]}"


def test_residual_group_merges_only_when_all_coupled_producers_agree():
    """A residual trunk has two producers (stem, block conv b): a cluster must be shared by both."""
    model, n = residual()
    copy_channels(model, [n["ws"], *n["bns"]], 0, [4])
    _, report = merge_identical(model)
    assert report["channels_removed"] == 0, "a copy in the stem only does not make the trunk channels equal"
    copy_channels(model, [n["wb"], *n["bnb"]], 0, [4])
    merged, report = merge_identical(model)
    trunk = next(e for e in report["groups"] if e.get("clusters") == [[0, 4]])
    assert trunk["status"] == "merged" and report["channels_removed"] == 1
    vals = inits(merged)
    assert vals[n["ws"]].shape[0] == vals[n["wb"]].shape[0] == vals[n["w1x1"]].shape[1] == 7
    assert vals[n["wa"]].shape[1] == 7 and vals[n["fc"]].shape[0] == 7
    assert report["max_rel_err"] <= 1e-5 and rel_err(model, merged) <= 1e-5


def test_weightless_contraction_is_skipped_and_reported():
    """A group also summed by ReduceSum over channels has no weight to add into: skipped with the reason."""
    g = G(3)
    x = g.input("x", [1, 3, 6, 6])
    w = g.rand(4, 3, 3, 3)
    r = g.op("Relu", [g.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1] * 4)])
    s = g.op("ReduceSum", [r, g.const(np.array([1], np.int64), "axes")], keepdims=1)
    c = g.op("Conv", [r, g.rand(2, 4, 1, 1)], kernel_shape=[1, 1])
    model = g.model([s, c])
    copy_channels(model, [w], 0, [2])
    merged, report = merge_identical(model)
    e = _entry(report, 0)
    assert e["status"] == "skipped" and "ReduceSum" in e["reason"], e
    assert report["channels_removed"] == 0 and report["max_rel_err"] <= 1e-5


def test_given_clusters_that_differ_are_refused():
    """merge_clusters checks the clusters (tol); without the check the proof itself fails loudly."""
    model, _ = chain()
    _, report = merge_clusters(model, {0: [[0, 1]]})
    assert _entry(report, 0)["status"] == "skipped" and "differ" in _entry(report, 0)["reason"]
    with pytest.raises(VerificationError, match="does not reproduce the original"):
        merge_clusters(model, {0: [[0, 1]]}, tol=None)
