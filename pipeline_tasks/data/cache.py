"""The uint8 image cache: one ``.npy`` file per split, read memory-mapped, so a data set larger
than memory is decoded once and then paged in batch by batch. Each file is written beside its
place and moved there when complete (``os.replace``): a process still reading the old one keeps
it whole.

``decode_into`` fills a cache file from image files on every core; ``open_images`` and
``load_split`` read it back; ``recipe`` says how its images were made.

With ``data.cache_size`` larger than ``data.image_size``, the train and pool images are cached
twice: at ``image_size`` (``{split}_images.npy``, what evaluation, k-NN monitors, linear probes
and the pool stage read, and what serving makes of a new image) and at ``cache_size``
(``{split}_images_large.npy``, ``view_source``: what the random resized crops of pretraining
and fine-tuning are cut from, so a view resampled to ``image_size`` has real pixels).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_tasks.data.cores import usable_cores
from pipeline_tasks.data.errors import DataError

CHUNK = 512  # images per decoding task


def images_file(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"{split}_images.npy"


def large_images_file(out_dir: str | Path, split: str) -> Path:
    """The split's images at ``data.cache_size``, when preprocess wrote them."""
    return Path(out_dir) / f"{split}_images_large.npy"


def labels_file(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"{split}_labels.npy"


def save_atomic(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then ``os.replace``: a process that has
    the old file memory-mapped keeps reading the old file (its inode), never one truncated and
    rewritten under it (SIGBUS)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _decode_chunk(args: tuple[str, int, list[str], list[str] | None, int, int, str]) -> None:
    """Decode one chunk of files into rows ``start...`` of the memory-mapped ``.npy``: each
    file's bytes read once, checked against its expected sha256 (when given), and those same
    bytes decoded (``decode.load_image``)."""
    from pipeline_tasks.data.decode import load_image  # noqa: PLC0415 - a worker process

    path, start, files, expected, size, channels, resize = args
    out = np.load(path, mmap_mode="r+")
    for i, f in enumerate(files):
        raw = Path(f).read_bytes()
        if expected is not None and (found := hashlib.sha256(raw).hexdigest()) != expected[i]:
            raise DataError(
                f"{f}: changed after validation (its sha256 is now {found[:12]}..., the gate checked "
                f"{expected[i][:12] or 'none'}...): rerun validation (`pretrainflow stage validate`, or "
                "`pretrainflow run`) so that the images trained on are the ones the gate checked")
        out[start + i] = load_image(io.BytesIO(raw), size, channels, resize, name=f)
    out.flush()


def decode_into(path: Path, files: Sequence[Path], size: int, channels: int, resize: str,
                workers: int | None = None, sha256: Sequence[str] | None = None) -> None:
    """Decode ``files`` into a new uint8 ``[N, C, size, size]`` ``.npy`` at ``path``, chunks
    of ``CHUNK`` images on ``workers`` processes (by default one per usable core: ``usable_cores``).

    ``sha256``: each file's sha256 as the gate recorded it; a file whose bytes no longer match
    is a ``DataError`` naming it, and the bytes checked are the bytes decoded. The array is
    filled in a temporary file beside ``path`` and moved over it when complete (``os.replace``),
    so a reader of the old ``path`` never sees it change, and an error leaves no partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), channels, size, size))
    del out  # header and size on disk; the workers fill it
    expected = None if sha256 is None else [str(s) for s in sha256]
    tasks = [(str(tmp), s, [str(f) for f in files[s:s + CHUNK]],
              None if expected is None else expected[s:s + CHUNK], size, channels, resize)
             for s in range(0, len(files), CHUNK)]
    workers = min(workers or usable_cores(), len(tasks))
    try:
        if workers <= 1:
            for task in tasks:
                _decode_chunk(task)
        else:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_decode_chunk, tasks))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_images(out_dir: str | Path, split: str) -> np.ndarray:
    """The split's images, memory-mapped read-only (an empty array when the file is absent)."""
    path = images_file(out_dir, split)
    if not path.is_file():
        return np.empty((0, 1, 1, 1), dtype=np.uint8)
    return np.load(path, mmap_mode="r")


def view_source(out_dir: str | Path, split: str) -> np.ndarray:
    """The images training views of ``split`` are cut from, memory-mapped: the ``cache_size``
    copy when there is one, else the split's images (the same rows, in the same order)."""
    large = large_images_file(out_dir, split)
    return np.load(large, mmap_mode="r") if large.is_file() else open_images(out_dir, split)


def save_split(out_dir: str | Path, name: str, images: np.ndarray, labels: np.ndarray | None) -> None:
    """Write one split of the cache from arrays (uint8 ``[N,C,H,W]``, int64 ``[N]``)."""
    save_atomic(images_file(out_dir, name), np.ascontiguousarray(images, dtype=np.uint8))
    if labels is not None:
        save_atomic(labels_file(out_dir, name), np.asarray(labels, dtype=np.int64))


def load_split(out_dir: str | Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N,C,H,W], labels int64 [N])`` of a labeled split, read into memory
    (empty when the split was not written)."""
    labels = labels_file(out_dir, name)
    return (torch.from_numpy(np.array(open_images(out_dir, name))),
            torch.from_numpy(np.load(labels)) if labels.is_file() else torch.empty(0, dtype=torch.int64))


def content_digest(out_dir: str | Path, splits: tuple[str, ...]) -> str:
    """sha256 over the cached images of ``splits`` (their ``.npy`` bytes, in order, the
    ``cache_size`` copies included): the exact content a model trains on, whatever the files
    were called or when they were written."""
    h = hashlib.sha256()
    for split in splits:
        h.update(f"{split}\0".encode())
        for path in (images_file(out_dir, split), large_images_file(out_dir, split)):
            if path.is_file():
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
    return h.hexdigest()


def load_split_labels(out_dir: str | Path, name: str) -> np.ndarray:
    """The int64 labels ``[N]`` of a split (empty when it has none)."""
    path = labels_file(out_dir, name)
    return np.load(path) if path.is_file() else np.empty(0, dtype=np.int64)


def recipe(out_dir: str | Path) -> dict[str, Any]:
    """How the cache's images were made (``image_size``, ``channels``, ``resize``): what a model
    trained on them must do to new images."""
    path = Path(out_dir) / "splits.json"
    info: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    _, channels, size, _ = open_images(out_dir, "train").shape
    return {"image_size": int(info.get("image_size") or size),
            "channels": int(info.get("channels") or channels), "resize": str(info.get("resize", "squash"))}
