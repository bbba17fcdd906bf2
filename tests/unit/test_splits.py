"""Copies never straddle splits, under another label they close the gate, and a split is a
function of content (trust issue: a 60 px resize of a training image was put in test; 37 of 39
distinct 16-bit scans became one copy group and all went to test)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline_tasks.config import PreprocessConfig, ValidateConfig
from pipeline_tasks.data.datasets import write_builtin
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.data.manifest import build_manifest
from pipeline_tasks.data.splits import split_manifest
from pipeline_tasks.data.validate import validate_data

SEEDS = range(20)


def _copies(original: Path, folder: Path) -> list[Path]:
    """A 60 px resize, a JPEG re-encode and an EXIF-rotated copy (stored turned, upright when
    shown) of ``original``, written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(original) as im:
        im.load()
    resized, jpeg, rotated = folder / "resized.png", folder / "reencoded.jpg", folder / "rotated.png"
    im.resize((60, 60), Image.Resampling.LANCZOS).save(resized)
    im.save(jpeg, "JPEG", quality=85)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(np.rot90(np.asarray(im), 1)).save(rotated, exif=exif.tobytes())
    return [resized, jpeg, rotated]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "data"
    write_builtin("mnist-5k", out, limit_per_class=20)
    return out


def test_copies_share_the_original_split_under_every_seed(digits: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(digits, tmp_path / "data"))
    original = sorted((data / "3").iterdir())[0]
    copies = [f"3/{p.name}" for p in _copies(original, data / "3")]
    manifest = build_manifest(data)
    together, moved = [f"3/{original.name}", *copies], set()
    for seed in SEEDS:
        split = split_manifest(manifest, PreprocessConfig(seed=seed)).set_index("path")["split"]
        assert split[together].nunique() == 1, (seed, split[together].to_dict())
        moved.add(split[together[0]])
    assert len(moved) > 1  # the group does move with the seed: the check is not vacuous


def test_a_copy_under_another_label_closes_the_gate(digits: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(digits, tmp_path / "data"))
    original = sorted((data / "3").iterdir())[0]
    _copies(original, data / "5")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    with pytest.raises(DataError) as failed:
        validate_data(data, ValidateConfig(min_images_per_class=5), tmp_path / "validation")
    message = str(failed.value)
    assert "label_conflict" in message and "two classes" in message
    for name in ("5/resized.png", "5/reencoded.jpg", "5/rotated.png", f"3/{original.name}"):
        assert name in message
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # the folder is untouched


def test_adding_images_moves_no_earlier_image(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_builtin("mnist-5k", data, limit_per_class=51)
    full = build_manifest(data)
    extra = full.groupby("label").tail(1)["path"]  # 10 images, one per class
    earlier = full[~full["path"].isin(extra)]
    assert len(earlier) == 500 and len(full) == 510
    for seed in SEEDS:
        cfg = PreprocessConfig(seed=seed)
        before = split_manifest(earlier, cfg).set_index("path")["split"]
        after = split_manifest(full, cfg).set_index("path")["split"]
        assert (after[before.index] == before).all(), seed


def _smooth_16bit(seed: int, size: int = 48) -> np.ndarray:
    """A smooth 16-bit scan-like image, values about 2,000-60,000: three gaussian blobs on a slope."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)
    for _ in range(3):
        cy, cx, s = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.25)
        img = img + rng.uniform(0.5, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    img = (img - img.min()) / (img.max() - img.min())
    return (2000 + img * 58000).astype(np.uint16)


def _write_scans(folder: Path, seeds: range) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        Image.fromarray(_smooth_16bit(s)).save(folder / f"scan{s:03d}.png")


def test_distinct_16bit_scans_split_normally_and_the_pool_keeps_them(tmp_path: Path) -> None:
    data, pool = tmp_path / "data", tmp_path / "pool"
    _write_scans(data / "a", range(0, 20))
    _write_scans(data / "b", range(20, 40))
    _write_scans(pool, range(100, 120))
    manifest = build_manifest(data)
    assert (manifest["mode"] == "I;16").all() and (manifest["phash"].str.len() == 64).all()
    counts = pd.concat([split_manifest(manifest, PreprocessConfig(seed=s))["split"].value_counts()
                        for s in SEEDS], axis=1).fillna(0)
    assert (counts.loc["train"] >= 20).all() and (counts.loc["test"] >= 2).all()  # never all in test
    assert counts.loc["train"].mean() == pytest.approx(0.7 * 40, abs=4)
    record = validate_data(data, ValidateConfig(min_images_per_class=5), tmp_path / "v", pool_dir=pool)
    report = pd.read_json(io.StringIO(Path(record.report_path).read_text()), typ="series")
    assert record.n_pool == 20 and report["pool"]["removed_copies"] == []
    assert report["copy_groups"] == 0 and report["unhashed_images"] == 0
