"""A class that cannot reach every split is named before training: the gate counts distinct
pictures per class, preprocess refuses a class without a training image and records those
without validation or test images, and fine-tuning refuses a class without a label (trust
issue: a class photographed as one burst landed wholly in test, and fine-tuning saw 0 labels of
it without a word)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline_tasks.config import DataConfig, FinetuneConfig, PreprocessConfig, ValidateConfig
from pipeline_tasks.data.cache import save_split
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.data.manifest import build_manifest
from pipeline_tasks.data.preprocess import preprocess_data
from pipeline_tasks.data.splits import split_manifest
from pipeline_tasks.data.validate import validate_data
from pipeline_tasks.finetune.train import finetune_classifier

T = Image.Transpose


@pytest.fixture
def data(tiny_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def _burst(original: Path, folder: Path) -> None:
    """``folder`` emptied and filled with 8 near copies of one digit: what a phone's burst
    mode or a video's frames give."""
    with Image.open(original) as im:
        im.load()
    shutil.rmtree(folder)
    folder.mkdir()
    im.save(folder / "shot0.png")
    im.resize((56, 56), Image.Resampling.LANCZOS).save(folder / "shot1.png")
    im.resize((42, 42), Image.Resampling.BILINEAR).save(folder / "shot2.png")
    for i, quality in enumerate((95, 90, 85)):
        im.save(folder / f"shot{3 + i}.jpg", quality=quality)
    im.save(folder / "shot6.bmp")
    im.transpose(T.ROTATE_90).save(folder / "shot7.png")


def test_a_class_of_one_burst_closes_the_gate(data: Path, tmp_path: Path) -> None:
    _burst(sorted((data / "4").iterdir())[0], data / "4")
    with pytest.raises(DataError) as failed:
        validate_data(data, ValidateConfig(min_images_per_class=5), tmp_path / "v")
    message = str(failed.value)
    assert "n_distinct" in message and "class '4': 8 images, 1 distinct picture(s)" in message
    assert "min_distinct_per_class" in message and "class '3'" not in message
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert [f["column"] for f in report["failures"]] == ["n_distinct"]


def test_preprocess_refuses_a_class_without_a_training_image(data: Path, tmp_path: Path) -> None:
    """Class 2 keeps only the images its content puts in val or test."""
    splits = split_manifest(build_manifest(data), PreprocessConfig())
    for path in splits.loc[(splits["label"] == "2") & (splits["split"] == "train"), "path"]:
        (data / path).unlink()
    build_manifest(data).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"class\(es\) '2': no training image") as failed:
        preprocess_data(tmp_path / "manifest.csv", data, DataConfig(), PreprocessConfig(), tmp_path / "pre")
    assert "add more different pictures" in str(failed.value)
    assert not (tmp_path / "pre").exists()


def test_classes_without_validation_or_test_images_are_recorded(tiny_data: Path, tmp_path: Path) -> None:
    build_manifest(tiny_data).to_csv(tmp_path / "manifest.csv", index=False)
    preprocess_data(tmp_path / "manifest.csv", tiny_data, DataConfig(), PreprocessConfig(), tmp_path / "pre")
    splits = pd.read_csv(tmp_path / "pre" / "splits.csv", dtype={"label": str})
    counts = splits.groupby(["label", "split"]).size().unstack(fill_value=0)
    without = {name: sorted(counts.index[counts[name] == 0]) for name in ("val", "test")}
    assert without["val"]  # 12 digits a class: the seed leaves some class without one
    assert json.loads((tmp_path / "pre" / "splits.json").read_text())["classes_without"] == without


def test_finetuning_names_a_class_without_training_labels(tmp_path: Path) -> None:
    images = np.zeros((4, 1, 28, 28), np.uint8)
    (tmp_path / "pre").mkdir()
    save_split(tmp_path / "pre", "train", images, np.array([0, 0, 1, 1]))
    save_split(tmp_path / "pre", "val", images, np.array([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="no training label of class\\(es\\) 'owl'"):
        finetune_classifier(tmp_path / "pre", tmp_path / "encoder.pt", ("cat", "dog", "owl"),
                            FinetuneConfig(device="cpu"), tmp_path / "out")
