"""Names that only a case-sensitive file system tells apart are refused by the gate with both
names: class folders (``Cat``/``cat``, an NFC and an NFD ``café``) and file paths
(``dog/IMG.png``/``dog/img.png``), which merge or overwrite each other on macOS and Windows.
Real folders on disk (Linux keeps both names)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_tasks.config import ValidateConfig
from pipeline_tasks.data.datasets import load_mnist_5k
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.data.validate import validate_data

CFG = ValidateConfig(min_images_per_class=5)
NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def _folder(root: Path, classes: list[str], start: int = 0) -> Path:
    """6 distinct real digits in each class folder (a different digit class for each)."""
    images, labels = load_mnist_5k()
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == k)[start:start + 6]):
            Image.fromarray(images[i]).save(root / name / f"{j}.png")
    return root


def test_class_names_that_differ_by_case_or_unicode_form_close_the_gate(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", ["Cat", "cat", NFC, NFD, "dog"])
    assert len({p.name for p in data.iterdir()}) == 5  # the file system keeps all five
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    with pytest.raises(DataError) as failed:
        validate_data(data, CFG, tmp_path / "v")
    message = str(failed.value)
    assert "name_clash" in message and "merge them under one name" in message
    assert "class 'Cat': 6 images; on macOS and Windows the same folder as: cat" in message
    assert f"class '{NFC}': 6 images; on macOS and Windows the same folder as: {NFD}" in message
    assert "class 'dog'" not in message
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing renamed


def test_file_paths_that_differ_by_case_close_the_gate(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", ["bird", "dog"])
    images, _ = load_mnist_5k()
    Image.fromarray(images[4000]).save(data / "dog" / "IMG.png")
    Image.fromarray(images[4001]).save(data / "dog" / "img.png")
    with pytest.raises(DataError) as failed:
        validate_data(data, CFG, tmp_path / "v")
    message = str(failed.value)
    assert "dog/IMG.png (path_clash: dog/img.png)" in message
    assert "dog/img.png (path_clash: dog/IMG.png)" in message and "overwrites the other" in message
    failures = json.loads((tmp_path / "v" / "report.json").read_text())["failures"]
    assert [f["column"] for f in failures] == ["path_clash"]


def test_distinct_names_pass(tmp_path: Path) -> None:
    record = validate_data(_folder(tmp_path / "data", ["cat", "cats", "café", "dog"]), CFG, tmp_path / "v")
    assert record.n_classes == 4
