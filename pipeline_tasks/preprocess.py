"""Stratified splits and a uint8 image cache: images are decoded once (on every core), never
per epoch.

The labeled images become ``{train,val,test}_images.npy`` and ``*_labels.npy``; the unlabeled
pool, when there is one, becomes ``pool_images.npy``, which only pretraining reads. Training
reads the cache memory-mapped (``cache.py``), so it may be larger than memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

from pipeline_tasks.cache import decode_into, images_file, labels_file, open_images
from pipeline_tasks.config import DataConfig, PreprocessConfig

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PreprocessRecord:
    out_dir: str
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    n_test: int
    image_size: int
    channels: int
    n_pool: int = 0
    test_fingerprint: str = ""  # sha256 over the sorted sha256 of the test images
    resize: str = "crop"


def duplicate_groups(manifest: pd.DataFrame) -> np.ndarray:
    """Group id per row: rows sharing a sha256 (exact copy) or a perceptual hash (near copy,
    e.g. resized or recompressed) share a group, transitively (union-find)."""
    parent = list(range(len(manifest)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in ("sha256", "phash"):
        if column not in manifest:
            continue
        first: dict[str, int] = {}
        for i, value in enumerate(manifest[column]):
            if isinstance(value, str) and value:
                parent[find(i)] = find(first.setdefault(value, i))
    return np.array([find(i) for i in range(len(manifest))], dtype=np.int64)


def split_manifest(
    manifest: pd.DataFrame, cfg: PreprocessConfig, limit_per_class: int | None = None
) -> pd.DataFrame:
    """Add a ``split`` column, stratified by label and seeded, that keeps every duplicate
    group in one split: no test image has a copy (exact or near) in training.

    Groups are drawn in random order; each fills its label's test quota, then val, then train.
    Every class gets at least one test and one val image when it has 3 or more.
    """
    rng = np.random.default_rng(cfg.seed)
    frame = manifest.sort_values("path").reset_index(drop=True)
    if limit_per_class is not None:
        order = frame.assign(_r=rng.random(len(frame))).sort_values("_r")
        frame = order.groupby("label").head(limit_per_class).drop(columns="_r").sort_values("path")
        frame = frame.reset_index(drop=True)
    group = duplicate_groups(frame)
    sizes = frame.groupby("label").size()
    quota = {lab: (max(1, round(n * cfg.test_fraction)) if n >= 3 else 0,
                   max(1, round(n * cfg.val_fraction)) if n >= 3 else 0) for lab, n in sizes.items()}
    taken = {lab: [0, 0] for lab in quota}
    split = np.empty(len(frame), dtype=object)
    labels = frame["label"].to_numpy()
    members = pd.Series(np.arange(len(frame))).groupby(group).apply(list)
    for g in rng.permutation(members.index.to_numpy()):
        rows = members[g]
        lab = labels[rows[0]]
        for k, name in enumerate(("test", "val")):
            if taken[lab][k] < quota[lab][k]:
                taken[lab][k] += len(rows)
                split[rows] = name
                break
        else:
            split[rows] = "train"
    return frame.assign(split=split).sort_values(["split", "label", "path"]).reset_index(drop=True)


def prepare_image(im: Image.Image, size: int, channels: int, resize: str = "crop") -> np.ndarray:
    """Any PIL image -> ``uint8 [C, size, size]``: transparency flattened onto white, 16-bit
    scaled to 8-bit, converted to L or RGB, then made square by ``resize``: ``crop`` (shorter
    side to ``size``, centre crop), ``pad`` (longer side to ``size``, black borders) or
    ``squash`` (both sides to ``size``). The one recipe for training and serving."""
    if im.mode not in ("L", "RGB"):
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
        else:
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        if resize == "crop":
            im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
        elif resize == "pad":
            im = ImageOps.pad(im, (size, size), Image.Resampling.BILINEAR, color=0)
        else:
            im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_image(path: Path | BinaryIO, size: int, channels: int, resize: str = "crop") -> np.ndarray:
    """Decode one file to ``uint8 [C, size, size]`` (EXIF-rotated, then ``prepare_image``)."""
    with Image.open(path) as src:
        return prepare_image(ImageOps.exif_transpose(src), size, channels, resize)


def _read_manifest(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"label": str, "phash": str, "path": str}, keep_default_na=False)


def save_split(out_dir: str | Path, name: str, images: np.ndarray, labels: np.ndarray | None) -> None:
    """Write one split of the cache from arrays (uint8 ``[N,C,H,W]``, int64 ``[N]``)."""
    np.save(images_file(out_dir, name), np.ascontiguousarray(images, dtype=np.uint8))
    if labels is not None:
        np.save(labels_file(out_dir, name), np.asarray(labels, dtype=np.int64))


def test_fingerprint(splits: pd.DataFrame) -> str:
    """Identifies the test split by content: scores are comparable only on equal fingerprints."""
    shas = sorted(splits.loc[splits["split"] == "test", "sha256"])
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()


def preprocess_data(
    manifest_path: str | Path, data_dir: str | Path, data: DataConfig, cfg: PreprocessConfig,
    out_dir: str | Path, pool: tuple[str | Path, str | Path] | None = None,
) -> PreprocessRecord:
    """Write ``{train,val,test}.pt`` ({"images": uint8 [N,C,H,W], "labels": int64 [N]}),
    ``pool.pt`` ({"images"} of ``pool`` = (pool manifest, pool folder); empty without one),
    ``splits.csv``, ``classes.json`` and
    ``splits.json`` (sizes and the test fingerprint) under ``out_dir``."""
    out, root = Path(out_dir), Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_manifest(_read_manifest(manifest_path), cfg, data.limit_per_class)
    classes = tuple(sorted(splits["label"].unique()))
    index = {c: i for i, c in enumerate(classes)}
    sizes = {}
    for name in SPLITS:
        rows = splits[splits["split"] == name]
        np.save(labels_file(out, name), np.array([index[c] for c in rows["label"]], dtype=np.int64))
        decode_into(images_file(out, name), [root / r for r in rows["path"]], data.image_size, data.channels,
                    data.resize)
        sizes[name] = len(rows)
    pool_rows = _read_manifest(pool[0])["path"] if pool else pd.Series([], dtype=str)
    pool_root = Path(pool[1]) if pool else root
    decode_into(images_file(out, "pool"), [pool_root / r for r in pool_rows], data.image_size, data.channels,
                data.resize)
    splits.to_csv(out / "splits.csv", index=False)
    (out / "classes.json").write_text(json.dumps(list(classes)))
    record = PreprocessRecord(
        out_dir=str(out), classes=classes, n_train=sizes["train"], n_val=sizes["val"],
        n_test=sizes["test"], image_size=data.image_size, channels=data.channels, n_pool=len(pool_rows),
        test_fingerprint=test_fingerprint(splits), resize=data.resize,
    )
    (out / "splits.json").write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
    return record


def load_split(out_dir: str | Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N,C,H,W], labels int64 [N])`` of a labeled split, read into memory
    (empty when the split was not written)."""
    labels = labels_file(out_dir, name)
    return (torch.from_numpy(np.array(open_images(out_dir, name))),
            torch.from_numpy(np.load(labels)) if labels.is_file() else torch.empty(0, dtype=torch.int64))


def recipe(out_dir: str | Path) -> dict[str, Any]:
    """How the cache's images were made (``image_size``, ``channels``, ``resize``): what a model
    trained on them must do to new images."""
    path = Path(out_dir) / "splits.json"
    info: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    _, channels, size, _ = open_images(out_dir, "train").shape
    return {"image_size": int(info.get("image_size") or size),
            "channels": int(info.get("channels") or channels), "resize": str(info.get("resize", "squash"))}


def load_pool(out_dir: str | Path) -> torch.Tensor:
    """The unlabeled pool's images, uint8 ``[N,C,H,W]`` (``N`` = 0 without a pool), in memory."""
    return torch.from_numpy(np.array(open_images(out_dir, "pool")))
