"""``data.cache_size``: train and pool images also cached larger, the random resized crops of
pretraining and fine-tuning cut from them (real pixels), resampled to ``data.image_size``;
validation, test and serving at ``image_size``; a cache smaller than the training size refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning_fabric import Fabric

from pipeline_tasks.config import ConfigError, DataConfig, PreprocessConfig, PretrainConfig, load_config
from pipeline_tasks.data.cache import large_images_file, recipe, save_split
from pipeline_tasks.data.manifest import build_manifest
from pipeline_tasks.data.preprocess import preprocess_data
from pipeline_tasks.ssl.run import build_run
from tests.conftest import PARAMS


def tiny_cache(out: Path, large: np.ndarray | None = None, small: np.ndarray | None = None) -> Path:
    """A preprocessed folder: 8 training images at 16 px (or ``small``), their ``large`` copy."""
    out.mkdir(parents=True, exist_ok=True)
    if small is None:
        small = np.random.default_rng(0).integers(0, 256, (8, 3, 16, 16), dtype=np.uint8)
    save_split(out, "train", small, np.arange(8) % 2)
    if large is not None:
        np.save(large_images_file(out, "train"), large)
    (out / "splits.json").write_text(json.dumps({"image_size": small.shape[-1], "channels": small.shape[1],
                                                 "resize": "crop"}))
    return out


def cpu() -> Fabric:
    return Fabric(accelerator="cpu", devices=1)


def test_a_larger_cache_holds_the_training_splits_and_serving_keeps_image_size(
        tiny_data: Path, tmp_path: Path) -> None:
    build_manifest(tiny_data).to_csv(tmp_path / "manifest.csv", index=False)
    data = DataConfig(dir=str(tiny_data), image_size=16, cache_size=24)
    out = tmp_path / "pre"
    record = preprocess_data(tmp_path / "manifest.csv", tiny_data, data, PreprocessConfig(), out)
    train, large = np.load(out / "train_images.npy"), np.load(large_images_file(out, "train"))
    assert train.shape[1:] == (1, 16, 16) and large.shape == (len(train), 1, 24, 24) and large.any()
    assert not large_images_file(out, "val").exists() and not large_images_file(out, "test").exists()
    assert record.cache_size == 24 and recipe(out) == {"image_size": 16, "channels": 1, "resize": "crop"}
    preprocess_data(tmp_path / "manifest.csv", tiny_data, DataConfig(dir=str(tiny_data), image_size=16),
                    PreprocessConfig(), out)
    assert not large_images_file(out, "train").exists()  # no stale copy of an earlier cache_size
    with pytest.raises(ConfigError, match="data.cache_size 12 is smaller than data.image_size 16"):
        load_config(PARAMS, ["data.image_size=16", "data.cache_size=12"])


def checkerboard(side: int) -> np.ndarray:
    """A 1-px black and white checkerboard, ``[8, 3, side, side]``: detail only real pixels show."""
    board = (np.add.outer(np.arange(side), np.arange(side)) % 2 * 255).astype(np.uint8)
    return np.broadcast_to(board, (8, 3, side, side)).copy()


def neighbour_contrast(views: torch.Tensor) -> float:
    return float((views[..., 1:] - views[..., :-1]).abs().mean())


def test_pretraining_views_take_real_pixels_from_the_larger_cache(tmp_path: Path) -> None:
    """A 40 px cache of a 1-px checkerboard under a 32 px one (where it is grey: 40 -> 32 px
    cannot keep a 1-px pattern): the 32 px views show the checkerboard, so they come from the
    40 px images, resampled, not from the 32 px ones."""
    pre = tiny_cache(tmp_path / "pre", checkerboard(40), np.full((8, 3, 32, 32), 128, np.uint8))
    cfg = PretrainConfig(base_width=4, batch_size=4, crop_scale_min=0.9, rotation_degrees=0, noise_std=0,
                         erase_prob=0)
    run, _, _ = build_run(cpu(), pre, cfg, None, None, "d")
    batch = next(run.source.batches([torch.arange(4)]))
    views = run.views[0](batch, torch.Generator().manual_seed(0))
    assert tuple(batch.shape[1:]) == (3, 40, 40) and tuple(views.shape) == (4, 3, 32, 32)
    assert neighbour_contrast(views) > 0.2  # in [-1, 1]: grey views would have none


def test_finetuning_views_take_real_pixels_from_the_larger_cache(tmp_path: Path) -> None:
    from pipeline_tasks.config import FinetuneConfig
    from pipeline_tasks.finetune.train import _augment, _labeled_images

    pre = tiny_cache(tmp_path / "pre", checkerboard(40), np.full((8, 3, 32, 32), 128, np.uint8))
    subset = torch.tensor([1, 3])
    augment = _augment(pre, "full", FinetuneConfig(augment="natural"))
    x = _labeled_images(pre, subset, augment, torch.device("cpu"))[0:2]
    assert augment is not None and augment.out_size == 32 and tuple(x.shape) == (2, 3, 40, 40)
    assert neighbour_contrast(augment(x, torch.Generator().manual_seed(0))) > 0.5
    for mode, name in (("full", "none"), ("linear", "natural")):  # no views: the 32 px images as they are
        assert _augment(pre, mode, FinetuneConfig(augment=name)) is None
    plain = _labeled_images(pre, subset, None, torch.device("cpu"))[0:2]
    assert torch.equal(plain, torch.full((2, 3, 32, 32), 128, dtype=torch.uint8))