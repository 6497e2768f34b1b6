"""Worker for the distributed test: same global batch, split across ranks, gloo on CPU."""

from __future__ import annotations

import torch
from torch import nn

from compressor.train import regularizers

from ._nets import ConvNet, convnet_groups

METHODS = {
    "csgd": {"keep_ratio": 0.5, "centri_strength": 0.3},
    "greg1": {"prune_ratio": 0.5, "delta": 0.05, "update_interval": 1, "ceiling": 1.0, "stabilize_steps": 2},
    "gates": {"lam": 0.3, "penalty": "bounded_l1", "sigma": 0.5},
}
STEPS, GLOBAL_BATCH = 12, 16


def global_batches():
    gen = torch.Generator().manual_seed(123)
    return [(torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=gen), torch.randint(0, 4, (GLOBAL_BATCH,), generator=gen))
            for _ in range(STEPS)]


def run(method: str, rank: int = 0, world: int = 1, ddp: bool = False) -> dict[str, torch.Tensor]:
    """Train ``STEPS`` steps; BN in eval mode (plain BN's batch statistics are per rank, not global)."""
    torch.manual_seed(0)
    model = ConvNet()
    reg = regularizers.create(method, model, groups=convnet_groups(model), **METHODS[method])
    model.eval()
    net = model
    if ddp:
        net = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    reg.attach(opt)
    per_rank = GLOBAL_BATCH // world
    for x, y in global_batches():
        xs, ys = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:(rank + 1) * per_rank]
        opt.zero_grad()
        nn.functional.cross_entropy(net(xs), ys).backward()
        reg.step()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for method in METHODS:
            state = run(method, rank, world, ddp=True)
            torch.save(state, f"{out_dir}/{method}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()
