"""Accuracy right after pruning (no fine-tuning) of trained classifiers: the latency-table allocation
by channel importance, by sensitivity on random inputs and by sensitivity on calibration data, each
against a uniform cut at the same MACs.

The allocations are planned at fractions of the latency their table predicts (the allocation alone,
without the measured search of ``--target-latency``, so that every cost is compared at the same
predicted latency); each plan and its uniform counterpart are then timed interleaved with the dense
model (CPU provider, spinning off), so the table shows measured latency next to accuracy.

Needs trained models from the experiments and Fashion-MNIST (`make data`):
- resnet20: ``tools/experiments.py run main --full --methods dense`` (runs/main/resnet20-dense-2x-s0-full-*/dense.onnx);
- vgg11_small, mobilenet_v2_small: ``tools/experiments.py run models --methods dense``
  (runs/models/<model>-dense-2x-s0-cpu-*/final.onnx);
- densenet_bc22 (not in the default list): ``tools/experiments.py run models --models densenet_bc22
  --methods dense --train-limit 16384``.

    .venv-exp/bin/python tools/alloc_accuracy.py [--models resnet20,vgg11_small,mobilenet_v2_small]
        [--fractions 0.9,0.8,0.7] [--importance l1] [--calibration 256] [--markdown]
        [--finetune-epochs E [--finetune-limit N] [--drop-layers]]
        [--costs importance,sensitivity-random,sensitivity-calibration,sensitivity-reprobed]
        [--finetune-costs importance,sensitivity-calibration]

``sensitivity-reprobed`` plans with the calibration sensitivity re-measured on the plan reached at
each pivot of the allocation (``--reprobe``, planning/allocate.py).

Fine-tuning (``--finetune-epochs``) trains the dense torch model under the plan's masks
(compressor/train/finetune.py), writes the weights back into the dense ONNX and prunes it by the same plan;
that route also carries ``--drop-layers`` plans, whose removed groups have no torch form.

Calibration samples come from the *training* split (seeded); accuracy is on the 10k test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from compressor import api  # noqa: E402
from compressor.bench import benchmark  # noqa: E402
from compressor.bench.layers import call_overhead_ms, measure_table, ort_layer_timer  # noqa: E402
from compressor.data.torch_data import make_dataset  # noqa: E402
from compressor.importance.sensitivity import calibration_feeds, measure_sensitivity  # noqa: E402
from compressor.ir.model_io import default_opset, loadable_ir  # noqa: E402
from compressor.planning.allocate import Allocator, fewest_kept  # noqa: E402
from compressor.planning.budget import plan_cost, plan_for_fraction  # noqa: E402
from compressor.planning.plan import PlanOptions  # noqa: E402
from compressor.surgery import apply_plan  # noqa: E402
from compressor.surgery.drop import removable_groups  # noqa: E402
from exp.runner import onnx_accuracy, onnx_logits, test_arrays  # noqa: E402

SHAPE = ["1x1x28x28"]
MODELS = {
    "resnet20": "runs/main/resnet20-dense-2x-s0-full-*/dense.onnx",
    "vgg11_small": "runs/models/vgg11_small-dense-2x-s0-cpu-*/final.onnx",
    "mobilenet_v2_small": "runs/models/mobilenet_v2_small-dense-2x-s0-cpu-*/final.onnx",
    "densenet_bc22": "runs/models/densenet_bc22-dense-2x-s0-cpu-*/final.onnx",
}
DEFAULT_MODELS = ["resnet20", "vgg11_small", "mobilenet_v2_small"]
COSTS = ("importance", "sensitivity-random", "sensitivity-calibration")
REPROBED = "sensitivity-reprobed"  # calibration sensitivity, measured again at each pivot (--reprobe)


def finetune(name: str, dense: str, plan, out: Path, epochs: int, limit: int | None, x, y) -> dict:
    """The plan fine-tuned ``epochs`` epochs (SGD lr 0.01 cosine, wd 5e-4, batch 128: phase B of the
    experiments' --full setting) on ``limit`` training images, by masks on the dense torch model
    (compressor/train/finetune.py: the route that also carries groups removed whole), then written back into the
    dense ONNX and pruned by the same plan, verified, evaluated. Both the untrained and the trained
    masked torch model are checked against their pruned ONNX. ``out``: the stem of the files
    written (.pruned.onnx, .tuned.onnx, .log, .onnx)."""
    import torch

    import models
    from compressor.data.torch_data import make_loader
    from compressor.train.finetune import PlanMasks, load_onnx_weights, settle_constant_bn, store_onnx_weights
    from exp.runner import Log, train_phase

    def check(model, path: Path, what: str) -> float:
        model.eval()
        with torch.no_grad():
            ref = model(torch.from_numpy(x[:64])).numpy()
        diff = float(np.abs(ref - onnx_logits(path, x[:64])).max() / max(float(np.abs(ref).max()), 1e-6))
        if diff > 1e-4:
            raise RuntimeError(f"{what}: the masked torch model differs from the pruned ONNX by {diff:.2e} (relative)")
        return diff

    pruned = api.prune(dense, plan_in=plan, output=out.with_suffix(".pruned.onnx"), input_shapes=SHAPE)
    torch.manual_seed(0)
    model = models.create_model(name, in_channels=1, num_classes=10, input_size=28)
    load_onnx_weights(model, onnx.load(dense))
    masks = PlanMasks(model, pruned.report["plan"])
    train = make_dataset("fashion-mnist", "train", limit=limit)
    xs = torch.from_numpy(test_arrays(train)[0][:256])
    settled = settle_constant_bn(model, xs)
    check(model, out.with_suffix(".pruned.onnx"), "before fine-tuning")
    loader = make_loader(train, 128, shuffle=True, seed=0, drop_last=True)

    def hold_masks(opt, *_):  # train_phase's regularizer hook: no regularizer, only the masks
        masks.attach(opt)

    _, info = train_phase(model, loader, epochs, 0.01, 5e-4, Log(out.with_suffix(".log")), f"FT {name}",
                          reg_factory=hold_masks)
    settle_constant_bn(model, xs, keep="train")
    proto = onnx.load(dense)
    store_onnx_weights(model, proto)
    onnx.save(proto, out.with_suffix(".tuned.onnx"))
    tuned = api.prune(str(out.with_suffix(".tuned.onnx")), plan_in=plan, output=out.with_suffix(".onnx"),
                      input_shapes=SHAPE)
    if not tuned.report["verify"]["passed"]:
        raise RuntimeError(f"the fine-tuned model's pruning failed its check: {tuned.report['verify']}")
    diff = check(model, out.with_suffix(".onnx"), "after fine-tuning")
    return {"epochs": epochs, "train_images": len(train), "seconds": info["seconds"],
            "removed_whole": pruned.report["removed_whole"]["groups"], "settled_bn_channels": settled,
            "torch_vs_onnx": diff, "accuracy": onnx_accuracy(out.with_suffix(".onnx"), x, y, 2)}


def evaluate(name: str, path: str, fractions: list[float], importance: str, n_calib: int, x, y, xcal,
             tmp: Path, ft_epochs: int = 0, ft_limit: int | None = None,
             ft_costs: tuple[str, ...] = ("importance", "sensitivity-calibration"),
             drop_layers: bool = False, costs: tuple[str, ...] = COSTS) -> list[dict]:
    proto = onnx.load(path)
    an = api.analyze(proto, input_shapes=SHAPE)
    scores, _, _ = api._scores(proto, an, importance, 0)
    spec = api._spec(proto, SHAPE)
    opts = PlanOptions(ratio=0.0, round_to=8, importance=importance)
    dense_ms = benchmark([path], provider="cpu", threads=2, min_time=3, progress=False, log=None,
                         input_shapes=SHAPE).results[0].stats.p50_ms
    timer = ort_layer_timer("cpu", 2)
    table = measure_table(an, default_opset(proto), timer, dense_ms, opts.round_to,
                          fewest_kept,
                          overhead_ms=call_overhead_ms(timer), leftovers=True)
    inp = next(iter(spec.shapes))
    sens, reprobe = {}, {}
    whole = removable_groups(an) if drop_layers else ()
    for cost in ("sensitivity-random", "sensitivity-calibration"):
        if cost not in costs and not (cost == "sensitivity-calibration" and REPROBED in costs):
            continue
        data = {inp: xcal[:n_calib]} if cost == "sensitivity-calibration" else None
        feeds, described = calibration_feeds(spec, data)
        sens[cost] = measure_sensitivity(an, scores, feeds, inputs=described, whole=whole)
        print(json.dumps({"model": name, "sensitivity": cost, "seconds": round(sens[cost].seconds, 2),
                          "runs": sens[cost].runs}), flush=True)
        if cost == "sensitivity-calibration" and REPROBED in costs:  # the same feeds, on each pivot's plan
            sens[REPROBED] = sens[cost]
            reprobe[REPROBED] = (lambda f, d: lambda widths: measure_sensitivity(
                an, scores, f, inputs=d, whole=whole, base=widths))(feeds, described)
    macs0 = plan_cost(an, {})[0]
    plans: dict[tuple, dict] = {}  # plan key -> {"file", "macs", "accuracy", "latency_ratio"}

    def measure(p) -> dict:
        key = tuple(sorted((g, tuple(k)) for g, k in p.keep.items()))
        if key not in plans:
            out = tmp / f"{name}_{len(plans)}.onnx"
            m = apply_plan(an, p.keep).model
            m.ir_version = loadable_ir(m.ir_version)
            onnx.save(m, out)
            plans[key] = {"file": str(out), "macs": round(plan_cost(an, p.keep)[0] / macs0, 3),
                          "removed_whole": sum(1 for g in p.groups if g.size and not g.kept),
                          "accuracy": onnx_accuracy(out, x, y, 2),
                          "widths": sorted((g.size, len(g.kept)) for g in p.groups if g.removed), "_plan": p}
        return plans[key]

    rows = []
    for frac in fractions:
        for cost, drop in [(c, False) for c in costs] + ([(c, True) for c in ft_costs if c in costs]
                                                          if drop_layers else []):
            al = Allocator(an, scores, dataclasses.replace(opts, drop_layers=drop), table, sensitivity=sens.get(cost),
                           reprobe=reprobe.get(cost))
            plan, predicted = al.plan_for(frac)
            row = {"model": name, "fraction": frac, "allocation": cost + ("+drop" if drop else ""),
                   "predicted": round(predicted, 3), "plan": measure(plan)}
            for rt in (1, 8):  # uniform cuts at (at most) the same MACs, odd widths and multiples of 8
                uni = plan_for_fraction(an, scores, PlanOptions(ratio=0.0, round_to=rt, importance=importance),
                                        "macs", row["plan"]["macs"] + 5e-4).plan
                row[f"uniform_r{rt}"] = measure(uni)
            rows.append(row)
    files = [path] + [p["file"] for p in plans.values()]
    res = benchmark(files, provider="cpu", threads=2, min_time=2, progress=False, log=None, input_shapes=SHAPE)
    for p, r in zip(plans.values(), res.results[1:]):
        p["latency_ratio"] = round(1.0 / r.ratio_to_first.median, 3)
    if ft_epochs:
        done: dict[str, dict] = {}
        for row in rows:
            if row["allocation"].removesuffix("+drop") not in ft_costs:
                continue
            for key in ("plan", "uniform_r8"):
                p = row[key]
                if p["file"] not in done:
                    done[p["file"]] = finetune(name, path, p.pop("_plan"), Path(p["file"]).with_suffix(".ft"),
                                              ft_epochs, ft_limit, x, y)
                    print(json.dumps({"model": name, "finetuned": p["file"], **done[p["file"]]}), flush=True)
                p["finetuned"] = done[p["file"]]
    for p in plans.values():
        p.pop("_plan", None)
    dense_acc = onnx_accuracy(path, x, y, 2)
    for row in rows:
        row["dense_accuracy"] = dense_acc
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| model (dense acc.) | target (predicted) | allocation cost | MACs | latency | accuracy "
           "| uniform odd widths: MACs / latency / acc. | uniform x8: MACs / latency / acc. |",
           "|---|---|---|---|---|---|---|---|"]

    def cell(p: dict) -> str:
        return f"{p['macs']:.3f} / {p['latency_ratio']:.3f} / {p['accuracy']:.1%}"

    if any("finetuned" in r["plan"] for r in rows):
        out = ["| model (dense acc.) | target (predicted) | allocation cost | MACs | latency | right after "
               "| fine-tuned | uniform x8: MACs / latency | right after | fine-tuned |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            a, u = r["plan"], r["uniform_r8"]
            if "finetuned" not in a:
                continue
            gone = sum(1 for _, kept in a["widths"] if kept == 0)
            out.append(f"| {r['model']} ({r['dense_accuracy']:.1%}) | {r['fraction']:.2f} ({r['predicted']:.3f}) | "
                       f"{r['allocation']}{f' ({gone} removed)' if gone else ''} | {a['macs']:.3f} | "
                       f"{a['latency_ratio']:.3f} | {a['accuracy']:.1%} | **{a['finetuned']['accuracy']:.1%}** | {u['macs']:.3f} / {u['latency_ratio']:.3f} | "
                       f"{u['accuracy']:.1%} | **{u['finetuned']['accuracy']:.1%}** |")
        return "\n".join(out)
    for r in rows:
        a = r["plan"]
        out.append(f"| {r['model']} ({r['dense_accuracy']:.1%}) | {r['fraction']:.2f} ({r['predicted']:.3f}) | "
                   f"{r['allocation']} | {a['macs']:.3f} | {a['latency_ratio']:.3f} | **{a['accuracy']:.1%}** | "
                   f"{cell(r['uniform_r1'])} | {cell(r['uniform_r8'])} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--model-path", default=None, help="one trained 1x1x28x28 classifier instead of --models")
    ap.add_argument("--fractions", default="0.9,0.8,0.7")
    ap.add_argument("--importance", default="l1")
    ap.add_argument("--calibration", type=int, default=256, help="training images for the calibration sensitivity")
    ap.add_argument("--markdown", action="store_true", help="also print the markdown table")
    ap.add_argument("--finetune-epochs", type=int, default=0,
                    help="also fine-tune the importance and calibration-sensitivity plans and their uniform x8 "
                    "counterparts this many epochs (torch) and report their accuracy")
    ap.add_argument("--finetune-limit", type=int, default=None, help="training images for fine-tuning (default all)")
    ap.add_argument("--costs", default=",".join(COSTS),
                    help="allocation costs to plan with: " + ", ".join((*COSTS, REPROBED)) + f" ({REPROBED}: "
                    "the calibration sensitivity re-measured on the plan reached at each pivot, --reprobe)")
    ap.add_argument("--finetune-costs", default="importance,sensitivity-calibration",
                    help="which of --costs to fine-tune (with their uniform x8 counterparts)")
    ap.add_argument("--drop-layers", action="store_true",
                    help="also plan the fine-tuned costs with --drop-layers (groups removed whole), as '<cost>+drop'")
    args = ap.parse_args(argv)
    todo = {}
    if args.model_path:
        todo[Path(args.model_path).stem] = args.model_path
    else:
        for name in args.models.split(","):
            hit = sorted(glob.glob(str(ROOT / MODELS[name])))
            if not hit:
                ap.error(f"no trained {name} under runs/ ({MODELS[name]}): see this tool's docstring")
            todo[name] = hit[0]
    x, y = test_arrays(make_dataset("fashion-mnist", "test"))
    xtr, _ = test_arrays(make_dataset("fashion-mnist", "train"))
    xcal = xtr[np.random.default_rng(0).choice(len(xtr), args.calibration, replace=False)]
    fractions = [float(f) for f in args.fractions.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="alloc-acc-"))
    rows = []
    t0 = time.perf_counter()
    for name, path in todo.items():
        rows += evaluate(name, path, fractions, args.importance, args.calibration, x, y, xcal, tmp,
                         ft_epochs=args.finetune_epochs if not args.model_path else 0, ft_limit=args.finetune_limit,
                         drop_layers=args.drop_layers, costs=tuple(args.costs.split(",")),
                         ft_costs=tuple(args.finetune_costs.split(",")))
    if args.markdown:
        print(markdown(rows))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
