"""Devices, precision and ``torchrun`` through Lightning Fabric, and the few rules that are ours.

Fabric was chosen over Hugging Face Accelerate because it reads ``torchrun``'s environment as
it is (``torchrun --nproc-per-node N --no-python pretrainflow stage pretrain`` needs no launcher
config file), keeps our training loop ours (``setup``, ``backward``, ``all_gather``,
``all_reduce``), gives one precision switch for bf16 and fp16-with-scaler on CPU and CUDA, and
saves and loads checkpoint state (model, optimiser, scheduler, scaler) with ``weights_only``
loading, through a ``CheckpointIO`` plugin that we replace with an atomic one below.

Ours: a failed rank tears down without waiting in a barrier (its exit makes torchrun stop the
others at once, instead of leaving them in a collective until its timeout), and checkpoints
are written beside their final name, flushed and renamed (fsspec's transaction writes to the
system temp folder and moves across file systems, which is not atomic).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning_fabric import Fabric
from lightning_fabric.plugins import TorchCheckpointIO
from lightning_fabric.strategies import SingleDeviceStrategy

from pipeline_tasks.runtime import Runtime
from pipeline_tasks.ssl.world import current
from pipeline_tasks.storage import save_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Fabric's checkpoint writer, made atomic on every file system: a reader (or a resume after
    SIGKILL) sees the previous checkpoint or the new one, never half of one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_atomic(checkpoint, Path(path))


def launch(runtime: Runtime) -> Fabric:
    """A Fabric for ``runtime`` that joins torchrun's process group when launched by it (gloo on
    the CPU, NCCL on CUDA; one process per device)."""
    world = current()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    fabric = Fabric(accelerator=runtime.device.type, devices=per_node if world.distributed else 1,
                    num_nodes=max(1, world.size // per_node), strategy="ddp" if world.distributed else "auto",
                    precision=runtime.fabric_precision,  # type: ignore[arg-type]
                    plugins=[AtomicCheckpointIO()])
    fabric.launch()
    return fabric


def single_device(runtime: Runtime) -> Fabric:
    """A Fabric on one device (fine-tuning): the same precision switch, no process group."""
    return Fabric(accelerator=runtime.device.type, devices=1, precision=runtime.fabric_precision,  # type: ignore[arg-type]
                  strategy=SingleDeviceStrategy(device=runtime.device))


def finish(fabric: Fabric, ok: bool) -> None:
    """Leave the process group: after a barrier when every rank succeeded; at once after a
    failure, so the process exits and torchrun ends the other ranks with its message."""
    if not dist.is_initialized():
        return
    if ok:
        fabric.barrier()
        dist.destroy_process_group()


def gatherer(fabric: Fabric) -> Any:
    """A differentiable all-gather for SimCLR's negatives: ``[B, D]`` on each rank ->
    ``[world * B, D]`` in rank order, gradients flowing back to each rank's own rows."""
    def gather(x: torch.Tensor) -> torch.Tensor:
        return fabric.all_gather(x.contiguous(), sync_grads=True).flatten(0, 1)  # type: ignore[union-attr]
    return gather


def mean_over_ranks(fabric: Fabric, x: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over ranks (for logging; no gradient)."""
    if fabric.world_size == 1:
        return x
    return fabric.all_reduce(x.detach().clone(), reduce_op="mean")  # type: ignore[return-value]


def gather_states(fabric: Fabric, state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``state`` (a uint8 RNG state, the same length on each rank), in rank order,
    on the CPU: what a checkpoint keeps so that each rank resumes its own random stream."""
    if fabric.world_size == 1:
        return [state.cpu()]
    gathered = fabric.all_gather(state.to(fabric.device))
    assert isinstance(gathered, torch.Tensor)
    return [row.cpu().clone() for row in gathered.view(fabric.world_size, -1)]  # own storage each
