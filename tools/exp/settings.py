"""Experiment settings (quick / cpu / full), method hyperparameters, tables, and run keys.

A run is fully described by a :class:`RunConfig`; its key (a short hash of the config) names the
result file ``runs/<table>/<method>-<cut>x-s<seed>-<key>.json``, so rerunning a table skips finished
runs and a changed setting never reuses a stale result.

Protocol (every method, same epochs): phase A = ``epochs_a`` epochs from scratch (SGD, Nesterov
momentum 0.9, lr ``lr`` with a cosine decay to 0 over the phase, weight decay 5e-4, batch 128) with
the method's regularizer; export to ONNX (learned importances in the metadata); prune the ONNX to
the cut (widths from :mod:`widths`, channels chosen by the method's importance); phase B =
``epochs_b`` epochs of fine-tuning of the pruned model (lr ``lr_ft`` cosine to 0, no regularizer).
The dense baseline runs phase A and then phase B on the unpruned model (same epochs, same
schedules), and one-shot L1 prunes the dense phase-A model (shared checkpoint).

Regularizer strengths are given per *unit of summed learning rate* over phase A (``sum_lr``), so the
same method reaches the same total shrinkage whether phase A has 100 or 2,000 steps; the official
values assume hundreds of epochs and would do nothing in 4.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

SCHEMA = "compressor.experiment/1"


@dataclass(frozen=True)
class Setting:
    name: str
    train_limit: int | None     # first N training images (None: all 60,000)
    test_limit: int | None      # first N test images (None: all 10,000)
    epochs_a: int
    epochs_b: int
    batch: int = 128
    lr: float = 0.1
    lr_ft: float = 0.01
    weight_decay: float = 5e-4
    latency_min_time: float = 3.0
    threads: int = 2


SETTINGS = {
    # CI smoke test: a few batches, one epoch per phase.
    "quick": Setting("quick", train_limit=256, test_limit=256, epochs_a=1, epochs_b=1, latency_min_time=0.2),
    # What fits a shared 2-core CPU in ~10 min per run (~5 s per batch of 128 when shared).
    "cpu": Setting("cpu", train_limit=2048, test_limit=None, epochs_a=4, epochs_b=4),
    # The anchor protocol (full data, 4 + 4 epochs): for a GPU or a long CPU session.
    "full": Setting("full", train_limit=None, test_limit=None, epochs_a=4, epochs_b=4),
}

# Prune policy per cut: (width policy, round_to); see widths.py for the measured reasons.
POLICIES = {2.0: ("internal", 8), 4.0: ("uniform", 8)}

#: Methods in priority order. ``reg``: registry name (None: no regularizer in phase A);
#: ``importance``: how the ONNX pruner scores channels ("learned" reads the exported metadata).
METHODS: dict[str, dict] = {
    "dense": {"reg": None, "importance": None},
    "l1": {"reg": None, "importance": "l1"},
    "csgd": {"reg": "csgd", "importance": "learned"},
    "gates": {"reg": "gates", "importance": "learned"},
    "greg1": {"reg": "greg1", "importance": "learned"},
    "slimming": {"reg": "slimming", "importance": "learned"},
    "greg2": {"reg": "greg2", "importance": "learned"},
    "increg": {"reg": "increg", "importance": "learned"},
    "group_lasso": {"reg": "group_lasso", "importance": "learned"},
    "orthoreg": {"reg": "orthoreg", "importance": "learned"},
    "sfp": {"reg": "sfp", "importance": "learned"},
    "asrfp": {"reg": "asrfp", "importance": "learned"},
    # Torch-Pruning 1.6.1 anchors (tools/exp/tp_anchor.py): TP regularizes and prunes the torch model
    # to the same widths; needs `pip install torch-pruning==1.6.1` (not a project dependency)
    "tp_groupnorm": {"reg": "tp_groupnorm", "importance": "tp", "tp": True},
    "tp_growingreg": {"reg": "tp_growingreg", "importance": "tp", "tp": True},
    # sensitivity check (not in the tables' default method lists): GroupNorm at 1/10 of the strength
    "tp_groupnorm_weak": {"reg": "tp_groupnorm", "importance": "tp", "tp": True, "strength": 0.1},
}


def reg_kwargs(method: str, *, steps: int, sum_lr: float, epochs: int, prune_ratio: dict[int, float]) -> dict:
    """Hyperparameters of a method for a phase A of ``steps`` steps and summed lr ``sum_lr``.

    ``prune_ratio`` is the pruned fraction per torch group id (from the cut's widths), for methods
    that need to know it. With momentum 0.9 an edit applied through the gradient acts ~10x.
    """
    keep_ratio = {gid: 1.0 - r for gid, r in prune_ratio.items()}
    if method == "csgd":
        # pull lr*eps/(1-m) per step: exp(-10 * eps * sum_lr) ~ e^-12 by the end of phase A
        return {"keep_ratio": keep_ratio, "centri_strength": 1.2 / sum_lr}
    if method == "gates":
        # plain L1 prox: an unused gate travels 1.5 (from 1.0 to 0) over phase A
        return {"lam": 1.5 / sum_lr, "penalty": "l1"}
    if method in ("greg1", "greg2"):
        # lambda reaches the ceiling (1.0) after ~40% of phase A, then stays
        k = dict(prune_ratio=prune_ratio, delta=1.0 / max(1, int(0.4 * steps)), update_interval=1,
                 ceiling=1.0, stabilize_steps=steps)
        if method == "greg2":
            k.update(delta_pick=1e-2 / max(1, int(0.1 * steps)), pick_ceiling=1e-2)
        return k
    if method == "increg":
        return {"prune_ratio": prune_ratio, "unit": 2.5 / max(1, int(0.4 * steps)) / 25, "ceiling": 2.5}
    if method == "slimming":
        return {"s": 1.0 / sum_lr}
    if method == "group_lasso":
        return {"lam": 0.5 / sum_lr}
    if method == "orthoreg":
        return {"lam": 1e-2}
    if method == "sfp":
        return {"prune_ratio": prune_ratio}
    if method == "asrfp":
        return {"prune_ratio": prune_ratio, "epochs": epochs}
    return {}


@dataclass(frozen=True)
class RunConfig:
    table: str
    method: str
    model: str = "resnet20"
    dataset: str = "fashion-mnist"
    cut: float = 2.0
    seed: int = 0
    setting: Setting = field(default_factory=lambda: SETTINGS["cpu"])

    @property
    def policy(self) -> tuple[str, int]:
        return POLICIES.get(self.cut, ("uniform", 8))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["policy"], d["round_to"] = self.policy
        d["protocol_version"] = 1
        return d

    @property
    def key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    @property
    def name(self) -> str:
        return f"{self.model}-{self.method}-{self.cut:g}x-s{self.seed}-{self.setting.name}-{self.key}"

    def phase_a_key(self) -> str:
        """Dense phase A is shared by the dense and one-shot runs of one model/seed/setting."""
        d = {"model": self.model, "dataset": self.dataset, "seed": self.seed, "setting": asdict(self.setting)}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


PRIORITY = ["dense", "l1", "csgd", "gates", "greg1", "slimming", "greg2", "increg", "group_lasso", "sfp",
            "asrfp", "orthoreg", "tp_groupnorm", "tp_growingreg"]

TABLES = {
    # table name -> (models, cuts, methods, seeds)
    "main": (["resnet20"], [2.0], PRIORITY, [0]),
    "cut4": (["resnet20"], [4.0], PRIORITY, [0]),
    "seeds": (["resnet20"], [2.0], ["dense", "l1", "csgd", "gates"], [1, 2]),
    # the VGG-style and MobileNetV2-style networks (models/vgg.py, models/mobilenet.py), both cuts
    "models": (["vgg11_small", "mobilenet_v2_small"], [2.0, 4.0], PRIORITY, [0]),
}


def table_configs(table: str, setting: Setting, methods: list[str] | None = None,
                  seeds: list[int] | None = None, models: list[str] | None = None) -> list[RunConfig]:
    tmodels, cuts, tmethods, tseeds = TABLES[table]
    out = []
    for model in models or tmodels:
        for seed in seeds or tseeds:
            for cut in cuts:
                for m in methods or tmethods:
                    if m not in METHODS:
                        raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
                    out.append(RunConfig(table=table, method=m, model=model, cut=cut, seed=seed, setting=setting))
    return out


def isclose(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)
