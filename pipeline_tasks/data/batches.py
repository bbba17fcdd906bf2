"""Training batches from the memory-mapped cache: the whole set moves to the device when it
fits in ``max_device_bytes``; otherwise each step's images are gathered from the memory map
one batch ahead, in a thread, into pinned memory and copied on a side CUDA stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def device_budget(device: torch.device) -> int:
    """Bytes of images that may be held on ``device`` at once: half the free GPU memory, or
    2 GiB of RAM on the CPU; ``PRETRAINFLOW_DEVICE_CACHE_BYTES`` overrides (0 always streams)."""
    if "PRETRAINFLOW_DEVICE_CACHE_BYTES" in os.environ:
        return int(os.environ["PRETRAINFLOW_DEVICE_CACHE_BYTES"])
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * 0.5)
    return 2 << 30


class BatchSource:
    """Training images from several cached arrays (the labeled training split and the pool)
    addressed as one index space ``0 .. N-1``."""

    def __init__(self, arrays: Sequence[np.ndarray], device: torch.device,
                 max_device_bytes: int | None = None) -> None:
        self.arrays = [a for a in arrays if len(a)]
        if not self.arrays:
            raise ValueError("no images to train on")
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.device = device
        self.shape = self.arrays[0].shape[1:]
        nbytes = int(self.offsets[-1]) * int(np.prod(self.shape))
        self.on_device: torch.Tensor | None = None
        budget = device_budget(device) if max_device_bytes is None else max_device_bytes
        if nbytes <= budget:  # fits: one copy up front, then indexing on the device
            self.on_device = torch.from_numpy(np.concatenate([np.asarray(a) for a in self.arrays])).to(device)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" and self.on_device is None else None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _host(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (CPU int64) gathered from the memory maps, in ``idx`` order."""
        index = idx.numpy()
        which = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), *self.shape), dtype=np.uint8)
        for k, array in enumerate(self.arrays):
            rows = np.flatnonzero(which == k)
            if len(rows):
                local = index[rows] - self.offsets[k]
                order = np.argsort(local)  # sequential reads from the file
                out[rows[order]] = array[local[order]]
        batch = torch.from_numpy(out)
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.stream is None:
            return batch.to(self.device)
        with torch.cuda.stream(self.stream):
            moved = batch.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(self.stream)
        torch.cuda.current_stream(self.device).wait_event(event)
        moved.record_stream(torch.cuda.current_stream(self.device))
        return moved

    def batches(self, index_batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """uint8 ``[B, C, H, W]`` on the device for each index batch, the next one gathered in
        a background thread while the current one trains."""
        if self.on_device is not None:
            for idx in index_batches:
                yield self.on_device[idx.to(self.device)]
            return
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._host, index_batches[0]) if len(index_batches) else None
            for i in range(len(index_batches)):
                assert pending is not None
                batch = pending.result()
                if i + 1 < len(index_batches):
                    pending = pool.submit(self._host, index_batches[i + 1])
                yield self._to_device(batch)
