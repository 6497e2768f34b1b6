"""Coverage matrix: prune torchvision architectures exported by both torch exporters.

For every (model, exporter) this exports a randomly initialised torchvision model (eval mode, with
random BatchNorm statistics and affine so BN is not an identity) to ONNX, prunes it with
``compressor.api.prune(path, ratio=0.5)`` (verification on) and prints one row: prunable/total
groups, barriers (count and the first reason), MACs and parameter ratios (before/after), the
oracle's max relative error and the seconds taken; then prunes it again with
``api.prune(path, target_macs=0.5)`` (per-group amounts from the budget search) and adds the MACs
fraction kept and its oracle error to the row. A Torch-Pruning 1.6.1 row (MagnitudeImportance
p=2, pruning_ratio 0.5, final classifier ignored) is printed beside ours for comparison.

Needs torchvision, which does not import beside the core venv's torch; run it from the zoo venv:

    .venv-zoo/bin/python tools/zoo_coverage.py --models resnet18,mobilenet_v2
    .venv-zoo/bin/python tools/zoo_coverage.py --markdown docs/coverage.md

Exports are cached under ``out/zoo/`` (git-ignored); ``--fresh`` re-exports.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODELS = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg16_bn", "mobilenet_v2",
    "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf", "regnet_x_1_6gf",
    "densenet121", "googlenet", "inception_v3", "shufflenet_v2_x1_0", "mnasnet1_0", "squeezenet1_1",
    "convnext_tiny", "alexnet", "vit_b_16", "swin_t",
]
EXPORTERS = ["dynamo", "legacy"]
INPUT_SIZE = {"inception_v3": 299}
#: Goals a row must meet to count as covered.
MIN_MACS_CUT = 0.30
MAX_REL_ERR = 1e-4
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from _coverage import quiet  # noqa: E402  (stdlib only at import time)


@dataclass
class Row:
    model: str
    tool: str  # "compressor (dynamo)", "compressor (legacy)", "torch-pruning"
    status: str = "ok"  # ok | barrier | FAIL | error
    groups: str = ""
    barriers: int | None = None
    first_barrier: str = ""
    macs_ratio: float | None = None
    params_ratio: float | None = None
    max_rel_err: float | None = None
    seconds: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)
    # the same model pruned to --target-macs TARGET_MACS: MACs fraction kept, oracle error, problem
    budget_macs: float | None = None
    budget_err: float | None = None
    budget_note: str = ""
    # every group that can go removed whole at once (--drop-layers' surgery): groups removed of
    # those removable alone, graph nodes that left, oracle error, problem
    whole_groups: int | None = None
    whole_removable: int | None = None
    whole_nodes: int | None = None
    whole_err: float | None = None
    whole_note: str = ""

    @property
    def macs_cut(self) -> float | None:
        return None if not self.macs_ratio else 1.0 - 1.0 / self.macs_ratio


# ---- model construction --------------------------------------------------------------------
def build_model(name: str, seed: int = 0):
    """A torchvision model with random weights, random BN statistics, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    kwargs = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, **kwargs)
    randomize_norms(model, seed)
    return model.eval()


def randomize_norms(model, seed: int = 0) -> None:
    """BatchNorm statistics and affine drawn at random, so BN folds into non-trivial scales.

    Parameters that initialise to one constant (zero biases, ConvNeXt's layer scale of 1e-6, class
    tokens) are drawn at random too, as in a trained model: exporters deduplicate identical
    constants, which would tie unrelated layers together, and a 1e-6 layer scale would hide every
    block's contribution from the oracle.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            if flat.numel() > 1 and bool((flat == flat[0]).all()):
                if "scale" in name.rsplit(".", 1)[-1]:
                    p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.25)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            elif isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def example_input(name: str):
    import torch

    s = INPUT_SIZE.get(name, 224)
    return torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))


def export(name: str, exporter: str, cache: Path, fresh: bool = False) -> Path:
    """Export (or reuse) ``cache/<name>_<exporter>.onnx``; weights inline, IR version 10."""
    import onnx
    import torch

    path = cache / f"{name}_{exporter}.onnx"
    if path.exists() and not fresh:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    model = build_model(name)
    x = example_input(name)
    tmp = cache / f".{name}_{exporter}.tmp.onnx"
    # nn.MultiheadAttention's eval fast path is one fused op that the TorchScript exporter lacks
    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad(), quiet():
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["input"],
                              output_names=["logits"], external_data=False)
        else:
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"])
    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))
    for p in cache.glob(f".{name}_{exporter}.tmp.onnx*"):
        p.unlink()
    return path


# ---- our row ---------------------------------------------------------------------------------
def run_compressor(name: str, exporter: str, path: Path, ratio: float) -> Row:
    from compressor import api
    from compressor.errors import VerificationError

    row = Row(model=name, tool=f"compressor ({exporter})")
    t0 = time.perf_counter()
    try:
        res = api.prune(str(path), ratio=ratio)
        rep = res.report
    except VerificationError as exc:
        rep = exc.report
        if rep is None:
            row.status, row.note = "FAIL", str(exc)
            row.seconds = time.perf_counter() - t0
            return row
        row.status, row.note = "FAIL", "oracle mismatch"
    except Exception as exc:  # noqa: BLE001 - a row per failure, the matrix goes on
        row.status, row.note = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        row.seconds = time.perf_counter() - t0
        row.extra["traceback"] = traceback.format_exc()
        return row
    row.seconds = rep.get("seconds", time.perf_counter() - t0)
    g = rep["groups"]
    row.groups = f"{g['prunable']}/{g['total']}"
    row.barriers = len(rep["barriers"])
    if rep["barriers"]:
        b = rep["barriers"][0]
        row.first_barrier = f"{b['op_type']}: {b['reason']}"
    row.macs_ratio = rep["macs_before"] / rep["macs_after"] if rep["macs_after"] else None
    row.params_ratio = rep["params_before"] / rep["params_after"] if rep["params_after"] else None
    row.max_rel_err = rep["verify"].get("max_rel_err")
    run_budget(row, path)
    run_whole(row, path)
    if row.status == "ok":
        if row.max_rel_err is not None and row.max_rel_err > MAX_REL_ERR:
            row.status, row.note = "FAIL", "oracle mismatch"
        elif (row.macs_cut or 0.0) < MIN_MACS_CUT:
            row.status = "barrier"
            row.note = f"MACs cut {100 * (row.macs_cut or 0):.0f}% < {100 * MIN_MACS_CUT:.0f}%"
    return row


TARGET_MACS = 0.5


def run_budget(row: Row, path: Path) -> None:
    """The same model pruned to ``--target-macs TARGET_MACS`` (per-group amounts from the budget
    search instead of a uniform ratio), verified like the ratio row."""
    from compressor import api

    try:
        rep = api.prune(str(path), target_macs=TARGET_MACS).report
    except Exception as exc:  # noqa: BLE001 - reported in the row
        row.budget_note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return
    row.budget_macs = rep["macs_after"] / rep["macs_before"] if rep["macs_before"] else None
    row.budget_err = rep["verify"].get("max_rel_err")
    if not rep["verify"].get("passed"):
        row.budget_note = "oracle mismatch"
    elif row.budget_macs is not None and row.budget_macs > TARGET_MACS + 1e-9:
        row.budget_note = "budget not met"


def run_whole(row: Row, path: Path) -> None:
    """The same model with every group that can be removed whole removed at once (the groups
    removable alone, added one by one while the set stays removable): what --drop-layers' surgery
    (compressor/surgery/drop.py, absorb.py) can take out of this architecture, verified."""
    from compressor import api
    from compressor.planning import PlanOptions, PruningPlan
    from compressor.planning.plan import GroupDecision, signature
    from compressor.surgery.drop import removable_groups, removable_together

    try:
        an = api.analyze(str(path))
        alone = removable_groups(an)
        chosen = removable_together(an, alone)
        row.whole_removable, row.whole_groups = len(alone), len(chosen)
        if not chosen:
            return
        plan = PruningPlan(PlanOptions(), [GroupDecision(g.id, g.size, [] if g.id in chosen else list(range(g.size)),
                                                         signature(g)) for g in an.groups])
        rep = api.prune(str(path), plan_in=plan).report
    except Exception as exc:  # noqa: BLE001 - reported in the row
        row.whole_note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return
    row.whole_nodes = rep["removed_whole"]["nodes"]
    row.whole_err = rep["verify"].get("max_rel_err")
    if not rep["verify"].get("passed"):
        row.whole_note = "oracle mismatch"


def whole_ok(r: Row) -> bool:
    return not r.whole_note and (not r.whole_groups or (r.whole_err is not None and r.whole_err <= MAX_REL_ERR))


def budget_ok(r: Row) -> bool:
    return (not r.budget_note and r.budget_macs is not None and r.budget_macs <= TARGET_MACS + 1e-9
            and r.budget_err is not None and r.budget_err <= MAX_REL_ERR)


# ---- Torch-Pruning's row -------------------------------------------------------------------
def run_torch_pruning(name: str, ratio: float) -> Row:
    import torch
    import torch_pruning as tp

    row = Row(model=name, tool="torch-pruning 1.6.1")
    model = build_model(name)
    x = example_input(name)
    ignored = final_classifiers(model)
    t0 = time.perf_counter()
    try:
        macs0, params0 = tp.utils.count_ops_and_params(model, x)
        kwargs = {}
        heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
        if heads:
            kwargs["num_heads"] = heads
        with quiet():
            pruner = tp.pruner.MetaPruner(
                model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                ignored_layers=ignored, **kwargs)
            pruner.step()
        macs1, params1 = tp.utils.count_ops_and_params(model.eval(), x)
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001
        row.status, row.note = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        row.seconds = time.perf_counter() - t0
        return row
    row.seconds = time.perf_counter() - t0
    row.macs_ratio = macs0 / macs1 if macs1 else None
    row.params_ratio = params0 / params1 if params1 else None
    if (row.macs_cut or 0.0) < MIN_MACS_CUT:
        row.status = "barrier"
        row.note = f"MACs cut {100 * (row.macs_cut or 0):.0f}%"
    return row


def run_torch_pruning_isolated(name: str, ratio: float, timeout: float) -> Row:
    """Torch-Pruning's row in a subprocess, so a slow dependency trace cannot stall the matrix."""
    import subprocess

    cmd = [sys.executable, __file__, "--tp-child", name, "--ratio", str(ratio)]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Row(model=name, tool="torch-pruning 1.6.1", status="error",
                   note=f"timed out after {timeout:.0f} s", seconds=time.perf_counter() - t0)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return Row(model=name, tool="torch-pruning 1.6.1", status="error", note=tail,
                   seconds=time.perf_counter() - t0)
    return Row(**json.loads(lines[-1]))


def final_classifiers(model) -> list:
    """The layers that produce the 1000 class logits (Linear, or SqueezeNet's final Conv)."""
    import torch

    outs = [m for m in model.modules()
            if (isinstance(m, torch.nn.Linear) and m.out_features == 1000)
            or (isinstance(m, torch.nn.Conv2d) and m.out_channels == 1000)]
    return outs[-1:] if outs else []


# ---- rendering -------------------------------------------------------------------------------
HEAD = ["model", "tool", "status", "groups (prunable/total)", "barriers", "first barrier",
        "MACs ratio", "params ratio", "max rel err", "seconds", "MACs kept at --target-macs 0.5 (max rel err)",
        "removed whole at once: groups / removable alone, nodes (max rel err)"]


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def cells(r: Row) -> list[str]:
    fb = r.first_barrier if len(r.first_barrier) <= 90 else r.first_barrier[:87] + "..."
    status = r.status if not r.note else f"{r.status} ({r.note})"
    budget = ""
    if r.budget_macs is not None:
        budget = f"{r.budget_macs:.3f} ({_fmt(r.budget_err, '.1e')})"
    if r.budget_note:
        budget = (budget + " " if budget else "") + r.budget_note
    whole = ""
    if r.whole_groups is not None:
        whole = f"{r.whole_groups} / {r.whole_removable}"
        if r.whole_groups:
            whole += f", {_fmt(r.whole_nodes, 'd')} ({_fmt(r.whole_err, '.1e')})"
    if r.whole_note:
        whole = (whole + " " if whole else "") + r.whole_note
    return [r.model, r.tool, status, r.groups, _fmt(r.barriers, "d"), fb, _fmt(r.macs_ratio, ".2f"),
            _fmt(r.params_ratio, ".2f"), _fmt(r.max_rel_err, ".1e"), _fmt(r.seconds, ".1f"), budget, whole]


def markdown(rows: list[Row], command: str) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [
        "<!-- generated by tools/zoo_coverage.py; edit the text outside the table by hand -->",
        f"Generated by `{command}`".replace(" && ", "` then `"),
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
    ]
    lines += ["| " + " | ".join(esc(c) for c in cells(r)) + " |" for r in rows]
    ours = [r for r in rows if r.tool.startswith("compressor")]
    ok = sum(r.status == "ok" for r in ours)
    lines += ["", f"{ok}/{len(ours)} (model, exporter) rows prune at least "
              f"{100 * MIN_MACS_CUT:.0f}% of MACs and pass the oracle (max rel err <= {MAX_REL_ERR:g}); "
              f"{sum(budget_ok(r) for r in ours)}/{len(ours)} meet --target-macs {TARGET_MACS:g} "
              "(at most that fraction of the MACs kept) and pass the oracle; "
              f"{sum(whole_ok(r) and r.whole_groups is not None for r in ours)}/{len(ours)} pass it with every "
              f"group that can go removed whole at once ({sum(bool(r.whole_groups) for r in ours)} have such "
              "groups)."]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"


def write_markdown(path: Path, table: str) -> None:
    """Replace the generated block in ``path`` (or create the file with it)."""
    block = f"{BEGIN}\n{table}{END}\n"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            pre, rest = text.split(BEGIN, 1)
            post = rest.split(END, 1)[1].lstrip("\n")
            path.write_text(pre + block + post)
            return
        path.write_text(text.rstrip("\n") + "\n\n" + block)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Coverage\n\n" + block)


def print_row(r: Row) -> None:
    c = cells(r)
    print(f"  {c[1]:<22} {c[2]:<28} groups {c[3]:<9} barriers {c[4]:<3} MACs x{c[6]:<6} params x{c[7]:<6} "
          f"err {c[8]:<8} {c[9]}s" + (f"  target-macs {c[10]}" if c[10] else "") + (f"  whole {c[11]}" if c[11] else "")
          + (f"  [{c[5]}]" if c[5] else ""),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision model names")
    ap.add_argument("--exporters", default=",".join(EXPORTERS), help="dynamo,legacy")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--cache", default=str(ROOT / "out" / "zoo"), help="folder for exported models")
    ap.add_argument("--fresh", action="store_true", help="re-export even if a cached file exists")
    ap.add_argument("--no-torch-pruning", action="store_true", help="skip the Torch-Pruning rows")
    ap.add_argument("--tp-timeout", type=float, default=300, help="seconds allowed for one Torch-Pruning row")
    ap.add_argument("--tp-child", help=argparse.SUPPRESS)
    ap.add_argument("--markdown", help="write the table into this markdown file")
    ap.add_argument("--json", help="write all rows as JSON here")
    ap.add_argument("--merge", action="store_true",
                    help="merge this run's rows into the rows already in --json (re-run a few models "
                         "without losing the rest of the table)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.tp_child:
        print(json.dumps(asdict(run_torch_pruning(args.tp_child, args.ratio))))
        return 0
    os.environ.setdefault("COMPRESSOR_STRICT_RULES", "0")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    bad = [e for e in exporters if e not in EXPORTERS]
    if bad:
        ap.error(f"unknown exporter(s) {bad}; choose from {EXPORTERS}")
    cache = Path(args.cache)
    rows: list[Row] = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}", flush=True)
        for exporter in exporters:
            t0 = time.perf_counter()
            try:
                path = export(name, exporter, cache, fresh=args.fresh)
            except Exception as exc:  # noqa: BLE001
                row = Row(model=name, tool=f"compressor ({exporter})", status="error",
                          note=f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                          seconds=time.perf_counter() - t0)
            else:
                row = run_compressor(name, exporter, path, args.ratio)
            rows.append(row)
            print_row(row)
            gc.collect()
        if not args.no_torch_pruning:
            row = run_torch_pruning_isolated(name, args.ratio, args.tp_timeout)
            rows.append(row)
            print_row(row)
            gc.collect()
    cmd = "python tools/zoo_coverage.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.merge and args.json and Path(args.json).exists():
        data = json.loads(Path(args.json).read_text())
        old_rows = [Row(**r) for r in (data["rows"] if isinstance(data, dict) else data)]
        fresh = {(r.model, r.tool) for r in rows}
        merged = [r for r in old_rows if (r.model, r.tool) not in fresh] + rows
        order = {m: i for i, m in enumerate(MODELS)}
        tools = ["compressor (dynamo)", "compressor (legacy)", "torch-pruning 1.6.1"]
        merged.sort(key=lambda r: (order.get(r.model, len(order)), tools.index(r.tool) if r.tool in tools else 9))
        prev = data.get("commands", []) if isinstance(data, dict) else []
        commands = prev + [cmd]
        rows = merged
    else:
        commands = [cmd]
    ours = [r for r in rows if r.tool.startswith("compressor")]
    print(f"{sum(r.status == 'ok' for r in ours)}/{len(ours)} rows covered")
    cmd = " && ".join(f"{c}" for c in commands) if len(commands) > 1 else commands[0]
    if args.markdown:
        write_markdown(Path(args.markdown), markdown(rows, cmd.strip()))
        print(f"wrote {args.markdown}")
    if args.json:
        Path(args.json).write_text(json.dumps({"commands": commands, "rows": [asdict(r) for r in rows]}, indent=1))
    return 0 if all(r.status in ("ok", "barrier") for r in ours) else 1


if __name__ == "__main__":
    sys.exit(main())
