"""Coverage of timm's architectures: export, prune at ratio 0.5, and say what stays whole and why.

torchvision's zoo (tools/zoo_coverage.py) has 21 architectures; timm has the families users
actually deploy beside them (SK/ECA/split attention, GroupNorm ResNetV2, ConvNeXt-V2's GRN,
MetaFormers, re-parameterisable nets, mobile hybrids). For every (model, opset) this exports a
randomly initialised timm model with the TorchScript exporter, every 1-D parameter and BatchNorm
statistic drawn at random (timm's own init leaves zero biases, unit scales and layer scales of 1e-5,
which make the outputs near-constant and any proof weak: the report's ``verify.discrimination``),
then runs ``compressor.api.prune(path, ratio=0.5)`` with verification on and prints one row:
prunable/total groups, channels removed/total, the MACs ratio, the proof's max relative error and
its discrimination (how far a cut of other channels lands), the seconds taken, the share of the
channels left whole and the reason that holds the most of them.

Opset 17 writes LayerNorm as one op; opset 13 writes it out in elementary ops (and GroupNorm as
Reshape + InstanceNormalization at both): the two columns show the rules for those forms at work.

Needs timm and torchvision (the zoo venv plus timm):

    .venv-zoo/bin/pip install "timm==1.0.31"
    .venv-zoo/bin/python tools/timm_coverage.py --models resnet18d,skresnet18
    .venv-zoo/bin/python tools/timm_coverage.py --markdown docs/coverage.md     # ~25 min on 2 cores

Exports are cached under ``out/timm/`` (git-ignored); ``--fresh`` re-exports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from _coverage import held, one_line, prune_report, randomize_parameters  # noqa: E402  (stdlib only at import time)
from bench_peers import write_block  # noqa: E402
#: Families beyond torchvision's, each exported at 96x96 (a few need more, INPUT_SIZE).
MODELS = [
    "resnet18d", "seresnet18", "ecaresnet26t", "skresnet18", "resnest14d", "res2net50_14w_8s",
    "resnetv2_50x1_bit", "regnetz_b16", "mixnet_s", "mobilenetv4_conv_small", "ghostnetv2_100",
    "lcnet_050", "rexnet_100", "hardcorenas_a", "dla34", "dpn48b", "hrnet_w18_small", "cspdarknet53",
    "ese_vovnet19b_dw", "repvgg_a0", "mobileone_s0", "repvit_m0_9", "fastvit_t8", "convnext_atto",
    "convnextv2_atto", "poolformer_s12", "mambaout_femto", "edgenext_xx_small", "mobilevit_xxs",
    "efficientformerv2_s0", "levit_128s", "efficientvit_b0", "nf_resnet26", "selecsls42b", "starnet_s1",
    "fasternet_t0",
]
OPSETS = [17, 13]
#: Models whose attention biases are sized for one resolution export only at it.
INPUT_SIZE: dict[str, int] = {"efficientformerv2_s0": 224, "levit_128s": 224}
RATIO = 0.5


@dataclass
class Row:
    model: str
    opset: int
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


def build(name: str, seed: int = 0):
    """A timm model in eval mode with random 1-D parameters and BatchNorm statistics."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    randomize_parameters(model, seed)
    return model


def export(name: str, opset: int, cache: Path, fresh: bool = False) -> Path:
    import torch

    path = cache / f"{name}_op{opset}.onnx"
    if path.exists() and not fresh:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    model = build(name)
    size = INPUT_SIZE.get(name, 96)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(tmp), dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["output"])
    tmp.replace(path)
    return path


def run(name: str, opset: int, cache: Path, fresh: bool) -> Row:
    row = Row(model=name, opset=opset)
    try:
        path = export(name, opset, cache, fresh)
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
    if per_reason:
        reason, n = per_reason.most_common(1)[0]
        row.top_reason = f"{reason} ({n} ch)"
    return row


HEAD = ["model", "opset", "status", "groups (prunable/total)", "channels removed", "MACs ratio", "max rel err",
        "discrimination", "seconds", "left whole", "what holds the most"]


def cells(r: Row) -> list[str]:
    f = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    return [r.model, str(r.opset), r.status + (f": {r.note}" if r.note else ""), r.groups, r.channels,
            f(r.macs_ratio, ".2f"), f(r.max_rel_err, ".1e"), f(r.discrimination, ".1e"), f(r.seconds, ".1f"),
            "" if r.whole_share is None else f"{100 * r.whole_share:.0f}%", r.top_reason]


def provenance() -> str:
    """When and with what the table was made."""
    import datetime
    import platform

    import onnxruntime
    import timm
    import torch

    when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return (f"{when}; timm {timm.__version__}, torch {torch.__version__} (TorchScript exporter), onnxruntime "
            f"{onnxruntime.__version__} (CPU provider); {platform.machine()}, {os.cpu_count()} cores; input 96x96 "
            f"except {', '.join(f'{k} {v}x{v}' for k, v in INPUT_SIZE.items())}")


def markdown(rows: list[Row], command: str) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["<!-- generated by tools/timm_coverage.py; edit the text outside the table by hand -->",
             f"Generated by `{command}` on {provenance()}.", "", "| " + " | ".join(HEAD) + " |",
             "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(esc(c) for c in cells(r)) + " |" for r in rows]
    ok = [r for r in rows if r.status == "ok"]
    lines += ["", f"{len(ok)}/{len(rows)} (model, opset) rows pruned and proven; "
              f"{sum(1 for r in ok if (r.macs_ratio or 0) >= 1 / 0.7)} cut at least 30% of the MACs."]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- timm-table:begin -->", "<!-- timm-table:end -->"
TITLE = "## timm's families (tools/timm_coverage.py)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated timm model names")
    ap.add_argument("--opsets", default=",".join(map(str, OPSETS)), help="TorchScript export opsets")
    ap.add_argument("--cache", default=str(ROOT / "out" / "timm"), help="folder for exported models")
    ap.add_argument("--fresh", action="store_true", help="re-export even if a cached file exists")
    ap.add_argument("--markdown", help="write the table into this markdown file")
    ap.add_argument("--json", help="write all rows as JSON here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    names = [m for m in args.models.split(",") if m]
    for k, name in enumerate(names, 1):
        print(f"[{k}/{len(names)}] {name}", flush=True)
        for opset in (int(o) for o in args.opsets.split(",") if o):
            r = run(name, opset, Path(args.cache), args.fresh)
            rows.append(r)
            c = cells(r)
            print(f"  opset {opset:<3} {c[2]:<12} groups {c[3]:<8} channels {c[4]:<12} MACs x{c[5]:<5} err {c[6]:<8} "
                  f"disc {c[7]:<8} {c[8]}s  whole {c[9]:<4} {c[10]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.markdown:
        command = ".venv-zoo/bin/python tools/timm_coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_block(Path(args.markdown), BEGIN, END, markdown(rows, command.strip()), TITLE)
    return 0 if all(r.status in ("ok", "export failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
