"""``torchrun`` support: process-group set-up and teardown, rank-0 guards, a differentiable
all-gather. In one plain process every function is a no-op or the identity.

``torchrun --nproc-per-node N --no-python pretrainflow stage pretrain`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; the backend is NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current() -> World:
    """The world this process belongs to, from torchrun's variables (one process without them)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> World:
    """Join the process group when launched by torchrun; returns the world."""
    world = current()
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order; gradients flow back to each rank's
    own part (SimCLR's negatives from other ranks)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn  # noqa: PLC0415 - only under torchrun

    return torch.cat(dist_fn.all_gather(x.contiguous()))


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over ranks (for logging; no gradient)."""
    if not dist.is_initialized():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. a collapse detected by the main process)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())
