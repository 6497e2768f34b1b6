"""Coverage of Hugging Face transformers' vision models: export, prune at ratio 0.5, say what stays whole.

Users export transformers' image models with ``torch.onnx.export`` and prune the file. For every
(model, exporter) this builds a small member of the family from its config (random weights, no
download), wraps it so that the graph's one output is the head's class scores, exports it with
the dynamo exporter (opset 18) and the TorchScript exporter (opset 17), and runs
``compressor.api.prune(path, ratio=0.5)`` with verification on. Every 1-D parameter, every
parameter initialised to one value and every BatchNorm statistic is drawn at random, as in a
trained model: at the library's init, zero biases and unit scales make the outputs near-constant
and the proof's ``discrimination`` weak, and the dynamo exporter shares one constant between
identical parameters (ConvNeXt-V2's zero GRN weights), which ties their layers' channels together.

One row per export: prunable/total groups, channels removed/total, the MACs ratio (before/after),
the proof's max relative error and discrimination (how far a cut of other channels lands), the
seconds taken, the share of the channels left whole (the classifier's output not counted) and the
reason that holds the most of them. A model that does not export is listed with the exporter's
reason.

Needs transformers (the zoo venv plus transformers; ``make zoo-hf``):

    .venv-zoo/bin/pip install "transformers==5.24.0"
    .venv-zoo/bin/python tools/hf_coverage.py --models vit,swin --exporters legacy
    .venv-zoo/bin/python tools/hf_coverage.py --markdown docs/coverage.md     # ~3 min on 2 cores

Exports are cached under ``out/hf/`` (git-ignored); ``--fresh`` re-exports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from _coverage import held, one_line, prune_report, quiet, randomize_parameters  # noqa: E402  (stdlib only at import time)
from bench_peers import write_block  # noqa: E402


@dataclass(frozen=True)
class Spec:
    """A small member of one transformers family: its head class, config class and overrides."""

    model_class: str
    config_class: str
    config: dict = field(default_factory=dict)
    size: int = 64  # square input side
    #: the head's output holding the class scores (PP-LCNet's classifier returns them as
    #: ``last_hidden_state``)
    output: str = "logits"


#: Small members of each family (a few stages of a few channels), input sizes the configs allow.
MODELS: dict[str, Spec] = {
    "resnet": Spec("ResNetForImageClassification", "ResNetConfig",
                   dict(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1])),
    "resnet-basic": Spec("ResNetForImageClassification", "ResNetConfig",
                         dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                              layer_type="basic")),
    "convnext": Spec("ConvNextForImageClassification", "ConvNextConfig",
                     dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1])),
    "convnextv2": Spec("ConvNextV2ForImageClassification", "ConvNextV2Config",
                       dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1])),
    "regnet": Spec("RegNetForImageClassification", "RegNetConfig",
                   dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], groups_width=8)),
    "regnet-x": Spec("RegNetForImageClassification", "RegNetConfig",
                     dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], groups_width=8,
                          layer_type="x")),
    "mobilenet_v1": Spec("MobileNetV1ForImageClassification", "MobileNetV1Config",
                         dict(depth_multiplier=0.25, image_size=96), 96),
    "mobilenet_v2": Spec("MobileNetV2ForImageClassification", "MobileNetV2Config",
                         dict(depth_multiplier=0.35, image_size=96), 96),
    "efficientnet": Spec("EfficientNetForImageClassification", "EfficientNetConfig",
                         dict(width_coefficient=0.5, depth_coefficient=0.5, hidden_dim=640, image_size=96), 96),
    "mobilevit": Spec("MobileViTForImageClassification", "MobileViTConfig",
                      dict(hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 160],
                           expand_ratio=2.0, image_size=128), 128),
    "mobilevitv2": Spec("MobileViTV2ForImageClassification", "MobileViTV2Config",
                        dict(width_multiplier=0.25, n_attn_blocks=[1, 1, 1], image_size=128), 128),
    "swin": Spec("SwinForImageClassification", "SwinConfig",
                 dict(image_size=128, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=4), 128),
    "swinv2": Spec("Swinv2ForImageClassification", "Swinv2Config",
                   dict(image_size=64, embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=4)),
    "segformer": Spec("SegformerForImageClassification", "SegformerConfig",
                      dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 8],
                           decoder_hidden_size=64)),
    "segformer-seg": Spec("SegformerForSemanticSegmentation", "SegformerConfig",
                          dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 8],
                               decoder_hidden_size=64)),
    "poolformer": Spec("PoolFormerForImageClassification", "PoolFormerConfig",
                       dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1])),
    "bit": Spec("BitForImageClassification", "BitConfig",
                dict(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_groups=8)),
    "bit-bottleneck": Spec("BitForImageClassification", "BitConfig",
                           dict(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_groups=8,
                                layer_type="bottleneck")),
    "dinat": Spec("DinatForImageClassification", "DinatConfig",
                  dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], kernel_size=3,
                       dilations=[[1], [1], [1], [1]])),
    "levit": Spec("LevitForImageClassification", "LevitConfig",
                  dict(image_size=64, hidden_sizes=[32, 64, 96], num_attention_heads=[2, 4, 6], depths=[1, 1, 1],
                       key_dim=[8, 8, 8], down_ops=[["Subsample", 8, 4, 4, 2, 2], ["Subsample", 8, 8, 4, 2, 2]])),
    "vit": Spec("ViTForImageClassification", "ViTConfig",
                dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     image_size=32, patch_size=8), 32),
    "deit": Spec("DeiTForImageClassification", "DeiTConfig",
                 dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                      image_size=32, patch_size=8), 32),
    "beit": Spec("BeitForImageClassification", "BeitConfig",
                 dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                      image_size=32, patch_size=8, use_relative_position_bias=True), 32),
    "dinov2": Spec("Dinov2ForImageClassification", "Dinov2Config",
                   dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                        image_size=28, patch_size=7), 28),
    "cvt": Spec("CvtForImageClassification", "CvtConfig",
                # (depths of at least 1, 2, 3: CvtStage indexes its drop-path rates by the stage number)
                dict(embed_dim=[16, 32, 64], num_heads=[1, 2, 4], depth=[1, 2, 3])),
    "focalnet": Spec("FocalNetForImageClassification", "FocalNetConfig",
                     dict(image_size=64, embed_dim=16, hidden_sizes=[32, 64, 128, 128], depths=[1, 1, 2, 1])),
    "pvt_v2": Spec("PvtV2ForImageClassification", "PvtV2Config",
                   dict(image_size=64, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                        num_attention_heads=[1, 2, 4, 8])),
    "pvt": Spec("PvtForImageClassification", "PvtConfig",
                dict(image_size=64, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                     num_attention_heads=[1, 2, 4, 8])),
    "hiera": Spec("HieraForImageClassification", "HieraConfig",
                  dict(image_size=[64, 64], embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8])),
    "pp_lcnet": Spec("PPLCNetForImageClassification", "PPLCNetConfig", dict(scale=0.5, class_expand=256),
                     output="last_hidden_state"),
    "textnet": Spec("TextNetForImageClassification", "TextNetConfig",
                    dict(stem_out_channels=16, hidden_sizes=[16, 16, 32, 64, 128], depths=[1, 1, 1, 1],
                         conv_layer_kernel_sizes=[[[3, 3]], [[1, 3]], [[3, 3]], [[3, 1]]],
                         conv_layer_strides=[[1], [2], [2], [2]], image_size=[64, 64])),
    "swiftformer": Spec("SwiftFormerForImageClassification", "SwiftFormerConfig",
                        dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64])),
    "hgnet_v2": Spec("HGNetV2ForImageClassification", "HGNetV2Config",
                     dict(stem_channels=[3, 16, 16], stage_in_channels=[16, 32, 64, 128],
                          stage_mid_channels=[16, 24, 32, 48], stage_out_channels=[32, 64, 128, 256],
                          stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[3, 3, 3, 3],
                          hidden_sizes=[32, 64, 128, 256])),
}
#: exporter -> (dynamo?, opset)
EXPORTERS: dict[str, tuple[bool, int]] = {"dynamo": (True, 18), "legacy": (False, 17)}
RATIO = 0.5
NUM_LABELS = 10


@dataclass
class Row:
    model: str
    exporter: str
    status: str = "ok"  # ok | export failed | error | FAIL
    groups: str = ""
    channels: str = ""
    macs_ratio: float | None = None
    max_rel_err: float | None = None
    discrimination: float | None = None
    seconds: float | None = None
    whole_share: float | None = None  # channels left whole (not the classifier output) / all channels
    top_reason: str = ""
    note: str = ""
    reasons: dict = field(default_factory=dict)  # every reason bucket -> channels it holds (JSON only)
    barriers: list = field(default_factory=list)  # op types without a rule (JSON only)


def logits_only(model, output: str = "logits"):
    """The transformers model wrapped so that its one output is the head's class scores."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return getattr(self.inner(pixel_values=pixel_values), output)

    return LogitsOnly(model).eval()


def build(name: str, seed: int = 0):
    """A small transformers model in eval mode with random 1-D parameters and BatchNorm statistics."""
    import torch
    import transformers

    spec = MODELS[name]
    config = getattr(transformers, spec.config_class)(num_labels=NUM_LABELS, **spec.config)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(config).eval()
    randomize_parameters(model, seed, constant_too=True)
    return logits_only(model, spec.output)


def export(name: str, exporter: str, cache: Path, fresh: bool = False) -> Path:
    """Export (or reuse) ``cache/<name>_<exporter>.onnx``: weights inline, IR version <= 10."""
    import onnx
    import torch

    path = cache / f"{name}_{exporter}.onnx"
    if path.exists() and not fresh:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    model = build(name)
    size = MODELS[name].size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    dynamo, opset = EXPORTERS[exporter]
    tmp = cache / f".{name}_{exporter}.tmp.onnx"
    with torch.no_grad(), quiet():
        if dynamo:
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, opset_version=opset, input_names=["pixel_values"],
                              output_names=["logits"], external_data=False)
        else:
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["pixel_values"], output_names=["logits"])
    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))
    for p in cache.glob(f".{name}_{exporter}.tmp.onnx*"):
        p.unlink()
    return path


def run(name: str, exporter: str, cache: Path, fresh: bool) -> Row:
    row = Row(model=name, exporter=exporter)
    try:
        path = export(name, exporter, cache, fresh)
    except Exception as exc:  # noqa: BLE001 - a row per failure, the matrix goes on
        row.status, row.note = "export failed", one_line(exc, 120)
        return row
    rep, row.seconds = prune_report(row, path, ratio=RATIO)
    if rep is None:
        return row
    g, c = rep["groups"], rep["channels"]
    row.groups, row.channels = f"{g['prunable']}/{g['total']}", f"{c['removed']}/{c['total']}"
    row.macs_ratio = rep["macs_before"] / rep["macs_after"] if rep["macs_after"] else None
    ver = rep.get("verify") or {}
    row.max_rel_err, row.discrimination = ver.get("max_rel_err"), ver.get("discrimination")
    row.whole_share, per_reason = held(rep)
    row.reasons = dict(per_reason)
    if per_reason:
        reason, n = per_reason.most_common(1)[0]
        row.top_reason = f"{reason} ({n} ch)"
    row.barriers = sorted({b["op_type"] for b in rep.get("barriers", [])})
    return row


HEAD = ["model", "exporter", "status", "groups (prunable/total)", "channels removed", "MACs ratio", "max rel err",
        "discrimination", "seconds", "left whole", "what holds the most"]


def cells(r: Row) -> list[str]:
    f = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    return [r.model, f"{r.exporter} (opset {EXPORTERS[r.exporter][1]})", r.status + (f": {r.note}" if r.note else ""),
            r.groups, r.channels, f(r.macs_ratio, ".2f"), f(r.max_rel_err, ".1e"), f(r.discrimination, ".1e"),
            f(r.seconds, ".1f"), "" if r.whole_share is None else f"{100 * r.whole_share:.0f}%", r.top_reason]


def provenance() -> str:
    """When and with what the table was made."""
    import datetime
    import platform

    import onnxruntime
    import torch
    import transformers

    when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    sizes = Counter(s.size for s in MODELS.values())
    return (f"{when}; transformers {transformers.__version__}, torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__} (CPU provider); {platform.machine()}, {os.cpu_count()} cores; input "
            + ", ".join(f"{s}x{s} ({n} model{'s' if n > 1 else ''})" for s, n in sorted(sizes.items())))


def markdown(rows: list[Row], command: str) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["<!-- generated by tools/hf_coverage.py; edit the text outside the table by hand -->",
             f"Generated by `{command}` on {provenance()}.", "", "| " + " | ".join(HEAD) + " |",
             "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(esc(c) for c in cells(r)) + " |" for r in rows]
    exported = [r for r in rows if r.status != "export failed"]
    ok = [r for r in exported if r.status == "ok"]
    lines += ["", f"{len(ok)}/{len(exported)} exported (model, exporter) rows pruned and proven "
              f"({len(rows) - len(exported)} did not export); "
              f"{sum(1 for r in ok if (r.macs_ratio or 0) >= 1 / 0.7)} cut at least 30% of the MACs."]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- hf-table:begin -->", "<!-- hf-table:end -->"
TITLE = "## Hugging Face transformers' vision models (tools/hf_coverage.py)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--exporters", default=",".join(EXPORTERS), help="dynamo (opset 18) and/or legacy (opset 17)")
    ap.add_argument("--cache", default=str(ROOT / "out" / "hf"), help="folder for exported models")
    ap.add_argument("--fresh", action="store_true", help="re-export even if a cached file exists")
    ap.add_argument("--markdown", help="write the table into this markdown file")
    ap.add_argument("--json", help="write all rows as JSON here")
    args = ap.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    exporters = [e for e in args.exporters.split(",") if e]
    unknown = [m for m in names if m not in MODELS] + [e for e in exporters if e not in EXPORTERS]
    if unknown:
        ap.error(f"unknown model(s) or exporter(s): {unknown}")
    import torch

    torch.set_num_threads(1)
    rows = []
    for k, name in enumerate(names, 1):
        print(f"[{k}/{len(names)}] {name}", flush=True)
        for exporter in exporters:
            r = run(name, exporter, Path(args.cache), args.fresh)
            rows.append(r)
            c = cells(r)
            print(f"  {exporter:<7} {c[2]:<12} groups {c[3]:<8} channels {c[4]:<12} MACs x{c[5]:<5} err {c[6]:<8} "
                  f"disc {c[7]:<8} {c[8]}s  whole {c[9]:<4} {c[10]}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.markdown:
        exe = Path(sys.executable)
        exe_name = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)
        command = f"{exe_name} tools/hf_coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_block(Path(args.markdown), BEGIN, END, markdown(rows, command.strip()), TITLE)
    return 0 if all(r.status in ("ok", "export failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
