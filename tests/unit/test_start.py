"""``pretrain.start: auto`` decides on the run's validation labels: ImageNet where its features
beat the pixels (photos of things, seen at varied crops and tints), scratch where they do not
(classes that are a colour: the pixels already hold the answer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_tasks.config import load_config
from pipeline_tasks.data.cache import save_split
from pipeline_tasks.ssl.start import choose_start
from pipeline_tasks.ssl.start_record import read_start
from tests.conftest import PARAMS

SIZE = 64


def _photo_crops(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, three photos (a cat, a cup of coffee, an astronaut): random crops of 50-90%
    of each, flipped half the time, tinted, grey half the time, at 64 px. Where a thing is and
    its colour vary; what it is does not."""
    import skimage.data

    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]
    images, labels = [], []
    for label, photo in enumerate(photos):
        h, w = photo.shape[:2]
        for _ in range(n):
            side = int(min(h, w) * rng.uniform(0.5, 0.9))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((SIZE, SIZE))
            pixels = np.asarray(crop, dtype=np.float64) * rng.uniform(0.6, 1.3, 3)
            pixels = pixels[:, ::-1] if rng.random() < 0.5 else pixels
            pixels = pixels.mean(2, keepdims=True).repeat(3, 2) if rng.random() < 0.5 else pixels
            images.append(pixels.clip(0, 255).astype(np.uint8).transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.array(labels)


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes that are a colour (red, green, blue noise): the pixels are the answer."""
    images, labels = [], []
    for label in range(3):
        for _ in range(n):
            base = np.full((3, SIZE, SIZE), 40.0)
            base[label] = 160
            images.append((base + rng.normal(0, 30, base.shape)).clip(0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels)


def _cache(out: Path, make: object, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    for split, n in (("train", 8), ("val", 8), ("test", 2)):
        images, labels = make(rng, n)  # type: ignore[operator]
        save_split(out, split, images, labels)
    (out / "splits.json").write_text(json.dumps({"image_size": SIZE, "channels": 3, "resize": "crop"}))
    return out


@pytest.mark.parametrize(("make", "expected"), [(_photo_crops, "imagenet"), (_colours, "scratch")])
def test_auto_takes_imagenet_where_its_features_beat_the_pixels(make: object, expected: str,
                                                                 tmp_path: Path) -> None:
    cfg = load_config(PARAMS, ["data.channels=3", "finetune.label_fraction=1.0", "pretrain.device=cpu"])
    assert cfg.pretrain.start == "auto"
    record = choose_start(_cache(tmp_path / "pre", make, 0), cfg.pretrain, cfg.finetune, tmp_path / "start")
    imagenet, pixels = record.probe["imagenet_val_accuracy"], record.probe["pixels_val_accuracy"]
    assert record.choice == expected, record.reason
    assert (imagenet >= pixels + 0.02) == (expected == "imagenet")  # the rule, on the measured numbers
    assert record.probe["train_labels"] == 24 and record.probe["val_labels"] == 24
    assert f"ImageNet features {imagenet:.3f} against pixels {pixels:.3f}" in record.reason
    assert read_start(tmp_path / "start") == record  # what the training stages read
    if expected == "imagenet":
        assert (record.encoder, record.init) == ("timm:tf_efficientnet_lite0", "imagenet:efficientnet_lite0")
    else:
        assert (record.encoder, record.init) == (cfg.pretrain.encoder, None)


def test_grayscale_scratch_imagenet_and_init_are_taken_as_said(tmp_path: Path) -> None:
    pre = _cache(tmp_path / "pre", _colours, 0)
    (pre / "splits.json").write_text(json.dumps({"image_size": SIZE, "channels": 1, "resize": "crop"}))
    cases = {"auto": ([], "scratch", "1-channel"), "imagenet": (["pretrain.start=imagenet"], "imagenet", ""),
             "init": (["pretrain.start=scratch", "pretrain.init=weights.pt"], "init", "weights.pt")}
    for name, (sets, choice, said) in cases.items():
        cfg = load_config(PARAMS, sets)
        record = choose_start(pre, cfg.pretrain, cfg.finetune, tmp_path / name)
        assert record.choice == choice and said in record.reason and not record.probe, name
