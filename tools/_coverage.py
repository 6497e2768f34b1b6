"""What the coverage tools (zoo_coverage, timm_coverage, hf_coverage, detection_coverage) share:
quieting an exporter, random parameters for an untrained model, and one pruning with its failure
kept as a row's status. Stdlib only at import time (torch and compressor are imported inside)."""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from collections import Counter
from typing import Callable


class quiet:
    """Silence the exporters' chatter on stdout/stderr (file-descriptor level)."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)
        os.dup2(self._null, 2)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in (*self._saved, self._null):
            os.close(fd)
        return False


def randomize_parameters(model, seed: int = 0, constant_too: bool = False) -> None:
    """1-D parameters drawn at random (biases N(0, 0.1), the others U(0.5, 1.5)) and BatchNorm
    statistics too (mean N(0, 0.1), variance U(0.5, 2)), as in a trained model. With
    ``constant_too``, also any parameter the library initialises to one value (ConvNeXt-V2's GRN
    weight [1, 1, 1, C] at zero: the dynamo exporter would share one zero constant between blocks,
    tying their channels together)."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            if p.ndim == 1 or (constant_too and flat.numel() > 1 and bool((flat == flat[0]).all())):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 if name.endswith("bias")
                        else torch.rand(p.shape, generator=g) + 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def one_line(exc: BaseException, limit: int = 160) -> str:
    """The exception's type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[0] if text else '')[:limit]}"


def bucket(reason: str) -> str:
    """A freeze reason without the node names (the op and what it does)."""
    return re.sub(r"'[^']*'", "'…'", reason)[:110]


def held(rep: dict) -> tuple[float, Counter]:
    """(share of the channels left whole, channels held per reason), leaving out the groups that
    only reach a graph output (the classifier)."""
    per_reason: Counter = Counter()
    total = rep["channels"]["total"]
    for u in rep.get("unprunable", []):
        reasons = [r for r in u["reasons"] if not r.startswith("reaches graph output")]
        if reasons:
            per_reason[bucket(reasons[0])] += u["channels"]
            total += u["channels"]
    return (sum(per_reason.values()) / max(total, 1) if per_reason else 0.0), per_reason


def prune_report(row, path, err: Callable[[BaseException], str] = one_line, **options) -> tuple[dict | None, float]:
    """``api.prune(path, **options)``'s report and its seconds (the report's own, else wall time).
    A failed proof sets ``row.status`` "FAIL" and still returns the report it carries; any other
    error sets "error" and returns None; ``row.note`` says why (``err`` writes the line)."""
    from compressor import api
    from compressor.errors import VerificationError

    t0 = time.perf_counter()
    try:
        rep = api.prune(str(path), **options).report
    except VerificationError as exc:
        row.status, row.note, rep = "FAIL", str(exc).splitlines()[0][:160], exc.report
    except Exception as exc:  # noqa: BLE001 - a row per failure, the matrix goes on
        row.status, row.note, rep = "error", err(exc), None
        traceback.print_exc()
    if rep is None:
        return None, time.perf_counter() - t0
    return rep, rep.get("seconds", time.perf_counter() - t0)
