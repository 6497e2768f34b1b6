"""One experiment run: train (phase A) -> export -> prune the ONNX -> evaluate -> fine-tune -> measure.

Writes ``<runs>/<table>/<name>.json`` (schema ``compressor.experiment/1``) atomically at the end;
artifacts (ONNX files, the log) sit in ``<runs>/<table>/<name>/``. See ``settings`` for the protocol.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

import models
from compressor import api
from compressor.bench.api import compare_latency
from compressor.data.torch_data import make_dataset, make_loader
from compressor.importance import score_groups
from compressor.importance.learned import learned_scores
from compressor.train import from_model
from compressor.train import regularizers as R
from compressor.train.export import export
from compressor.train.finetune import load_onnx_weights

from exp.settings import METHODS, SCHEMA, RunConfig, reg_kwargs
from exp.shrink import shrink
from exp.widths import counts_for_cut, is_trunk, plan_from_counts


def run_threads(s) -> int:
    """Threads for torch and the accuracy sessions: ``EXP_THREADS`` overrides the setting (not part
    of the run key: it changes speed, not results beyond float summation order)."""
    return int(os.environ.get("EXP_THREADS") or s.threads)


class Log:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", buffering=1)

    def __call__(self, *msg) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] " + " ".join(str(m) for m in msg)
        self.f.write(line + "\n")
        print(line, flush=True)


# ---------------------------------------------------------------------- data and evaluation
def load_data(cfg: RunConfig):
    s = cfg.setting
    train = make_dataset(cfg.dataset, "train", limit=s.train_limit)
    test = make_dataset(cfg.dataset, "test", limit=s.test_limit)
    return train, test


def test_arrays(test) -> tuple[np.ndarray, np.ndarray]:
    x = ((test.images.float() / 255.0 - test.mean) / test.std).numpy().astype(np.float32)
    return x, test.labels.numpy()


def onnx_accuracy(path: str | Path, x: np.ndarray, y: np.ndarray, threads: int, batch: int = 250) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        out = sess.run(None, {name: x[i:i + batch]})[0]
        correct += int((out.argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


def onnx_logits(path: str | Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# ---------------------------------------------------------------------- training
def cosine(opt: torch.optim.Optimizer, base: float, total: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def train_phase(model, loader, epochs: int, lr: float, wd: float, log: Log, tag: str, reg_factory=None):
    """SGD (Nesterov) with a per-step cosine decay to 0; ``reg_factory(opt, steps, sum_lr)`` -> regularizer."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    steps = epochs * len(loader)
    sum_lr = sum(lr * 0.5 * (1 + math.cos(math.pi * i / steps)) for i in range(steps))
    reg = reg_factory(opt, steps, sum_lr) if reg_factory else None  # may add param groups (gates)
    sched = cosine(opt, lr, steps)
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        tot, n, correct = 0.0, 0, 0
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            extra = reg.loss() if reg is not None and hasattr(reg, "loss") else None
            (loss + extra if extra is not None else loss).backward()
            if reg is not None:
                reg.step()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(y)
            n += len(y)
            correct += int((out.argmax(1) == y).sum())
        if reg is not None:
            reg.epoch_end()
        log(f"{tag} epoch {ep + 1}/{epochs} loss {tot / n:.4f} train-acc {correct / n:.4f} "
            f"({time.perf_counter() - t0:.0f}s)")
    return reg, {"steps": steps, "sum_lr": sum_lr, "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------- C-SGD merge
@torch.no_grad()
def csgd_merge(reg) -> dict:
    """Make each cluster one channel: average its members' channel tensors (kernels, BN affine and
    running stats: exact when C-SGD converged, the [design] fallback otherwise) and move the sum of
    the members' consumer slices onto the representative (lowest index; the others get 0 there,
    and pruning then removes them). Returns the deviation before the merge."""
    before = {"deviation": reg.deviation(), "deviation_with_buffers": reg.deviation(include_buffers=True)}
    for g in reg.groups:
        labels = reg.labels[g.id]
        k = int(labels.max()) + 1
        clusters = [[int(i) for i in torch.nonzero(labels == c).flatten()] for c in range(k)]
        for s in g.slices:
            if s.role in ("producer", "param"):
                rows = s.rows(g.size).clone()
                for members in clusters:
                    rows[members] = rows[members].mean(0, keepdim=True)
                s.write_rows(g.size, rows)
            elif s.role == "consumer":
                rows = s.rows(g.size).clone()
                for members in clusters:
                    rep, rest = members[0], members[1:]
                    if rest:
                        rows[rep] = rows[members].sum(0)
                        rows[rest] = 0
                s.write_rows(g.size, rows)
    return before


# ---------------------------------------------------------------------- one run
def run(cfg: RunConfig, runs_dir: Path, *, keep_artifacts: bool = True) -> dict:
    s = cfg.setting
    out_json = runs_dir / cfg.table / f"{cfg.name}.json"
    art = runs_dir / cfg.table / cfg.name
    art.mkdir(parents=True, exist_ok=True)
    log = Log(art / "run.log")
    t_start = time.perf_counter()
    threads = run_threads(s)
    torch.set_num_threads(threads)
    spec = METHODS[cfg.method]
    log(f"run {cfg.name}: {json.dumps(cfg.to_dict(), sort_keys=True)}")
    result: dict = {"schema": SCHEMA, "name": cfg.name, "key": cfg.key, "config": cfg.to_dict(),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "log": str(art / "run.log"), "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                          "torch": torch.__version__, "onnxruntime": ort.__version__,
                                                          "threads": threads}}
    train, test = load_data(cfg)
    xt, yt = test_arrays(test)
    loader = make_loader(train, s.batch, shuffle=True, seed=cfg.seed, drop_last=True)
    example = torch.zeros(1, *train.sample_shape)
    torch.manual_seed(cfg.seed)
    model = models.create_model(cfg.model, in_channels=train.sample_shape[0], num_classes=10,
                                input_size=train.sample_shape[1])
    phases: dict = {}

    # widths of the cut (architecture only), from an export of the untrained model
    init_onnx = art / "init.onnx"
    export(model, example, init_onnx, dynamic_batch=True)
    an0 = api.analyze(init_onnx)
    policy, round_to = cfg.policy
    counts, frac = counts_for_cut(an0, cfg.cut, policy, round_to)
    by_shape = {}  # (size, trunk) -> kept count, to carry widths to torch group ids
    for g in an0.prunable:
        by_shape[(g.size, is_trunk(g))] = counts[g.id]
    result["widths"] = {"policy": policy, "round_to": round_to, "fraction": frac,
                        "kept_per_group": {str(g.id): f"{counts[g.id]}/{g.size}" for g in an0.prunable}}

    # phase A
    reg = None
    if spec.get("tp"):
        # Torch-Pruning anchor: TP's regularizer in phase A (optimizer weight decay 0 while it
        # regularizes, as in TP's reproduce/main.py), same widths as our runs of this cut
        from exp import tp_anchor

        def tp_factory(opt, steps, sum_lr):
            anchor = tp_anchor.TPAnchor(spec["reg"], model, example, by_shape, steps=steps, sum_lr=sum_lr,
                                        strength=spec.get("strength", 1.0))
            result["regularizer"] = anchor.describe()
            log(f"Torch-Pruning {json.dumps(result['regularizer'], default=str)[:600]}")
            return anchor

        reg, info = train_phase(model, loader, s.epochs_a, s.lr, 0.0, log, "A", reg_factory=tp_factory)
    elif spec["reg"] is None:
        ckpt = runs_dir / "cache" / f"phaseA-{cfg.model}-{cfg.phase_a_key()}.pt"
        if ckpt.exists():
            model.load_state_dict(torch.load(ckpt, weights_only=True))
            info = json.loads(ckpt.with_suffix(".json").read_text())
            log(f"phase A: reusing dense checkpoint {ckpt}")
        else:
            _, info = train_phase(model, loader, s.epochs_a, s.lr, s.weight_decay, log, "A")
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), ckpt)
            ckpt.with_suffix(".json").write_text(json.dumps(info))
        info = dict(info, shared_checkpoint=str(ckpt))
    else:
        tgroups = from_model(model, example)

        def torch_trunk(g) -> bool:
            return len({sl.name for sl in g.producer_kernels}) > 1

        prune_ratio = {}
        for g in tgroups:
            if g.prunable and (g.size, torch_trunk(g)) in by_shape:
                prune_ratio[g.id] = 1.0 - by_shape[(g.size, torch_trunk(g))] / g.size
        targeted = {gid for gid, r in prune_ratio.items() if r > 0}

        def factory(opt, steps, sum_lr):
            kw = reg_kwargs(spec["reg"], steps=steps, sum_lr=sum_lr, epochs=s.epochs_a,
                            prune_ratio={gid: prune_ratio.get(gid, 0.0) for gid in prune_ratio})
            if "prune_ratio" in kw or "keep_ratio" in kw:
                key = "prune_ratio" if "prune_ratio" in kw else "keep_ratio"
                kw[key] = {gid: v for gid, v in kw[key].items() if gid in targeted}
            if spec["reg"] == "orthoreg":
                kw.update(data=loader, loss_fn=F.cross_entropy, num_samples=min(2048, len(train)))
            log(f"regularizer {spec['reg']} {json.dumps({k: v for k, v in kw.items() if k not in ('data', 'loss_fn')}, default=str)[:400]}")
            result["regularizer"] = {"name": spec["reg"], "hyperparameters": {
                k: v for k, v in kw.items() if k not in ("data", "loss_fn", "prune_ratio", "keep_ratio")}}
            return R.create(spec["reg"], model, example, groups=tgroups, optimizer=opt,
                            group_filter=lambda g: g.id in targeted, **kw)

        reg, info = train_phase(model, loader, s.epochs_a, s.lr, s.weight_decay, log, "A", reg_factory=factory)
    phases["a"] = info
    model.eval()

    # export (the dense/regularized model, learned importances in the metadata)
    dense_onnx = art / "dense.onnx"
    if cfg.method == "csgd":
        # the merged export is only meaningful once pruned: take the "before" accuracy first
        export(model, example, art / "premerge.onnx", dynamic_batch=True)
        acc_a = onnx_accuracy(art / "premerge.onnx", xt, yt, threads)
        result["csgd"] = csgd_merge(reg)
        log(f"C-SGD merge: {result['csgd']}")
    export(model, example, dense_onnx, regularizer=None if spec.get("tp") else reg, dynamic_batch=True)
    if cfg.method != "csgd":
        acc_a = onnx_accuracy(dense_onnx, xt, yt, threads)
    log(f"accuracy after phase A (ONNX): {acc_a:.4f}")
    result["acc_phase_a"] = acc_a

    if cfg.method == "dense":
        _, info = train_phase(model, loader, s.epochs_b, s.lr_ft, s.weight_decay, log, "B")
        phases["b"] = info
        model.eval()
        final_onnx = art / "final.onnx"
        export(model, example, final_onnx, dynamic_batch=True)
        acc = onnx_accuracy(final_onnx, xt, yt, threads)
        log(f"dense accuracy after {s.epochs_a}+{s.epochs_b} epochs: {acc:.4f}")
        m = api.inspect(final_onnx)
        result.update(acc_dense=acc, acc_pruned=None, acc_finetuned=acc, macs=m["macs"], params=m["params"],
                      macs_dense=m["macs"], params_dense=m["params"], macs_fraction=1.0, speedup=1.0)
    elif spec.get("tp"):
        small, acc_p, rep, diff = _tp_prune(cfg, reg, model, example, an0, counts, dense_onnx, art, xt, yt,
                                            threads, log, phases)
        result["tp_pruned"] = rep.pop("tp_pruned")
    else:
        # prune the ONNX with the method's importance at the cut's widths
        an = api.analyze(dense_onnx)
        if spec["importance"] == "learned":
            scores, notes = learned_scores(onnx.load(str(dense_onnx)), an)
            fallback = score_groups(an, "l1")
            missing = [g.id for g in an.prunable if g.id not in scores and counts_for_id(an, g, by_shape) < g.size]
            for gid in missing:
                scores[gid] = fallback[gid]
            result["importance_notes"] = {"unmatched_pruned_groups_scored_by_l1": missing}
        else:
            scores = score_groups(an, spec["importance"])
        new_counts = {g.id: counts_for_id(an, g, by_shape) for g in an.prunable}
        plan = plan_from_counts(an, scores, new_counts, note=spec["importance"])
        pruned_onnx = art / "pruned.onnx"
        t0 = time.perf_counter()
        pr = api.prune(dense_onnx, plan_in=plan, output=pruned_onnx)
        rep = pr.report
        phases["prune_seconds"] = round(time.perf_counter() - t0, 2)
        acc_p = onnx_accuracy(pruned_onnx, xt, yt, threads)
        log(f"accuracy right after ONNX pruning: {acc_p:.4f}; MACs {rep['macs_after']}/{rep['macs_before']}; "
            f"verify {rep['verify'].get('passed')}")
        # torch copy of the pruned model: plain architecture + exported weights + plan slices
        small = models.create_model(cfg.model, in_channels=train.sample_shape[0], num_classes=10,
                                    input_size=train.sample_shape[1])
        missing_w = load_onnx_weights(small, onnx.load(str(dense_onnx)))
        shrink(small, rep["plan"])
        small.eval()
        with torch.no_grad():
            diff = float(np.abs(small(torch.from_numpy(xt[:64])).numpy() - onnx_logits(pruned_onnx, xt[:64])).max())
        log(f"torch shrink vs pruned ONNX: max |logit diff| {diff:.2e} (missing weights: {missing_w})")
        if diff > 1e-3:
            raise RuntimeError(f"shrunk torch model differs from the pruned ONNX by {diff}")
    if cfg.method != "dense":
        _, info = train_phase(small, loader, s.epochs_b, s.lr_ft, s.weight_decay, log, "B")
        phases["b"] = info
        small.eval()
        final_onnx = art / "final.onnx"
        export(small, example, final_onnx, dynamic_batch=True)
        acc_f = onnx_accuracy(final_onnx, xt, yt, threads)
        log(f"accuracy after fine-tuning: {acc_f:.4f}")
        lat = {}
        for b in (1, 32):
            lat[f"batch{b}"] = compare_latency(dense_onnx, final_onnx, batch=b, threads=1,
                                               min_time=s.latency_min_time, log=None)
            log(f"latency batch {b}: {lat[f'batch{b}']['before_ms']:.3f} ms -> {lat[f'batch{b}']['after_ms']:.3f} ms "
                f"(speedup {lat[f'batch{b}']['speedup']:.3f})")
        result.update(acc_dense=acc_a, acc_pruned=acc_p, acc_finetuned=acc_f,
                      macs=rep["macs_after"], params=rep["params_after"],
                      macs_dense=rep["macs_before"], params_dense=rep["params_before"],
                      macs_fraction=rep["macs_after"] / rep["macs_before"], verify=rep["verify"],
                      torch_vs_onnx_max_abs=diff, latency=lat, speedup=lat["batch1"]["speedup"],
                      kept=rep.get("kept") or [{"tensor": x["tensor"], "axis": x["axis"], "n": len(x["kept"])}
                                                for x in rep["plan"]])
        if reg is not None and hasattr(reg, "deviation") and cfg.method != "csgd":
            result["deviation"] = reg.deviation()
    result["phases"] = phases
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["status"] = "done"
    tmp = out_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_jsonable))
    os.replace(tmp, out_json)
    log(f"done in {result['wall_s']}s -> {out_json}")
    if not keep_artifacts:
        for p in art.glob("*.onnx"):
            p.unlink()
    return result


def _tp_prune(cfg, anchor, model, example, an0, counts, dense_onnx, art, xt, yt, threads, log, phases):
    """Torch-Pruning prunes the phase-A torch model in place to the cut's widths; the pruned model
    is exported and evaluated (right after pruning); its MACs/params must equal those of our runs
    (the ONNX widths ``counts``). Returns (model, accuracy, report-like dict, torch-vs-ONNX diff)."""
    from exp.tp_anchor import kept_list
    from compressor.planning.budget import plan_cost

    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    got = anchor.prune()
    phases["prune_seconds"] = round(time.perf_counter() - t0, 2)
    model.eval()
    pruned_onnx = art / "pruned.onnx"
    export(model, example, pruned_onnx, dynamic_batch=True)
    acc_p = onnx_accuracy(pruned_onnx, xt, yt, threads)
    m0, m1 = api.inspect(dense_onnx), api.inspect(pruned_onnx)
    want_macs, want_params = plan_cost(an0, {gid: list(range(n)) for gid, n in counts.items()})
    log(f"accuracy right after Torch-Pruning: {acc_p:.4f}; MACs {m1['macs']}/{m0['macs']} (our widths: "
        f"{want_macs}); params {m1['params']} (ours {want_params})")
    if (m1["macs"], m1["params"]) != (want_macs, want_params):
        raise RuntimeError(f"TP-pruned model has MACs/params {m1['macs']}/{m1['params']}, "
                           f"our runs of this cut {want_macs}/{want_params}")
    with torch.no_grad():
        diff = float(np.abs(model(torch.from_numpy(xt[:64])).numpy() - onnx_logits(pruned_onnx, xt[:64])).max())
    log(f"TP-pruned torch vs its ONNX export: max |logit diff| {diff:.2e}")
    if diff > 1e-3:
        raise RuntimeError(f"TP-pruned torch model differs from its ONNX export by {diff}")
    rep = {"macs_after": m1["macs"], "params_after": m1["params"], "macs_before": m0["macs"],
           "params_before": m0["params"], "kept": kept_list(dense_state, model), "tp_pruned": got,
           "verify": {"passed": None, "note": "pruned by Torch-Pruning in torch (no ONNX equivalence oracle); "
                      "MACs/params checked equal to our runs of this cut"}}
    return model, acc_p, rep, diff


def counts_for_id(an, g, by_shape) -> int:
    return by_shape.get((g.size, is_trunk(g)), g.size)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return str(x)


def run_safely(cfg: RunConfig, runs_dir: Path) -> dict | None:
    try:
        return run(cfg, runs_dir)
    except Exception:
        err = traceback.format_exc()
        path = runs_dir / cfg.table / cfg.name / "error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(err)
        print(f"run {cfg.name} FAILED:\n{err}", file=sys.stderr, flush=True)
        return None
