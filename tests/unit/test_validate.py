"""The validation gate on tiny real data: passes good folders, names the bad file otherwise."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import pipeline_tasks.data.manifest as manifest_module
from pipeline_tasks.config import ValidateConfig
from pipeline_tasks.data.errors import DataError
from pipeline_tasks.data.listing import CACHE_VERSION
from pipeline_tasks.data.manifest import build_manifest
from pipeline_tasks.data.validate import validate_data

CFG = ValidateConfig(min_images_per_class=5)


@pytest.fixture
def data(tiny_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def test_manifest_describes_every_file(tiny_data: Path) -> None:
    m = build_manifest(tiny_data)
    assert len(m) == 120 and m["decodes"].all()
    row = m.iloc[0]
    assert row["path"] == "0/00000.png" and row["label"] == "0" and row["error"] == ""
    assert (row["format"], row["mode"], row["width"], row["height"]) == ("PNG", "L", 28, 28)
    assert len(row["sha256"]) == 64 and row["bytes"] > 0 and len(row["phash"]) == 64


def test_manifest_cache_reads_only_changed_files(data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache.csv"
    cold = build_manifest(data, cache)
    reads: list[str] = []
    real = manifest_module.describe_file
    monkeypatch.setattr(manifest_module, "describe_file",
                        lambda p, rel, label, known=None: reads.append(rel) or real(p, rel, label, known))
    warm = build_manifest(data, cache)
    pd.testing.assert_frame_equal(cold, warm)
    assert reads == []  # nothing decoded or hashed again
    changed = sorted((data / "2").iterdir())[0]
    shutil.copy(sorted((data / "5").iterdir())[0], changed)  # new content, new size/mtime
    (data / "2" / "new.png").write_bytes(changed.read_bytes())
    again = build_manifest(data, cache)
    assert sorted(reads) == sorted([f"2/{changed.name}", "2/new.png"]) and len(again) == 121
    assert again.set_index("path").at[f"2/{changed.name}", "sha256"] != \
        cold.set_index("path").at[f"2/{changed.name}", "sha256"]


def test_a_relinked_file_is_hashed_not_decoded_again(data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc checkout --relink` (or a copy, or a restore) gives a file a new inode and ctime with
    the same bytes: it is read and hashed, never decoded again; new bytes are decoded."""
    cache = tmp_path / "cache.csv"
    first = build_manifest(data, cache)
    decoded: list[str] = []
    real = manifest_module.normalise
    monkeypatch.setattr(manifest_module, "normalise", lambda im, size: decoded.append(im) or real(im, size))
    relinked, rewritten = sorted((data / "4").iterdir())[:2]
    for f in (relinked, rewritten):
        shutil.copy2(f, tmp_path / "moved")
        os.replace(tmp_path / "moved", f)  # a new inode: the stat key no longer matches
    rewritten.write_bytes(sorted((data / "6").iterdir())[0].read_bytes())
    again = build_manifest(data, cache)
    assert len(decoded) == 1  # the rewritten file only

    def unchanged(m: pd.DataFrame) -> pd.DataFrame:
        return m[m["path"] != f"4/{rewritten.name}"].drop(columns="stat_key").reset_index(drop=True)

    pd.testing.assert_frame_equal(unchanged(first), unchanged(again))
    assert build_manifest(data, cache)["stat_key"].equals(again["stat_key"])  # the new keys are cached
    assert len(decoded) == 1
    older = cache.read_text().replace(f"v{CACHE_VERSION}:", "v0:")  # rows of another code version
    cache.write_text(older)
    build_manifest(data, cache)
    assert len(decoded) == 1 + len(first)  # never reused, whatever their bytes


def test_expected_classes_and_imbalance(data: Path, tmp_path: Path) -> None:
    cfg = ValidateConfig(min_images_per_class=1, expected_classes=tuple("0123456789") + ("cat",),
                         max_imbalance_ratio=2.0)
    for f in sorted((data / "9").iterdir())[3:]:
        f.unlink()
    with pytest.raises(DataError) as err:
        validate_data(data, cfg, tmp_path / "out")
    msg = str(err.value)
    assert "expected_classes" in msg and "'label'" in msg  # 'cat' missing
    assert "imbalance" in msg and "class '9': 3 images" in msg  # 12 / 3 = 4 > 2


def test_good_data_passes_and_writes_report(tiny_data: Path, tmp_path: Path) -> None:
    record = validate_data(tiny_data, CFG, tmp_path / "out")
    report = json.loads(Path(record.report_path).read_text())
    assert report["success"] and report["n_images"] == 120 and report["n_classes"] == 10
    assert all(e["success"] for e in report["expectations"]) and len(report["expectations"]) == 13
    assert (tmp_path / "out" / "data_docs" / "index.html").is_file()
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
    with pytest.raises(DataError, match="n_images") as err:
        validate_data(data, CFG, tmp_path / "out")
    assert "class '7': 2 images" in str(err.value) and "min_images_per_class" in str(err.value)


def test_single_class_is_refused(data: Path, tmp_path: Path) -> None:
    for d in data.iterdir():
        if d.name != "0":
            shutil.rmtree(d)
    with pytest.raises(DataError, match="the class table") as err:
        validate_data(data, CFG, tmp_path / "out")
    assert "classes found: ['0']" in str(err.value) and "min_classes" in str(err.value)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        build_manifest(tmp_path / "nope")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        build_manifest(tmp_path / "empty")


def test_the_manifest_sees_a_rewrite_that_keeps_size_and_mtime(data: Path, tmp_path: Path) -> None:
    """Files unpacked from one archive share an mtime; images of one shape in BMP or PGM share a
    size: a content change that keeps both must still be read again."""
    import os

    cache = tmp_path / "cache.csv"
    target, other = sorted((data / "2").iterdir())[0], sorted((data / "5").iterdir())[0]
    with Image.open(other) as im:  # another digit, written to the same size in the same format
        im.save(tmp_path / "same-size.bmp")
    with Image.open(target) as im:
        im.save(target.with_suffix(".bmp"))
    target.unlink()
    target = target.with_suffix(".bmp")
    first = build_manifest(data, cache).set_index("path")
    st = target.stat()
    replacement = (tmp_path / "same-size.bmp").read_bytes()
    assert len(replacement) == st.st_size
    target.write_bytes(replacement)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same size and mtime as before
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = build_manifest(data, cache).set_index("path")
    rel = f"2/{target.name}"
    assert again.at[rel, "sha256"] != first.at[rel, "sha256"]
