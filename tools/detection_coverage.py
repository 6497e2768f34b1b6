"""Coverage of detection and segmentation models: export, prune at ratio 0.5, prove, time.

Rows (``ROWS``): torchvision's detectors exported whole (pre-processing, anchors, NMS and
post-processing in the graph) by the TorchScript exporter at opset 17 from a list of one 3x320x320
image; torchvision's segmentation models (``model(x)["out"]``, 1x3x320x320)
by the TorchScript exporter (opset 17) and the dynamo exporter (its default opset, 18); ultralytics
YOLO models built from their YAML configs and exported by ultralytics' own
``model.export(format="onnx", imgsz=320, opset=17, simplify=False)``: yolov8n also with its NMS
(``nms=True, conf=0.001``: at the default conf of 0.25 no untrained box survives), the NMS-free
yolov10n and yolo26n also as their one-to-one branch with TopK in the graph (``nms=False``).

Weights are random (no pretrained weights are downloaded). An untrained net's output barely
depends on its input: the constant parts (biases, BatchNorm shifts) dominate after a few layers,
so a proof on random inputs has nothing to tell apart (``verify.discrimination`` near 0). Drawing
the BatchNorm statistics at fixed ranges does not fix that on a deep net: on yolov8n, running_var
U(0.15, 0.45) still leaves an output0 that two random inputs change by 2.5e-4 of its scale (its
class scores by 1e-3), and U(0.05, 0.15) already saturates 99.9% of the class scores at 0 or 1. So (``--norms measured``, default) the
affine of every BatchNorm2d / FrozenBatchNorm2d is drawn (weight U(0.5, 1.5), bias N(0, 0.2)) and
its running statistics are *measured*: the per-channel mean and variance of its input on a batch
of 4 standard normal 320x320 images, layer after layer in forward order, as a trained model's
statistics are those of its activations. Every normalised activation then has a live,
input-dependent part. ``--norms drawn`` uses fixed draws instead (the ranges above, running_mean
N(0, 0.1)), to show the difference. The convs torchvision initialises at N(0, 0.01) (RetinaNet's
and FCOS' heads, the R-CNNs' RPN head; a 3x3 conv over 256 channels then has a gain of
0.01 * sqrt(2304) ~ 0.5, and RetinaNet stacks five with no norm between them) shrink the signal
until the scores are the classifier's prior whatever the input, and the R-CNNs' class scores (a
Linear at PyTorch's default init) start near-uniform over 91 classes (Faster R-CNN's best boxes
scored 0.015-0.019, under the default threshold of 0.05: its outputs were empty); in the same
measured pass the weights of these layers are scaled so that their output less its bias has unit
standard deviation. The detectors keep their default score thresholds and then return 100-300
boxes on a random image. Every draw is seeded (``--seed``, default 0).

Each row checks that the exported model is alive before it is pruned: *input effect* is the
smallest, over the outputs, relative change max|f(x1) - f(x2)| / max|f(x1)| between two random
inputs (verify's own inputs and measure); for YOLO also over the class scores alone, whose
median / max are shown (an untrained head's class bias is ultralytics' prior, ~-11.5 at stride 8,
so its scores sit near 1e-5; saturated would be 0 or 1).

Then ``compressor.api.prune(model, ratio=0.5)`` with verification on, and the dense and pruned
models timed interleaved by ``compressor.bench.benchmark`` (CPU provider, 2 threads, spinning
off, ``--min-time`` seconds each, seeded random inputs). A detector's post-NMS work follows its
scores, which differ between the two models on random inputs: its speedup is indicative only.

Every row runs in its own process with a time limit (``--row-timeout``); an export that fails, a
proof that fails, a crash or a timeout is a row that says so (and makes the tool exit 1).

Needs torchvision and ultralytics (the zoo venv plus ultralytics; ``make zoo-detect``):

    .venv-zoo/bin/pip install "ultralytics==8.4.190"
    .venv-zoo/bin/python tools/detection_coverage.py --models yolov8n,ssdlite320_mobilenet_v3_large
    .venv-zoo/bin/python tools/detection_coverage.py --markdown docs/coverage.md

Exports are cached under ``out/detect/`` (git-ignored), keyed by the norms mode and seed; ``--fresh``
re-exports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from _coverage import prune_report  # noqa: E402  (stdlib only at import time)
from bench_peers import write_block  # noqa: E402

RATIO = 0.5
SIZE = 320
OPSET = 17
THREADS = 2
TOLERANCE = 1e-4  # api.prune's default
#: below this input effect the outputs barely depend on the input (a dead untrained net)
LIVE_EFFECT = 1e-2
#: above this share of class scores at exactly 0 or 1 the scores are flagged as saturated
SATURATED = 1e-2
CALIBRATION_BATCH = 4
#: changes with how the weights are made, so cached exports made otherwise are not reused
RECIPE = "measured norms, small-init head layers and R-CNN class scores at unit output"
#: --norms drawn: the fixed ranges (weight, bias, running_mean, running_var)
DRAWN = {"weight": (0.5, 1.5), "bias_sd": 0.2, "mean_sd": 0.1, "var": (0.15, 0.45)}


@dataclass(frozen=True)
class Spec:
    model: str  # torchvision builder name or ultralytics YAML stem
    family: str  # "detection" | "segmentation" | "yolo"
    exporter: str  # "torchscript" | "dynamo" | "ultralytics"
    kwargs: tuple = ()  # builder keyword arguments, as (name, value) pairs
    scores: str = ""  # YOLO: where the class scores are ("rows", "softmax", "dets")
    variant: str = ""  # tells two rows of one model and exporter apart in their id

    @property
    def id(self) -> str:
        return f"{self.model}{'+' + self.variant if self.variant else ''}@{self.exporter}"

    @property
    def label(self) -> str:
        """The exporter and the arguments that differ from the defaults, as the table shows them."""
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs)
        return f"{self.exporter} ({args})" if args else self.exporter


_SEG = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")
#: torchvision's detectors at 320x320 (SSDlite's is fixed there)
_AT320 = (("min_size", SIZE), ("max_size", SIZE))
ROWS: list[Spec] = [
    Spec("ssdlite320_mobilenet_v3_large", "detection", "torchscript"),
    Spec("fasterrcnn_mobilenet_v3_large_320_fpn", "detection", "torchscript"),
    Spec("retinanet_resnet50_fpn", "detection", "torchscript", _AT320),
    Spec("fcos_resnet50_fpn", "detection", "torchscript", _AT320),
    Spec("maskrcnn_resnet50_fpn", "detection", "torchscript", _AT320),
    # torch.export's data-dependent guards (the number of boxes after NMS) stop the dynamo exporter
    Spec("ssdlite320_mobilenet_v3_large", "detection", "dynamo"),
    Spec("fasterrcnn_mobilenet_v3_large_320_fpn", "detection", "dynamo"),
    Spec("retinanet_resnet50_fpn", "detection", "dynamo", _AT320),
    *[Spec(m, "segmentation", e) for m in _SEG for e in ("torchscript", "dynamo")],
    Spec("yolov8n", "yolo", "ultralytics", scores="rows"),
    Spec("yolov8n", "yolo", "ultralytics", (("nms", True), ("conf", 0.001)), scores="dets", variant="nms"),
    Spec("yolo11n", "yolo", "ultralytics", scores="rows"),
    Spec("yolov5nu", "yolo", "ultralytics", scores="rows"),
    Spec("yolov8n-seg", "yolo", "ultralytics", scores="rows"),
    Spec("yolo11n-seg", "yolo", "ultralytics", scores="rows"),
    Spec("yolov8n-pose", "yolo", "ultralytics", scores="rows"),
    Spec("yolov8n-obb", "yolo", "ultralytics", scores="rows"),
    Spec("yolov8n-cls", "yolo", "ultralytics", scores="softmax"),
    # NMS-free heads: ultralytics 8.4 exports their one-to-one branch (TopK in the graph, (1, 300, 6)
    # out) only with nms=False; by default (nms=None) it exports the one-to-many branch as yolov8n's
    Spec("yolov10n", "yolo", "ultralytics", scores="rows"),
    Spec("yolov10n", "yolo", "ultralytics", (("nms", False),), scores="dets", variant="e2e"),
    Spec("yolo26n", "yolo", "ultralytics", scores="rows"),
    Spec("yolo26n", "yolo", "ultralytics", (("nms", False),), scores="dets", variant="e2e"),
]


@dataclass
class Row:
    model: str
    exporter: str
    status: str = "ok"  # ok | FAIL | error | export failed | timed out
    note: str = ""
    stage: str = ""  # the stage reached: export, input effect, prune, bench, done
    export_s: float | None = None
    input_effect: float | None = None
    least_live: str = ""  # the output (or part) with the smallest input effect
    scores_median: float | None = None
    scores_max: float | None = None
    scores_saturated: float | None = None  # share of the class scores at exactly 0 or 1
    groups_pruned: int | None = None
    groups_total: int | None = None
    macs_ratio: float | None = None
    passed: bool | None = None
    max_rel_err: float | None = None
    discrimination: float | None = None
    pinned: int | None = None
    compared: int | None = None
    prune_s: float | None = None
    first_ms: float | None = None  # the dense model's second run in the input-effect check
    dense_ms: float | None = None
    speedup: float | None = None
    speedup_p10: float | None = None
    speedup_p90: float | None = None
    nms_dense: float | None = None  # share of the kernel time in NonMaxSuppression
    nms_pruned: float | None = None
    boxes_dense: int | None = None  # a torchvision detector's boxes on the timing input
    boxes_pruned: int | None = None
    warnings: list = field(default_factory=list)


# ---- weights -------------------------------------------------------------------------------------
def _is_norm(module) -> bool:
    import torch

    return isinstance(module, torch.nn.BatchNorm2d) or type(module).__name__ == "FrozenBatchNorm2d"


def set_norms(model, forward, seed: int = 0, mode: str = "measured", unit_layers=()) -> int:
    """Give every BatchNorm2d / FrozenBatchNorm2d of ``model`` a random affine and statistics that
    keep its activations alive; returns how many were set.

    ``measured``: weight U(0.5, 1.5), bias N(0, 0.2) drawn (seeded), then ``forward()`` is run once
    in eval mode and each norm's running mean and variance are set, just before it runs, to the
    per-channel mean and variance of its input (over every axis but the channels), so each layer
    sees the statistics of the layers before it as they now are. In the same pass each layer of
    ``unit_layers`` (a conv or a Linear) has its weight scaled so that its output less its bias has a standard deviation
    of 1. A module called more than once keeps what its first call set. ``drawn``: fixed ranges
    (``DRAWN``), no forward pass, ``unit_layers`` left alone.
    """
    import torch

    if mode not in ("measured", "drawn"):
        raise ValueError(f"norms mode must be 'measured' or 'drawn', got {mode!r}")
    gen = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in model.modules() if _is_norm(m)]
    lo, hi = DRAWN["weight"]
    with torch.no_grad():
        for m in norms:
            n = m.weight.shape[0]
            m.weight.copy_(torch.rand(n, generator=gen) * (hi - lo) + lo)
            m.bias.copy_(torch.randn(n, generator=gen) * DRAWN["bias_sd"])
            if mode == "drawn":
                vlo, vhi = DRAWN["var"]
                m.running_mean.copy_(torch.randn(n, generator=gen) * DRAWN["mean_sd"])
                m.running_var.copy_(torch.rand(n, generator=gen) * (vhi - vlo) + vlo)
    if mode == "drawn":
        return len(norms)
    seen: set[int] = set()

    def measure(module, args):
        if id(module) in seen:
            return
        seen.add(id(module))
        x = args[0].detach().double()
        dims = [0] + list(range(2, x.ndim))
        module.running_mean.copy_(x.mean(dims).to(module.running_mean.dtype))
        module.running_var.copy_(x.var(dims, unbiased=False).to(module.running_var.dtype))

    def unit(module, args, out):
        if id(module) in seen:
            return None
        seen.add(id(module))
        bias = 0 if module.bias is None else module.bias.view(1, -1, *([1] * (out.ndim - 2)))
        sd = float((out - bias).double().std())
        if not sd > 0:
            return None
        module.weight.mul_(1 / sd)
        return (out - bias) / sd + bias

    hooks = [m.register_forward_pre_hook(measure) for m in norms]
    hooks += [m.register_forward_hook(unit) for m in unit_layers]
    try:
        model.eval()
        with torch.no_grad():
            forward()
    finally:
        for h in hooks:
            h.remove()
    if len(seen) != len(norms) + len(unit_layers):
        raise RuntimeError(f"{len(norms) + len(unit_layers) - len(seen)} of {len(norms)} norms and "
                           f"{len(unit_layers)} layers did not run in the calibration pass")
    return len(norms)


def small_init_layers(model) -> list:
    """The layers of a torchvision detector whose init leaves its scores at their prior whatever the
    input: the convs initialised at N(0, 0.01) (RetinaNet's and FCOS' heads, the R-CNNs' RPN head:
    a 3x3 conv over 256 channels has a gain of ~0.5), and the R-CNNs' class scores (a Linear at
    PyTorch's default init: near-uniform over 91 classes, under the default threshold of 0.05).
    ``set_norms`` gives them unit output instead."""
    import torch

    heads = []
    if type(model).__name__ in ("RetinaNet", "FCOS"):
        heads.append(model.head)
    if hasattr(model, "rpn"):
        heads.append(model.rpn.head)
    layers = [m for h in heads for m in h.modules() if isinstance(m, torch.nn.Conv2d)]
    if hasattr(model, "roi_heads"):
        layers.append(model.roi_heads.box_predictor.cls_score)
    return layers


def _images(seed: int, n: int = CALIBRATION_BATCH):
    import numpy as np
    import torch

    rng = np.random.default_rng([seed, 2])
    return torch.from_numpy(rng.standard_normal((n, 3, SIZE, SIZE), dtype=np.float32))


# ---- export --------------------------------------------------------------------------------------
def export(spec: Spec, cache: Path, seed: int, norms: str, fresh: bool = False) -> Path:
    import hashlib

    digest = hashlib.sha1(repr((RECIPE, spec.kwargs)).encode()).hexdigest()[:8]  # the builder's arguments
    path = cache / f"{spec.id}_{norms}_s{seed}_{digest}.onnx"
    if path.exists() and not fresh:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{path.stem}.tmp.onnx"
    if spec.family == "yolo":
        _export_yolo(spec, tmp, seed, norms)
    else:
        _export_torchvision(spec, tmp, seed, norms)
    import onnx

    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))
    for p in cache.glob(f".{path.stem}.tmp.onnx*"):
        p.unlink()
    return path


def _export_torchvision(spec: Spec, out: Path, seed: int, norms: str) -> None:
    import torch
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"weights": None, "weights_backbone": None, **dict(spec.kwargs)}
    x = _images(seed)
    if spec.family == "detection":
        model = getattr(torchvision.models.detection, spec.model)(**kwargs).eval()
        set_norms(model, lambda: model(list(x)), seed, norms, small_init_layers(model))
        with torch.no_grad():
            outputs = list(model([x[0]])[0])  # the keys of its one result, in order: the R-CNNs put labels first
        args, inputs = ([x[0]],), ["images"]
    else:
        base = getattr(torchvision.models.segmentation, spec.model)(**kwargs).eval()
        set_norms(base, lambda: base(x), seed, norms)

        class Out(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, image):
                return self.m(image)["out"]

        model, args, inputs, outputs = Out(base).eval(), (x[:1],), ["input"], ["out"]
    with torch.no_grad():
        if spec.exporter == "dynamo":
            torch.onnx.export(model, args, str(out), dynamo=True, input_names=inputs, output_names=outputs,
                              external_data=False)
        else:
            torch.onnx.export(model, args, str(out), dynamo=False, opset_version=OPSET, input_names=inputs,
                              output_names=outputs)


def _export_yolo(spec: Spec, out: Path, seed: int, norms: str) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO(f"{spec.model}.yaml")
    x = _images(seed)
    set_norms(yolo.model, lambda: yolo.model(x), seed, norms)
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # ultralytics writes <name>.onnx into the working folder
        try:
            written = yolo.export(format="onnx", imgsz=SIZE, opset=OPSET, simplify=False, **dict(spec.kwargs))
        finally:
            os.chdir(here)
        shutil.move(str(Path(tmp) / written), str(out))


# ---- liveness ------------------------------------------------------------------------------------
def relative_change(a, b) -> float | None:
    """max|a - b| / max|a| over finite entries (verify's measure); 1.0 when the shapes differ (a
    different number of detections), None when there is nothing to compare."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return 1.0
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return None
    scale = np.abs(a[finite]).max()
    diff = np.abs(a[finite] - b[finite]).max()
    if scale == 0:
        return 0.0 if diff == 0 else 1.0
    return float(diff / scale)


def class_scores(kind: str, output0, nc: int):
    """The class probabilities of a YOLO output0: ``rows`` (1, 4 + nc + extra, anchors), ``softmax``
    (1, classes: a classifier), ``dets`` (1, max_det, 6+: x1 y1 x2 y2 score class ...)."""
    import numpy as np

    y = np.asarray(output0)
    if kind == "rows":
        return y[0, 4:4 + nc]
    if kind == "softmax":
        return y[0]
    if kind == "dets":
        return y[0, :, 4]
    raise ValueError(f"unknown scores kind {kind!r}")


def input_effect(outs_a: dict, outs_b: dict, extra: dict | None = None) -> tuple[float | None, str]:
    """(smallest relative change over the outputs and the ``extra`` parts, its name)."""
    pairs = {k: (outs_a[k], outs_b[k]) for k in outs_a}
    pairs.update(extra or {})
    changes = {k: relative_change(a, b) for k, (a, b) in pairs.items()}
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return None, ""
    name = min(changes, key=changes.get)
    return changes[name], name


def measure_liveness(spec: Spec, path: Path, row: Row) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from compressor.ir.shapes import random_feeds, resolve_inputs

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    spec_in = resolve_inputs(proto)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = []
    for seed in (0, 1):
        t0 = time.perf_counter()
        outs.append(dict(zip(names, sess.run(None, random_feeds(spec_in, seed=seed)))))
    row.first_ms = 1000 * (time.perf_counter() - t0)  # one untimed-for-the-table run, to size the warm-up
    extra = {}
    if spec.family == "yolo":
        import ast

        nc = len(ast.literal_eval(meta.get("names", "{}"))) or 80
        sa, sb = (class_scores(spec.scores, o[names[0]], nc) for o in outs)
        extra["class scores"] = (sa, sb)
        kept = sa[sa > 0] if spec.scores == "dets" else sa  # dets: padded with zeros after the last box
    elif spec.family == "detection":
        kept = outs[0]["scores"]
    else:
        kept = np.zeros(0)
    if kept.size:
        row.scores_median, row.scores_max = float(np.median(kept)), float(kept.max())
        row.scores_saturated = float(np.mean((kept <= 0) | (kept >= 1)))
    row.input_effect, row.least_live = input_effect(outs[0], outs[1], extra)


def _has_op(graph, op: str) -> bool:
    """Does ``graph`` or one of its subgraphs (an If's branches, a Loop's body) hold an ``op`` node?"""
    from onnx import AttributeProto

    for node in graph.node:
        if node.op_type == op:
            return True
        for attr in node.attribute:
            subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            if any(_has_op(g, op) for g in subs):
                return True
    return False


def kernel_shares(events: list[dict], ops: frozenset = frozenset({"NonMaxSuppression"})) -> float | None:
    """The share of the kernel time in an onnxruntime profile (its JSON events) spent in ``ops``,
    the first run (a warm-up) left out; control-flow nodes (If, Loop, Scan) are left out too, as
    their subgraphs' kernels are listed as well."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[1] if len(runs) > 1 else float("-inf")
    total = part = 0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < start:
            continue
        op = e.get("args", {}).get("op_name", "")
        if op in ("If", "Loop", "Scan"):
            continue
        total += e.get("dur", 0)
        part += e.get("dur", 0) if op in ops else 0
    return part / total if total else None


def nms_share(path: Path, first_ms: float | None) -> float | None:
    """The share of a model's kernel time spent in NonMaxSuppression (onnxruntime's profiler, CPU
    provider, 2 threads, seeded random input, after one untimed run); None without NMS."""
    import onnx
    import onnxruntime as ort

    from compressor.ir.shapes import random_feeds, resolve_inputs

    proto = onnx.load(str(path))
    if not _has_op(proto.graph, "NonMaxSuppression"):
        return None
    feeds = random_feeds(resolve_inputs(proto), seed=0)
    del proto
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(1 + (1 if first_ms and first_ms > 1000 else 3)):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return kernel_shares(events)


def boxes_found(path: Path) -> int:
    """How many boxes a torchvision detector returns on the timing's input (compress bench's seeded
    random feeds): its work after the heads follows them."""
    import onnx
    import onnxruntime as ort

    from compressor.bench.inputs import random_feeds, resolve_input_shapes

    proto = onnx.load(str(path), load_external_data=False)
    shapes, _ = resolve_input_shapes(proto, {})
    feeds = random_feeds(proto, shapes, seed=0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return int(sess.run(None, feeds)[0].shape[0])


def warmup_runs(run_ms: float | None) -> int:
    """compress bench's 10 warm-up rounds, fewer for a slow model (Mask R-CNN runs 10 s on 2 cores):
    about 5 s of them, at least 2."""
    if not run_ms:
        return 10
    return max(2, min(10, int(5000 / run_ms)))


# ---- one row -------------------------------------------------------------------------------------
def _err(exc: BaseException, limit: int = 120) -> str:
    """One line: the exception's type and first line; for torch.export's wrapped errors, the line
    after its "## Exception summary" (the cause), its ANSI colours removed."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "## Exception summary" in lines[:-1]:
        cause = lines[lines.index("## Exception summary") + 1]
        cause = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:", r"\1:", cause)
        return f"{type(exc).__name__}: {cause[:limit]}"
    return f"{type(exc).__name__}: {(lines[0] if lines else '')[:limit]}"


def run_row(spec: Spec, cache: Path, seed: int, norms: str, fresh: bool, min_time: float,
            save=lambda row: None) -> Row:
    """Export, check the outputs depend on the input, prune (verified), time; ``save(row)`` after
    every stage, so a row killed by its time limit still says how far it got."""
    row = Row(model=spec.model, exporter=spec.label, stage="export")
    save(row)
    t0 = time.perf_counter()
    try:
        path = export(spec, cache, seed, norms, fresh)
    except Exception as exc:  # noqa: BLE001 - a row per failure, the matrix goes on
        row.status, row.note = "export failed", _err(exc)
        traceback.print_exc()
        return row
    row.export_s = time.perf_counter() - t0
    row.stage = "input effect"
    save(row)
    try:
        measure_liveness(spec, path, row)
    except Exception as exc:  # noqa: BLE001
        row.status, row.note = "error", f"input effect: {_err(exc)}"
        traceback.print_exc()
        return row
    row.stage = "prune"
    save(row)
    pruned = path.with_name(path.stem + "_pruned.onnx")
    pruned.unlink(missing_ok=True)
    rep, row.prune_s = prune_report(row, path, err=_err, ratio=RATIO, output=str(pruned))
    if rep is None:
        return row
    g = rep["groups"]
    row.groups_pruned, row.groups_total = g.get("pruned"), g.get("total")
    row.macs_ratio = rep["macs_before"] / rep["macs_after"] if rep.get("macs_after") else None
    ver = rep.get("verify") or {}
    row.passed, row.max_rel_err = ver.get("passed"), ver.get("max_rel_err")
    row.discrimination = ver.get("discrimination")
    row.pinned = len(ver.get("pinned") or [])
    row.compared = len(ver.get("outputs") or {})
    row.warnings = list(rep.get("warnings", []))
    if row.status != "ok" or not pruned.exists():
        return row
    row.stage = "bench"
    save(row)
    try:
        from compressor.bench import benchmark

        res = benchmark([str(path), str(pruned)], provider="cpu", threads=THREADS, min_time=min_time,
                        warmup=warmup_runs(row.first_ms), spinning=False, progress=False, log=None)
        dense, small = res.results
        row.dense_ms = dense.stats.p50_ms
        spread = small.ratio_to_first
        row.speedup, row.speedup_p10, row.speedup_p90 = spread.median, spread.p10, spread.p90
        row.nms_dense, row.nms_pruned = nms_share(path, row.first_ms), nms_share(pruned, row.first_ms)
        if spec.family == "detection":
            row.boxes_dense, row.boxes_pruned = boxes_found(path), boxes_found(pruned)
    except Exception as exc:  # noqa: BLE001
        row.status, row.note = "error", f"bench: {_err(exc)}"
        traceback.print_exc()
        return row
    row.stage = "done"
    return row


def run_isolated(spec: Spec, args, log_dir: Path) -> Row:
    """``run_row`` in a child process under ``args.row_timeout``; its output goes to a log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{spec.id}.log"
    result = log_dir / f"{spec.id}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec.id, "--child-out", str(result),
           "--cache", args.cache, "--seed", str(args.seed), "--norms", args.norms, "--min-time", str(args.min_time)]
    if args.fresh:
        cmd.append("--fresh")
    env = dict(os.environ, YOLO_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=args.row_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group: it and what it started
            proc.wait()
            rc = None
    row = Row(**json.loads(result.read_text())) if result.exists() else Row(model=spec.model, exporter=spec.label)
    if rc is None:
        row.status = "timed out"
        row.note = f"over {args.row_timeout:.0f} s, in {row.stage or 'start-up'}"
    elif rc != 0 and row.stage != "done" and row.status == "ok":
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
        row.status, row.note = "error", f"child exited {rc} in {row.stage or 'start-up'}: {tail[0][:200]}"
    row.warnings = row.warnings or []
    print(f"    ({time.perf_counter() - t0:.0f} s, log {log.relative_to(ROOT) if log.is_relative_to(ROOT) else log})",
          flush=True)
    return row


# ---- table ---------------------------------------------------------------------------------------
HEAD = ["model", "exporter", "status", "groups pruned/total", "MACs ratio", "max rel err", "discrimination",
        "pinned", "compared", "prune s", "dense ms", "speedup (p10-p90)", "NMS share dense / pruned",
        "boxes dense / pruned", "input effect", "scores median / max"]


def verdict(r: Row) -> str:
    """The status cell: ok only when the proof passed and tells cuts apart, and the outputs live."""
    if r.status != "ok":
        return f"{r.status}: {r.note}" if r.note else r.status
    flags = []
    if r.input_effect is None:
        flags.append("outputs empty on both random inputs: nothing shows they depend on the input")
    elif r.input_effect < LIVE_EFFECT:
        flags.append(f"outputs barely depend on the input ({r.least_live})")
    if r.scores_saturated is not None and r.scores_saturated > SATURATED:
        flags.append(f"{100 * r.scores_saturated:.0f}% of the scores saturated at 0 or 1")
    if r.discrimination is not None and r.discrimination < 3 * TOLERANCE:
        flags.append("weak proof: discrimination < 3x tolerance")
    if r.boxes_dense is not None and r.boxes_pruned != r.boxes_dense:
        flags.append(f"speedup not like for like: the pruned model returns {r.boxes_pruned} boxes on the timing "
                     f"input, the dense {r.boxes_dense}")
    if r.macs_ratio is not None and r.macs_ratio < 1 / 0.7:
        flags.append("less than 30% of the MACs cut")
    return "ok" + (f" ({'; '.join(flags)})" if flags else "")


def cells(r: Row) -> list[str]:
    f = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    groups = "" if r.groups_total is None else f"{r.groups_pruned}/{r.groups_total}"
    speed = ""
    if r.speedup is not None:
        speed = f"{r.speedup:.2f} ({r.speedup_p10:.2f}-{r.speedup_p90:.2f})"
    nms = "" if r.nms_dense is None else f"{100 * r.nms_dense:.0f}% / {100 * (r.nms_pruned or 0):.0f}%"
    boxes = "" if r.boxes_dense is None else f"{r.boxes_dense} / {r.boxes_pruned}"
    effect = f(r.input_effect, ".2g") + (f" ({r.least_live})" if r.input_effect is not None and r.least_live else "")
    scores = "" if r.scores_median is None else f"{r.scores_median:.1e} / {r.scores_max:.1e}"
    if r.scores_saturated:
        scores += f" ({100 * r.scores_saturated:.2g}% at 0 or 1)"
    return [r.model, r.exporter, verdict(r), groups, f(r.macs_ratio, ".2f"), f(r.max_rel_err, ".1e"),
            f(r.discrimination, ".1e"), f(r.pinned, "d"), f(r.compared, "d"), f(r.prune_s, ".1f"),
            f(r.dense_ms, ".1f"), speed, nms, boxes, effect, scores]


def good(r: Row) -> bool:
    return verdict(r) == "ok"


def summary(rows: list[Row]) -> str:
    proven = [r for r in rows if r.status == "ok" and r.passed]
    bad = [r for r in rows if r.status in ("FAIL", "error", "timed out")]
    return (f"{len(proven)}/{len(rows)} rows pruned and proven ({sum(good(r) for r in rows)} with no flag); "
            f"{len(bad)} failed, crashed or timed out; "
            f"{sum(1 for r in rows if r.status == 'export failed')} did not export.")


def markdown(rows: list[Row], command: str, provenance: str) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["<!-- generated by tools/detection_coverage.py; edit the text outside the table by hand -->",
             f"Generated by `{command}` on {provenance}.", "", "| " + " | ".join(HEAD) + " |",
             "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(esc(c) for c in cells(r)) + " |" for r in rows]
    lines += ["", summary(rows)]
    return "\n".join(lines) + "\n"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def provenance(args, load: tuple[float, float], seconds: float) -> str:
    import datetime
    import platform

    import onnxruntime

    when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return (f"{when}; torch {_version('torch')}, torchvision {_version('torchvision')}, ultralytics "
            f"{_version('ultralytics')}, onnxruntime {onnxruntime.__version__} "
            f"(CPU provider, {THREADS} threads, spinning off, interleaved, --min-time {args.min_time:g} s); "
            f"{platform.machine()}, {os.cpu_count()} cores, 1-min load {load[0]:.1f} before, {load[1]:.1f} after; "
            f"seed {args.seed}, BatchNorm statistics {args.norms}; input {SIZE}x{SIZE}, ratio {RATIO}; "
            f"{seconds / 60:.0f} min in all")


BEGIN, END = "<!-- detect-table:begin -->", "<!-- detect-table:end -->"
TITLE = "## Detection and segmentation (tools/detection_coverage.py)"


def select(models: str | None, exporters: str | None) -> list[Spec]:
    """The rows named by ``--models`` (model names or row ids) and ``--exporters``, in ROWS order."""
    want = {m.strip() for m in (models or "").split(",") if m.strip()}
    exp = {e.strip() for e in (exporters or "").split(",") if e.strip()}
    known = {s.model for s in ROWS} | {s.id for s in ROWS}
    unknown = sorted(want - known)
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted({s.model for s in ROWS})}")
    return [s for s in ROWS if (not want or s.model in want or s.id in want)
            and (not exp or s.exporter in exp)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated model names or row ids (model@exporter); default: all rows")
    ap.add_argument("--exporters", help="comma-separated: torchscript, dynamo, ultralytics")
    ap.add_argument("--cache", default=str(ROOT / "out" / "detect"), help="folder for exported and pruned models")
    ap.add_argument("--fresh", action="store_true", help="re-export even if a cached file exists")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights, the BatchNorm draws and calibration")
    ap.add_argument("--norms", choices=["measured", "drawn"], default="measured",
                    help="BatchNorm statistics measured on random inputs (default) or drawn at fixed ranges")
    ap.add_argument("--min-time", type=float, default=4.0, help="seconds each model runs in the interleaved timing")
    ap.add_argument("--row-timeout", type=float, default=900.0, help="seconds allowed for one row (export to timing)")
    ap.add_argument("--markdown", help="write the table into this markdown file")
    ap.add_argument("--json", help="write all rows as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one row, in a subprocess
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        spec = next(s for s in ROWS if s.id == args.child)
        out = Path(args.child_out)

        def save(row: Row) -> None:  # atomic: a row killed by its time limit leaves a whole file
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(asdict(row)))
            tmp.replace(out)

        import torch

        torch.set_num_threads(THREADS)
        row = run_row(spec, Path(args.cache), args.seed, args.norms, args.fresh, args.min_time, save)
        save(row)
        return 0

    specs = select(args.models, args.exporters)
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    rows = []
    for k, spec in enumerate(specs, 1):
        print(f"[{k}/{len(specs)}] {spec.model} ({spec.label})", flush=True)
        r = run_isolated(spec, args, Path(args.cache) / "logs")
        rows.append(r)
        c = cells(r)
        print(f"    {c[2]}\n    groups {c[3]}  MACs x{c[4]}  err {c[5]}  disc {c[6]}  pinned {c[7]}  compared {c[8]}  "
              f"prune {c[9]} s  dense {c[10]} ms  speedup {c[11]}  NMS {c[12]}  boxes {c[13]}  input effect {c[14]}  "
              f"scores {c[15]}", flush=True)
    seconds = time.perf_counter() - t_all
    print(summary(rows) + f" ({seconds / 60:.1f} min)", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.markdown:
        command = ".venv-zoo/bin/python tools/detection_coverage.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        text = markdown(rows, command.strip(), provenance(args, (load_before[0], os.getloadavg()[0]), seconds))
        write_block(Path(args.markdown), BEGIN, END, text, TITLE)
    return 0 if all(r.status in ("ok", "export failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
