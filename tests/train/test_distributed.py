"""DDP: two gloo ranks on CPU reach the same weights as one rank with the same global batch."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from . import _ddp_worker

dist = pytest.importorskip("torch.distributed")


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_ranks_match_one_rank(tmp_path):
    """C-SGD, GReg-1 and gates act on all-reduced gradients identically on every rank (max diff <= 1e-5)."""
    mp.spawn(_ddp_worker.worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for method in _ddp_worker.METHODS:
        ref = _ddp_worker.run(method)
        if method == "gates":
            assert float(ref["bn1.gate"].min()) < 0.99, "the gate penalty must have acted during the run"
        ranks = [torch.load(tmp_path / f"{method}_rank{r}.pt", weights_only=True) for r in (0, 1)]
        for key, value in ref.items():
            if not value.is_floating_point():
                continue
            for r, state in enumerate(ranks):
                diff = float((state[key] - value).abs().max())
                assert diff <= 1e-5, f"{method}: rank {r} {key} differs from the single-rank run by {diff:.2e}"
