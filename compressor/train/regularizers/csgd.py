"""Centripetal SGD (Ding et al., CVPR 2019 / arXiv 2107.14444): make clustered filters identical.

Each group's channels are partitioned into ``K = ceil(keep_ratio * size)`` clusters once, at
construction (call :meth:`recluster` to start another C-SGD iteration). One partition is shared by
every coupled producer of the group (the paper's pacesetter/follower rule). [design] k-means runs on
the concatenation of *all* producer kernels of the group rather than on one pacesetter layer, so the
partition reflects every layer that must share it. k-means is our own deterministic torch
implementation (k-means++ seeding from ``seed``, Lloyd iterations); ``method="even"`` gives the
old code's consecutive equal chunks.

Gradient rewrite, in ``step()`` (after backward, i.e. on all-reduced DDP gradients; after
``scaler.unscale_`` with AMP), for every trainable producer/param slice, per channel i in cluster H:

    g_i <- mean_{j in H} g_j + (wd_target - wd_opt) * theta_i + eps_s * (theta_i - mean_{j in H} theta_j)

- ``eps_s = centri_strength`` for conv/linear kernels, ``0.1 * centri_strength`` for vectors (bias,
  BN gamma/beta, per-channel params), as in the official code.
- Weight decay: the official code removes optimizer weight decay from clustered parameters and puts
  ``wd`` into the rewrite (kernels) and ``weight_decay_bias`` (default 0) for vectors. We do not edit
  the user's param groups (that would break LR schedulers); instead ``wd_opt``, the coupled L2 decay
  the attached optimizer is about to add (``weight_decay`` of the param's group for SGD/Adam, 0 for
  AdamW or with no optimizer attached), is subtracted here, so the *net* decay on clustered kernels
  is ``weight_decay`` (default ``None`` = the optimizer's own value: identical to the paper's
  ``eta_wd * I`` term) and on clustered vectors ``weight_decay_bias``. Unclustered parameters keep
  the optimizer's decay. Without an attached optimizer, give the clustered params wd 0 yourself or
  accept that the optimizer's wd is added on top. The decay is the same for all members, so it never
  breaks the tie.
- Consequence: ``g_i - g_j = (wd + eps_s) (theta_i - theta_j)``: differences decay geometrically while
  the cluster mean trains normally. Use SGD (momentum/Nesterov fine); Adam's per-coordinate scaling
  breaks the tie (a warning says so).

Monitor: :meth:`deviation` = sum_H sum_{i in H} ||theta_i - theta_bar_H||^2 over trainable producer
and param slices (``include_buffers=True`` adds BN running stats, which converge on their own).

Output: ``clusters`` per group (merge map: keep the lowest index of each cluster, sum the consumer
input slices over the cluster). ``importance()`` gives each cluster's representative its cluster
size and every other member 0, so "keep the top K" keeps exactly the representatives.
"""

from __future__ import annotations

import math
import warnings

import torch

from compressor.train.groups import ParamSlice, TorchGroup
from compressor.train.regularizers import register
from compressor.train.regularizers.base import Regularizer, check_range


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 100) -> torch.Tensor:
    """Cluster the rows of ``x`` into ``k`` non-empty clusters; labels ordered by first member."""
    n = x.shape[0]
    if k >= n:
        return torch.arange(n)
    x = x.double()
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    chosen = [first]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0.0:
            idx = next(i for i in range(n) if i not in chosen)
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=gen))
        chosen.append(idx)
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    centers = x[chosen].clone()
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(x, centers).argmin(1)
        counts = torch.bincount(new, minlength=k)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            dist = ((x - centers[new]) ** 2).sum(1)
            dist[counts[new] <= 1] = -1.0  # never steal the last member of a cluster
            far = int(dist.argmax())
            counts[new[far]] -= 1
            new[far] = empty
            counts[empty] = 1
        if torch.equal(new, labels):
            break
        labels = new
        centers = torch.zeros_like(centers).index_add_(0, labels, x) / torch.bincount(labels, minlength=k).unsqueeze(1).double()
    return _canonical(labels)


def _canonical(labels: torch.Tensor) -> torch.Tensor:
    order: dict[int, int] = {}
    for lab in labels.tolist():
        order.setdefault(lab, len(order))
    return torch.tensor([order[v] for v in labels.tolist()], dtype=torch.long)


def clusters_from_labels(labels: torch.Tensor) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for i, lab in enumerate(labels.tolist()):
        out.setdefault(lab, []).append(i)
    return [out[k] for k in sorted(out)]


def _labels_from_clusters(clusters: list[list[int]], g: TorchGroup) -> torch.Tensor:
    """Cluster index per channel; every channel 0..size-1 in exactly one non-empty cluster."""
    labels = torch.full((g.size,), -1, dtype=torch.long)
    for c, members in enumerate(clusters):
        if len(members) == 0:
            raise ValueError(f"clusters for group {g.id}: cluster {c} is empty")
        for i in members:
            if not 0 <= int(i) < g.size:
                raise ValueError(f"clusters for group {g.id}: channel index {i} is outside [0, {g.size})")
            if labels[int(i)] >= 0:
                raise ValueError(f"clusters for group {g.id}: channel {int(i)} is in two clusters")
            labels[int(i)] = c
    if (labels < 0).any():
        raise ValueError(f"clusters for group {g.id} do not cover all {g.size} channels")
    return labels


@register("csgd")
class CentripetalSGD(Regularizer):
    """Cluster each group's channels and pull every cluster to one identical filter."""

    def __init__(self, model, example_input=None, *, keep_ratio: float | dict[int, float] = 0.5,
                 clusters: dict[int, list[list[int]]] | None = None, centri_strength: float = 3e-3,
                 weight_decay: float | None = None, weight_decay_bias: float = 0.0, method: str = "kmeans",
                 seed: int = 0, kmeans_iters: int = 100, **kw) -> None:
        if method not in ("kmeans", "even"):
            raise ValueError("method must be 'kmeans' or 'even'")
        check_range("keep_ratio", keep_ratio, low=0.0, high=1.0, low_open=True)
        check_range("centri_strength", centri_strength, low=0.0)
        if weight_decay is not None:
            check_range("weight_decay", weight_decay, low=0.0)
        check_range("weight_decay_bias", weight_decay_bias, low=0.0)
        self.keep_ratio, self.eps = keep_ratio, float(centri_strength)
        self.weight_decay, self.weight_decay_bias = weight_decay, float(weight_decay_bias)
        self.method, self.seed, self.kmeans_iters = method, int(seed), int(kmeans_iters)
        super().__init__(model, example_input, **kw)
        self.labels: dict[int, torch.Tensor] = {}
        self.recluster(clusters)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        super().attach(optimizer)
        if not isinstance(optimizer, torch.optim.SGD):
            warnings.warn("C-SGD ties filters exactly only with SGD: per-coordinate optimizers "
                          f"({type(optimizer).__name__}) break the shared gradient", stacklevel=3)

    # ------------------------------------------------------------------ clustering
    def recluster(self, clusters: dict[int, list[list[int]]] | None = None) -> None:
        """Partition every group again (start of a C-SGD iteration) or take the given partition."""
        if clusters is not None:
            unknown = sorted(set(clusters) - {g.id for g in self.groups})
            if unknown:
                raise ValueError(f"clusters given for group(s) {unknown}, which C-SGD does not work on "
                                 f"(selected groups: {[g.id for g in self.groups]})")
        for i, g in enumerate(self.groups):
            if clusters is not None and g.id in clusters:
                self.labels[g.id] = _canonical(_labels_from_clusters(clusters[g.id], g))
                continue
            k = max(1, min(g.size, math.ceil(self.per_group(self.keep_ratio, g) * g.size - 1e-9)))
            if self.method == "even":
                self.labels[g.id] = torch.arange(g.size) * k // g.size
            else:
                feats = torch.cat([s.rows(g.size).double().cpu() for s in g.producer_kernels], dim=1)
                self.labels[g.id] = kmeans(feats, k, seed=self.seed + i, iters=self.kmeans_iters)

    def clusters(self) -> dict[int, list[list[int]]]:
        return {g.id: clusters_from_labels(self.labels[g.id]) for g in self.groups}

    def _slices(self, g: TorchGroup, include_buffers: bool = False) -> list[ParamSlice]:
        out = [s for s in g.slices if s.role in ("producer", "param") and s.trainable]
        if include_buffers:
            out += [s for s in g.slices if s.role in ("producer", "param") and not s.trainable]
        return out

    @staticmethod
    def _cluster_mean(rows: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
        lab = labels.to(rows.device)
        sums = torch.zeros(k, rows.shape[1], dtype=rows.dtype, device=rows.device).index_add_(0, lab, rows)
        counts = torch.bincount(lab, minlength=k).to(rows.dtype).unsqueeze(1)
        return (sums / counts)[lab]

    # ------------------------------------------------------------------ the rewrite
    def _step(self) -> None:
        for g in self.groups:
            labels = self.labels[g.id]
            k = int(labels.max()) + 1
            for sl in self._slices(g):
                grad = sl.grad_rows(g.size)
                if grad is None:
                    continue
                theta = sl.rows(g.size)
                is_kernel = sl.kind == "kernel"
                eps = self.eps if is_kernel else 0.1 * self.eps
                wd_opt = self.optimizer_weight_decay(sl.tensor)
                if is_kernel:
                    wd_target = wd_opt if self.weight_decay is None else float(self.weight_decay)
                else:
                    wd_target = self.weight_decay_bias
                new = (self._cluster_mean(grad, labels, k) + (wd_target - wd_opt) * theta
                       + eps * (theta - self._cluster_mean(theta, labels, k)))
                sl.write_grad_rows(g.size, new)

    # ------------------------------------------------------------------ monitor and output
    def deviation(self, per_group: bool = False, include_buffers: bool = False):
        """Within-cluster squared deviation, summed (or ``{group_id: value}``)."""
        out = {}
        for g in self.groups:
            labels = self.labels[g.id]
            k = int(labels.max()) + 1
            total = 0.0
            for sl in self._slices(g, include_buffers):
                theta = sl.rows(g.size).double()
                total += float(((theta - self._cluster_mean(theta, labels, k)) ** 2).sum())
            out[g.id] = total
        return out if per_group else sum(out.values())

    def importance(self) -> dict[int, torch.Tensor]:
        out = {}
        for g in self.groups:
            score = torch.zeros(g.size, dtype=torch.float64)
            for members in clusters_from_labels(self.labels[g.id]):
                score[members[0]] = float(len(members))
            out[g.id] = score
        return out

    def learned_groups(self):
        clusters = self.clusters()
        out = super().learned_groups()
        for g, entry in out:
            entry["clusters"] = clusters[g.id]
        return out

    def _extra_state(self) -> dict:
        return {"labels": {str(k): v.clone() for k, v in self.labels.items()}}

    def _load_extra_state(self, extra: dict) -> None:
        self.labels = {int(k): v.clone() for k, v in extra["labels"].items()}
