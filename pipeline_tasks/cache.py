"""The uint8 image cache: one ``.npy`` file per split, written in place and read memory-mapped,
so a data set larger than memory is decoded once and then paged in batch by batch.

``decode_into`` fills a cache file from image files on every core. ``BatchSource`` serves
training batches from one or more cached arrays: the whole set moves to the device when it
fits in ``max_device_bytes``; otherwise each step's images are gathered from the memory map
one batch ahead, in a thread, into pinned memory and copied on a side CUDA stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

CHUNK = 512  # images per decoding task


def images_file(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"{split}_images.npy"


def labels_file(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"{split}_labels.npy"


def _decode_chunk(args: tuple[str, int, list[str], int, int, str]) -> None:
    from pipeline_tasks.preprocess import load_image  # noqa: PLC0415 - a worker process

    path, start, files, size, channels, resize = args
    out = np.load(path, mmap_mode="r+")
    for i, f in enumerate(files):
        out[start + i] = load_image(Path(f), size, channels, resize)
    out.flush()


def decode_into(path: Path, files: Sequence[Path], size: int, channels: int, resize: str,
                workers: int | None = None) -> None:
    """Decode ``files`` into a new uint8 ``[N, C, size, size]`` ``.npy`` at ``path``, chunks
    of ``CHUNK`` images on ``workers`` processes (all cores by default)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                    shape=(len(files), channels, size, size))
    del out  # header and size on disk; the workers fill it
    tasks = [(str(path), s, [str(f) for f in files[s:s + CHUNK]], size, channels, resize)
             for s in range(0, len(files), CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        for task in tasks:
            _decode_chunk(task)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_chunk, tasks))


def open_images(out_dir: str | Path, split: str) -> np.ndarray:
    """The split's images, memory-mapped read-only (an empty array when the file is absent)."""
    path = images_file(out_dir, split)
    if not path.is_file():
        return np.empty((0, 1, 1, 1), dtype=np.uint8)
    return np.load(path, mmap_mode="r")


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
