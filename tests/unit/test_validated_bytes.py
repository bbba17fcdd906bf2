"""Preprocess decodes what the gate validated: each file's bytes are checked against the sha256
in the manifest and those bytes are decoded, so a file rewritten after the gate is refused by
name; and every cache ``.npy`` is replaced whole, so a process reading the old one memory-mapped
keeps reading it (trust issue: a rewritten file was trained on under the gate's old sha256, and
a second preprocess under a running flow killed it with SIGBUS)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import pipeline_tasks.data.cache as cache
from pipeline_tasks.config import DataConfig, PreprocessConfig, ValidateConfig
from pipeline_tasks.data.cache import decode_into
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.data.preprocess import preprocess_data
from pipeline_tasks.data.validate import validate_data


@pytest.fixture
def data(tiny_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def test_a_file_rewritten_after_the_gate_is_refused_by_name(data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 16 files, so the refusal comes from a worker process, as on a real data set."""
    monkeypatch.setattr(cache, "CHUNK", 16)
    record = validate_data(data, ValidateConfig(min_images_per_class=5), tmp_path / "v")
    victim, other = sorted((data / "3").iterdir())[0], sorted((data / "8").iterdir())[0]
    victim.write_bytes(other.read_bytes())  # a valid image, just not the one the gate checked
    with pytest.raises(DataError) as failed:
        preprocess_data(record.manifest_path, data, DataConfig(), PreprocessConfig(), tmp_path / "pre")
    message = str(failed.value)
    assert f"3/{victim.name}: changed after validation" in message
    assert "`pretrainflow stage validate`" in message and "`pretrainflow run`" in message
    assert victim.read_bytes() == other.read_bytes()  # the data is never touched


def test_a_cache_file_is_replaced_not_rewritten_in_place(tiny_data: Path, tmp_path: Path) -> None:
    files = sorted(tiny_data.glob("*/*.png"))[:8]
    target = tmp_path / "train_images.npy"
    decode_into(target, files, 28, 1, "crop", workers=1)
    reader = np.load(target, mmap_mode="r")  # a training process reading the cache
    first = np.array(reader)
    decode_into(target, files[::-1], 28, 1, "crop", workers=1)  # a second preprocess
    assert np.array_equal(reader, first)  # the old file, whole
    assert np.array_equal(np.load(target), first[::-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_images.npy"]  # no temporary left


def test_every_npy_of_a_second_preprocess_is_a_new_file(tiny_data: Path, tmp_path: Path) -> None:
    record = validate_data(tiny_data, ValidateConfig(min_images_per_class=5), tmp_path / "v")
    out = tmp_path / "pre"
    preprocess_data(record.manifest_path, tiny_data, DataConfig(), PreprocessConfig(), out)
    inodes = {p.name: p.stat().st_ino for p in out.glob("*.npy")}
    reader = np.load(out / "train_images.npy", mmap_mode="r")
    first = np.array(reader)
    preprocess_data(record.manifest_path, tiny_data, DataConfig(), PreprocessConfig(), out)
    assert len(inodes) == 7 and all(p.stat().st_ino != inodes[p.name] for p in out.glob("*.npy"))
    assert np.array_equal(reader, first)
