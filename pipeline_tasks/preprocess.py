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


def split_manifest(
    manifest: pd.DataFrame, cfg: PreprocessConfig, limit_per_class: int | None = None
) -> pd.DataFrame:
    """Add a ``split`` column: per class, a seeded shuffle then test / val / train.

    Every class gets at least one test and one val image when it has 3 or more.
    """
    rng = np.random.default_rng(cfg.seed)
    parts = []
    for _, group in manifest.sort_values("path").groupby("label", sort=True):
        group = group.iloc[rng.permutation(len(group))]
        if limit_per_class is not None:
            group = group.iloc[:limit_per_class]
        n = len(group)
        n_test = max(1, round(n * cfg.test_fraction)) if n >= 3 else 0
        n_val = max(1, round(n * cfg.val_fraction)) if n >= 3 else 0
        split = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        parts.append(group.assign(split=split))
    return pd.concat(parts).sort_values(["split", "label", "path"]).reset_index(drop=True)


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
    manifest = pd.read_csv(manifest_path, dtype={"label": str})
    manifest = manifest[manifest["decodes"]]
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
