"""The validation gate on tiny real data: passes good folders, names the bad file otherwise."""

import json
import shutil
from pathlib import Path

import pytest

from pipeline_tasks.config import ValidateConfig
from pipeline_tasks.validate import DataError, build_manifest, validate_data

CFG = ValidateConfig(min_images_per_class=5)


@pytest.fixture
def data(tiny_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def test_manifest_describes_every_file(tiny_data: Path) -> None:
    m = build_manifest(tiny_data)
    assert len(m) == 120 and m["decodes"].all()
    row = m.iloc[0]
    assert row["path"] == "0/00000.png" and row["label"] == "0"
    assert (row["format"], row["mode"], row["width"], row["height"]) == ("PNG", "L", 28, 28)
    assert len(row["sha256"]) == 64 and row["bytes"] > 0


def test_good_data_passes_and_writes_report(tiny_data: Path, tmp_path: Path) -> None:
    record = validate_data(tiny_data, CFG, tmp_path / "out")
    report = json.loads(Path(record.report_path).read_text())
    assert report["success"] and report["n_images"] == 120 and report["n_classes"] == 10
    assert all(e["success"] for e in report["expectations"]) and len(report["expectations"]) == 3
    assert Path(record.manifest_path).is_file()


def test_corrupt_file_closes_the_gate(data: Path, tmp_path: Path) -> None:
    victim = sorted((data / "3").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DataError) as err:
        validate_data(data, CFG, tmp_path / "out")
    msg = str(err.value)
    assert f"3/{victim.name}" in msg and "decodes" in msg and "fix:" in msg
    assert not json.loads((tmp_path / "out" / "report.json").read_text())["success"]


def test_too_few_images_per_class(data: Path, tmp_path: Path) -> None:
    for f in sorted((data / "7").iterdir())[2:]:
        f.unlink()
    with pytest.raises(DataError, match="class_count") as err:
        validate_data(data, CFG, tmp_path / "out")
    assert "class '7': 2 images" in str(err.value) and "min_images_per_class" in str(err.value)


def test_single_class_is_refused(data: Path, tmp_path: Path) -> None:
    for d in data.iterdir():
        if d.name != "0":
            shutil.rmtree(d)
    with pytest.raises(DataError, match="label"):
        validate_data(data, CFG, tmp_path / "out")


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        build_manifest(tmp_path / "nope")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        build_manifest(tmp_path / "empty")
