"""Batches from the memory-mapped cache, in memory that does not grow with the dataset.

``BatchSource`` (training): on a GPU the whole set moves to the device, chunk by chunk, when it
fits in ``max_device_bytes``; otherwise, and always on the CPU, each step's images are gathered
from the memory map one batch ahead, in a thread, into pinned memory and copied on a side CUDA
stream. No process holds a full host copy: the page cache holds the file once for every rank.
``Rows`` (evaluation): a selection of rows read one slice at a time by the batched loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def device_budget(device: torch.device) -> int:
    """Bytes of images that may be held on ``device`` at once: half the free GPU memory; 0 on the
    CPU, where a copy would only duplicate the page cache's pages of the memory-mapped file in each
    process's own memory; ``PRETRAINFLOW_DEVICE_CACHE_BYTES`` overrides (0 always streams)."""
    if "PRETRAINFLOW_DEVICE_CACHE_BYTES" in os.environ:
        return int(os.environ["PRETRAINFLOW_DEVICE_CACHE_BYTES"])
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * 0.5)
    return 0


CHUNK = 4096  # images per copy when a set moves to the device whole


class Rows:
    """``n`` rows read one slice at a time: ``rows[i:j]`` is ``read(positions i..j-1)``. The
    batched loops (``predict_logits``, ``embed``) then run over a selection of a memory-mapped
    split (``Rows.select``), or over files decoded on demand, without first copying the whole
    selection into memory."""

    def __init__(self, n: int, read: Callable[[np.ndarray], np.ndarray]) -> None:
        self.n, self.read = n, read

    @classmethod
    def select(cls, array: np.ndarray, rows: np.ndarray | torch.Tensor) -> Rows:
        """``array[rows]``, read a slice at a time."""
        picked = np.asarray(rows)
        return cls(len(picked), lambda at: array[picked[at]])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, at: slice) -> np.ndarray:
        return self.read(np.arange(self.n)[at])


class BatchSource:
    """Training images from several cached arrays (the labeled training split and the pool)
    addressed as one index space ``0 .. N-1``; or, with ``rows``, the rows ``rows`` of one array
    (the labeled subset) addressed as ``0 .. len(rows)-1``. ``source[idx]`` is that batch on the
    device (uint8 ``[B, C, H, W]``; ``idx`` an int64 tensor or a slice)."""

    def __init__(self, arrays: Sequence[np.ndarray], device: torch.device,
                 max_device_bytes: int | None = None, rows: np.ndarray | None = None) -> None:
        self.arrays = [a for a in arrays if len(a)]
        if not self.arrays:
            raise ValueError("no images to train on")
        if rows is not None and len(self.arrays) != 1:
            raise ValueError("rows select from one array")
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.device = device
        self.shape = self.arrays[0].shape[1:]
        nbytes = len(self) * int(np.prod(self.shape))
        self.on_device: torch.Tensor | None = None
        budget = device_budget(device) if max_device_bytes is None else max_device_bytes
        if nbytes <= budget:  # fits: one copy up front, a chunk at a time, then indexing on the device
            self.on_device = torch.empty((len(self), *self.shape), dtype=torch.uint8, device=device)
            for start in range(0, len(self), CHUNK):
                chunk = torch.arange(start, min(start + CHUNK, len(self)))
                self.on_device[start:start + CHUNK] = self._host(chunk).to(device)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" and self.on_device is None else None

    def __len__(self) -> int:
        return int(self.offsets[-1]) if self.rows is None else len(self.rows)

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        if self.on_device is not None:
            return self.on_device[idx.to(self.device)]
        return self._to_device(self._host(idx.cpu()))

    def _host(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (CPU int64) gathered from the memory maps, in ``idx`` order."""
        index = idx.numpy() if self.rows is None else self.rows[idx.numpy()]
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
