"""Stratified splits and a uint8 tensor cache: images are decoded once, never per epoch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

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


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one file to ``uint8 [C, size, size]`` (EXIF-rotated, converted, resized)."""
    with Image.open(path) as src:
        im: Image.Image = ImageOps.exif_transpose(src)
        if im.mode not in ("L", "RGB"):
            # Flatten transparency onto white before dropping alpha; 16-bit -> 8-bit via "I".
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
            else:
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def preprocess_data(
    manifest_path: str | Path, data_dir: str | Path, data: DataConfig, cfg: PreprocessConfig,
    out_dir: str | Path,
) -> PreprocessRecord:
    """Write ``{train,val,test}.pt`` ({"images": uint8 [N,C,H,W], "labels": int64 [N]}),
    ``splits.csv`` and ``classes.json`` under ``out_dir``."""
    out, root = Path(out_dir), Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = pd.read_csv(manifest_path, dtype={"label": str, "phash": str}, keep_default_na=False)
    splits = split_manifest(manifest, cfg, data.limit_per_class)
    classes = tuple(sorted(splits["label"].unique()))
    index = {c: i for i, c in enumerate(classes)}
    sizes = {}
    for name in SPLITS:
        rows = splits[splits["split"] == name]
        images = np.zeros((len(rows), data.channels, data.image_size, data.image_size), np.uint8)
        for i, rel in enumerate(rows["path"]):
            images[i] = load_image(root / rel, data.image_size, data.channels)
        labels = torch.tensor([index[c] for c in rows["label"]], dtype=torch.int64)
        torch.save({"images": torch.from_numpy(images), "labels": labels}, out / f"{name}.pt")
        sizes[name] = len(rows)
    splits.to_csv(out / "splits.csv", index=False)
    (out / "classes.json").write_text(json.dumps(list(classes)))
    return PreprocessRecord(
        out_dir=str(out), classes=classes, n_train=sizes["train"], n_val=sizes["val"],
        n_test=sizes["test"], image_size=data.image_size, channels=data.channels,
    )


def load_split(out_dir: str | Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N,C,H,W], labels int64 [N])`` from the tensor cache."""
    blob = torch.load(Path(out_dir) / f"{name}.pt", weights_only=True)
    return blob["images"], blob["labels"]
