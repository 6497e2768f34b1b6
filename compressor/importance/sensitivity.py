"""Group sensitivity: how much the model's outputs move when a group loses its least important channels.

Channel scores (magnitudes, BN scales, learned importances) rank channels *within* a group well but
do not compare groups: a residual trunk's channel and a block's internal channel of equal norm do
not matter equally to the output. The latency allocation (planning/allocate.py) has to compare
groups; on scores normalised per group it concentrated the cut where a channel saves the most
time, and lost accuracy (docs/benchmarks.md). Sensitivity is the comparable quantity; the
allocation uses it for latency targets by default and for MACs targets on request.

For every prunable group and every removed fraction of a small grid (0.25, 0.5, 0.75 by default),
the group's least important channels (by its scores, in the order a plan removes them) are masked
out of every consumer and the model is run on the inputs: the sensitivity is the relative change of
the outputs, ``sqrt(sum |y' - y|^2 / sum |y - mean(y)|^2)`` over every input (relative to each
output's spread, so a constant offset does not hide a change), averaged over the float outputs.
Between grid points it is interpolated linearly (from 0 at nothing removed) and made monotone.

One session runs every probe: the model carries a mask *input* at each consume point
(verify/oracle.py, :func:`masking_model`); its weights are embedded (one copy while it runs) so
that onnxruntime optimises the graph as it would the model itself.
Inputs: calibration data when given (a few real samples make it a data-aware criterion, like the
layer-wise sensitivity scans of NNCF/Distiller), else seeded random inputs at the model's shapes.
How many of them the probes use is set by a budget of multiply-accumulates (:data:`PROBE_MACS`),
not by a clock: the same command gives the same sensitivities on a busy machine.
Summing per-group sensitivities assumes they add up, the premise OrthoReg trains for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from compressor.analysis.groups import Analysis
from compressor.ir.shapes import InputSpec, random_feeds

#: Removed fractions probed per group (the latency allocation removes at most 0.75).
FRACTIONS = (0.25, 0.5, 0.75)
#: Multiply-accumulates all probe runs together may cost: the feeds used are cut to fit, counted on
#: the model's Conv/Gemm/MatMul layers (metrics.count), so the same data and model always use the
#: same feeds, however loaded the machine is (a timed budget made the same command use 224 or 64
#: samples). About 18 s on a 2-core CPU: the demo ResNet (31 M MACs a sample, 36 probes) uses 864
#: samples, a 28x28 ResNet-20 all of 256, resnet50 at 224 one random feed of 4.
PROBE_MACS = 1e12


@dataclass
class Sensitivity:
    """Per group: the relative output change at each probed removed fraction (``raw``), and its
    monotone envelope used for interpolation (``errors``)."""

    fractions: dict[int, np.ndarray]  # group id -> removed fractions probed (exact: count / size)
    raw: dict[int, np.ndarray]
    inputs: str = "random"
    runs: int = 0
    seconds: float = 0.0
    #: probed on top of a plan (re-probing): group id -> the removed fraction it had there, where
    #: its sensitivity starts from 0; ``raw`` is then the change beyond that plan's own
    base: dict[int, float] = field(default_factory=dict)
    base_change: float = 0.0  # the plan's own output change (re-probing)
    errors: dict[int, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.errors = {gid: np.maximum.accumulate(np.maximum(v, 0.0)) for gid, v in self.raw.items()}

    def at(self, gid: int, removed_fraction: float) -> float:
        """Interpolated sensitivity of group ``gid`` with ``removed_fraction`` of it removed (0 for a
        group that was not probed: nothing to compare it on; 0 up to its base fraction when
        re-probed on a plan)."""
        start = self.base.get(gid, 0.0)
        if gid not in self.errors or removed_fraction <= start:
            return 0.0
        xs = np.concatenate([[start], self.fractions[gid]])
        ys = np.concatenate([[0.0], self.errors[gid]])
        if removed_fraction > xs[-1]:  # beyond the grid: extend the last slope
            slope = (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-12)
            return float(ys[-1] + slope * (removed_fraction - xs[-1]))
        return float(np.interp(removed_fraction, xs, ys))

    def summary(self) -> dict:
        return {"inputs": self.inputs, "groups": len(self.raw), "runs": self.runs,
                "seconds": round(self.seconds, 2),
                **({"base_output_change": float(f"{self.base_change:.4g}"),
                    "base_removed": {str(g): round(f, 4) for g, f in sorted(self.base.items()) if f > 0}}
                   if self.base else {}),
                "per_group": {str(gid): {"removed": [round(float(f), 4) for f in self.fractions[gid]],
                                         "output_change": [float(f"{e:.4g}") for e in self.raw[gid]]}
                              for gid in sorted(self.raw)}}


def _output_change(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """Mean over the float outputs of sqrt(sum |got - ref|^2 / sum |ref - mean(ref)|^2), sums over
    every feed, the mean over all of them (a batch-1 model's one-value output varies across feeds,
    not within one). The spread, not |ref|^2: an output with a large constant offset (a bias a
    softmax ignores, pixel values) would otherwise look insensitive to anything. An output with no
    spread at all is compared against |ref|^2, or, all zero, by its change's RMS; an integer
    output (an argmax, a count) has no relative change and is left out."""
    per_output = []
    for k in range(len(ref[0])):
        if any(np.asarray(a[k]).dtype.kind != "f" or np.asarray(a[k]).size == 0 for a in ref):
            continue
        xs = [np.asarray(a[k], dtype=np.float64) for a in ref]
        ys = [np.asarray(b[k], dtype=np.float64) for b in got]
        count = sum(x.size for x in xs)
        mean = sum(float(x.sum()) for x in xs) / count
        num = sum(float(np.sum((y - x) ** 2)) for x, y in zip(xs, ys))
        den = sum(float(np.sum((x - mean) ** 2)) for x in xs)
        if den <= 0:
            den = sum(float(np.sum(x ** 2)) for x in xs)
        per_output.append(np.sqrt(num / den) if den > 0 else np.sqrt(num / count))
    return float(np.mean(per_output)) if per_output else 0.0


def calibration_feeds(spec: InputSpec, data: dict[str, np.ndarray] | None, batch: int = 32,
                      trials: int = 4, seed: int = 0,
                      fixed_batch: int | None = None) -> tuple[list[dict[str, np.ndarray]], str]:
    """The probes' inputs: ``data`` split into batches of ``batch`` samples, or of ``fixed_batch``
    for a model whose first input dimension is fixed (see :func:`fixed_batch_size`; a last partial
    batch is then left out); without data, ``trials`` seeded random feeds at ``spec``'s shapes."""
    if not data:
        return [random_feeds(spec, seed=seed + t) for t in range(trials)], f"random ({trials} seeded feeds)"
    from compressor.errors import UsageError

    names = list(spec.shapes)
    if None in data:  # one unnamed array (a .npy file): the model's only input
        if len(data) != 1 or len(names) != 1:
            raise UsageError(f"an unnamed calibration array fits a one-input model; this one has inputs {names} "
                             "(give a .npz file keyed by input name)")
        data = {names[0]: data[None]}
    if set(data) != set(names):
        raise UsageError(f"calibration data has inputs {sorted(data)}, the model {sorted(names)}")
    n = {len(np.asarray(v)) for v in data.values()}
    if len(n) != 1:
        raise UsageError(f"calibration inputs differ in sample count: {sorted(n)}")
    total = n.pop()
    feeds = []
    for name in names:
        arr = np.asarray(data[name])
        want = spec.shapes[name]
        if arr.ndim != len(want) or tuple(arr.shape[1:]) != tuple(want[1:]):
            raise UsageError(f"calibration input '{name}' has shape {list(arr.shape)}; the model takes "
                             f"{list(want)} (samples on the first axis)")
    if fixed_batch is not None:
        if total < fixed_batch:
            raise UsageError(f"the model's batch size is fixed at {fixed_batch}; the calibration data has "
                             f"only {total} sample(s)")
        step, total = fixed_batch, total - total % fixed_batch
    else:
        step = min(batch, total)
    for name in names:
        _check_castable(name, np.asarray(data[name]), np.dtype(spec.dtypes[name]))
    for lo in range(0, total, step):
        feeds.append({name: np.ascontiguousarray(np.asarray(data[name][lo:lo + step], dtype=spec.dtypes[name]))
                      for name in names})
    return feeds, f"calibration ({total} samples)"


def _check_castable(name: str, arr: np.ndarray, dtype: np.dtype) -> None:
    """Calibration data must mean the same after the cast to the input's type: whole numbers for an
    integer input, 0/1 for a bool one, finite values within a float input's range."""
    from compressor.errors import UsageError

    where = f"calibration input '{name}' ({arr.dtype})"
    if dtype.kind in "iu" and arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise UsageError(f"{where} feeds an integer input ({dtype}) but holds fractions; give whole numbers")
    if dtype.kind == "b" and arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
        raise UsageError(f"{where} feeds a bool input but holds values other than 0 and 1")
    if dtype.kind in "iu" and arr.dtype.kind in "iuf" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise UsageError(f"{where} has values outside the {dtype} range of its input")
    if dtype.kind == "f" and arr.dtype.kind == "f" and arr.size:
        cast = arr.astype(dtype)
        if not np.isfinite(cast).all():
            raise UsageError(f"{where} overflows the input's {dtype} (values up to {np.abs(arr).max():.3g})")


def fixed_batch_size(model) -> int | None:
    """The first dimension of the model's graph inputs when every one fixes it (an exported model
    with batch 1, say), else None (a symbolic batch: calibration runs in larger batches)."""
    from compressor.ir.shapes import graph_inputs

    sizes = set()
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value"):
            return None
        sizes.add(int(dims[0].dim_value))
    return sizes.pop() if len(sizes) == 1 else None


def feeds_within(analysis: Analysis, feeds: list[dict[str, np.ndarray]], probes: int,
                 mac_budget: float | None = PROBE_MACS) -> int:
    """How many of ``feeds`` (in order, at least one) ``probes`` runs of each fit in ``mac_budget``
    multiply-accumulates: a function of the model and the data only, never of the clock. A feed
    costs the model's MACs at its input shapes, scaled by the feed's batch over that batch."""
    if mac_budget is None or not feeds:
        return len(feeds)
    from compressor.metrics import count

    macs = count(analysis.index)[0]
    if macs <= 0:
        return len(feeds)
    shapes = analysis.index.spec.shapes
    used, spent = 0, 0.0
    for feed in feeds:
        scale = 1.0
        for name, arr in feed.items():
            want = shapes.get(name)
            if want and np.ndim(arr) and want[0]:
                scale = len(arr) / want[0]
                break
        spent += macs * scale * max(probes, 1)
        if used and spent > mac_budget:
            break
        used += 1
    return used


def measure_sensitivity(analysis: Analysis, scores: dict[int, np.ndarray], feeds: list[dict[str, np.ndarray]],
                        fractions=FRACTIONS, inputs: str = "random", progress: bool = False,
                        mac_budget: float | None = PROBE_MACS, whole=(),
                        base: dict[int, int] | None = None) -> Sensitivity:
    """Probe every prunable group at ``fractions`` removed (least important channels first, as
    ``scores`` order them) on ``feeds``; see the module docstring.

    ``mac_budget``: the probes use as many of ``feeds`` (in order, at least one) as fit in this many
    multiply-accumulates over all probe runs (:func:`feeds_within`; None: all of them), so the
    result does not depend on the machine's speed or load; ``Sensitivity.inputs`` says how many.

    ``whole``: groups also probed with every channel removed (those --drop-layers may remove).

    ``base``: re-probe on top of a plan, given as the channels it keeps per group (the most
    important, as ``scores`` order them; 0: removed whole). Every other group keeps its plan's
    channels while one group loses more: from its plan's width to the largest of ``fractions``
    removed, in as many steps (and to none, if in ``whole``). The sensitivity is the output change
    beyond the plan's own, so groups compare on what they cost from where the plan left them:
    a layer next to one already cut hard may now matter more than it did alone."""
    import onnxruntime as ort

    from compressor.ir.model_io import loadable_ir
    from compressor.verify.oracle import masking_model

    start = time.monotonic()
    mm = masking_model(analysis)
    model = mm.oracle.embedded()  # one copy of the weights, so that onnxruntime can fuse and pre-pack
    model.ir_version = loadable_ir(model.ir_version)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failed run is raised (and explained) below, not logged as well
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - an optimiser rewrite onnxruntime then refuses (seen: two Pads
        # fused into a MaxPool, "Pad should be smaller than kernel"): the probes run unoptimised
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del model
    names = [o.name for o in sess.get_outputs()]
    ones = mm.feeds({})
    groups = [g for g in analysis.prunable if g.size > 1]
    whole = set(whole)
    plans = []
    orders = {g.id: np.argsort(-np.asarray(scores[g.id], dtype=np.float64), kind="stable") for g in analysis.prunable}
    held: dict[int, list[int]] = {}  # the base plan's kept channels of the groups it narrows
    if base is not None:
        held = {g.id: sorted(int(i) for i in orders[g.id][: base[g.id]]) for g in analysis.prunable
                if base.get(g.id, g.size) < g.size}
    for g in groups:
        order = orders[g.id]
        if base is None:
            counts = sorted({min(g.size - 1, max(1, int(round(f * g.size)))) for f in fractions}
                            | ({g.size} if g.id in whole else set()))
        else:
            cut = g.size - base.get(g.id, g.size)  # what the plan removed already
            if cut >= g.size:
                continue  # removed whole: nothing further
            top = max(cut, min(g.size - 1, int(round(max(fractions) * g.size))))
            n = len(fractions)
            counts = sorted({cut + int(round((top - cut) * (k + 1) / n)) for k in range(n)} - {cut}
                            | ({g.size} if g.id in whole else set()))
            if not counts:
                continue
        plans.append((g, order, counts))
    probes = sum(len(c) for _, _, c in plans)

    try:
        sess.run(names, {**feeds[0], **ones})  # warm-up
    except Exception as exc:  # onnxruntime's own errors: out-of-range token ids, a batch the model cannot take
        from compressor.errors import UsageError

        first_line = " ".join(str(exc).split())[:300]
        raise UsageError(f"onnxruntime cannot run the model on the sensitivity probes' inputs ({inputs}; "
                         f"shapes {[list(np.shape(v)) for v in feeds[0].values()]}): {first_line}") from None
    first = sess.run(names, {**feeds[0], **ones})
    used = feeds_within(analysis, feeds, probes, mac_budget)
    if used < len(feeds):
        total = sum(len(next(iter(f.values()))) for f in feeds)
        taken = sum(len(next(iter(f.values()))) for f in feeds[:used])
        inputs = f"{inputs}, {taken} of {total} used (budget {mac_budget:.3g} MACs over {probes} probes)"
    feeds = feeds[:used]

    def run(masks: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        return [sess.run(names, {**f, **masks}) for f in feeds]

    ref = [first] + [sess.run(names, {**f, **ones}) for f in feeds[1:]]
    at_base = _output_change(ref, run(mm.feeds(held))) if held else 0.0
    fr, raw = {}, {}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=probes, desc="sensitivity", unit="probe", leave=False, disable=None)
    for g, order, counts in plans:
        errs = []
        for removed in counts:
            keep = {**held, g.id: sorted(int(i) for i in order[: g.size - removed])}
            errs.append(_output_change(ref, run(mm.feeds(keep))) - at_base)
            if bar is not None:
                bar.update(1)
        fr[g.id] = np.asarray(counts, dtype=np.float64) / g.size
        raw[g.id] = np.asarray(errs)
    if bar is not None:
        bar.close()
    based = {} if base is None else {g.id: 1.0 - base.get(g.id, g.size) / g.size for g in groups}
    return Sensitivity(fr, raw, inputs=inputs, runs=(probes + 1 + bool(held)) * len(feeds),
                       seconds=time.monotonic() - start, base=based, base_change=at_base)
