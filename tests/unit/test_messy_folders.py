"""Folders shaped like the ones people unzip: OS litter is ignored and named once, class names
written as numbers are accepted, a label-set mismatch is one line, a pool that ends empty is an
error; every case leaves the folder as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.cli.main import main
from flows.tracking.dvc import untracked_pool_warning
from tests.conftest import PARAMS

LITTER = ["__MACOSX/3/._00001.png", "3/._00001.png", ".DS_Store", "3/.DS_Store", "7/Thumbs.db",
          "7/desktop.ini", ".ipynb_checkpoints/x.png"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def unzipped(tiny_data: Path, tmp_path: Path) -> Path:
    """The tiny digits as a Mac zip leaves them: AppleDouble files, __MACOSX, .DS_Store, ..."""
    data = Path(shutil.copytree(tiny_data, tmp_path / "zipped"))
    for rel in LITTER:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"\x00\x05\x16\x07 AppleDouble or OS metadata, not an image")
    return data


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _stage_validate(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    data: Path, *sets: str) -> tuple[int, str, dict]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    args = ["--set", f"data.dir={data}", "--set", "validate.min_images_per_class=5"]
    code, _, err = _run(capsys, "stage", "validate", "--params", str(PARAMS), *args,
                        *[a for s in sets for a in ("--set", s)])
    report = tmp_path / "artifacts" / "validation" / "report.json"
    return code, err, json.loads(report.read_text()) if report.is_file() else {}


def test_import_folder_ignores_os_litter_and_names_it_once(unzipped: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(unzipped)
    code, out, err = _run(capsys, "data", "import-folder", str(unzipped), "--out", str(tmp_path / "data"))
    assert code == 0, err
    assert "in 10 classes" in out and not (tmp_path / "data" / "__MACOSX").exists()
    assert "ignored 7 entries operating systems leave" in out  # __MACOSX/ once, with its contents
    assert not any(p.name.startswith("._") or p.name in ("Thumbs.db", "desktop.ini", ".DS_Store")
                   for p in (tmp_path / "data").rglob("*"))
    assert _snapshot(unzipped) == before


def test_the_gate_ignores_os_litter_and_lists_it(unzipped: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(unzipped)
    code, err, report = _stage_validate(capsys, tmp_path, monkeypatch, unzipped)
    assert code == 0, err
    assert report["n_classes"] == 10 and "__MACOSX" not in report["images_per_class"]
    assert report["ignored_litter"]["n"] == 7 and "__MACOSX" in report["ignored_litter"]["paths"]
    assert _snapshot(unzipped) == before


def test_class_names_written_as_numbers_are_accepted(tiny_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code, err, report = _stage_validate(capsys, tmp_path, monkeypatch, tiny_data,
                                        "validate.expected_classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")
    assert code == 0 and report["success"], err


def test_a_class_name_that_is_no_name_is_one_line(tiny_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, err, _ = _stage_validate(capsys, tmp_path, monkeypatch, tiny_data,
                                   "validate.expected_classes=[0.5, 1]")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "write each in quotes, e.g. ['0', '1'] (found [0.5])" in err


def test_a_label_set_mismatch_is_one_line(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(tiny_data)
    code, err, _ = _stage_validate(capsys, tmp_path, monkeypatch, tiny_data,
                                   "validate.expected_classes=['0','1','2','3','4','5','6','7','8','x']")
    assert code == 1 and "observed missing ['x'], unexpected ['9']" in err
    assert "Traceback" not in err and "observed None" not in err
    assert _snapshot(tiny_data) == before


@pytest.mark.parametrize("pool_kind", ["copies of labeled images", "unreadable files, skipped"])
def test_a_pool_that_ends_empty_closes_the_gate(pool_kind: str, tiny_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, image in enumerate(sorted((tiny_data / "3").iterdir())[:4]):
        if pool_kind.startswith("copies"):
            shutil.copy(image, pool / f"{i}.png")
        else:
            (pool / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    before = _snapshot(pool)
    code, err, report = _stage_validate(capsys, tmp_path, monkeypatch, tiny_data,
                                        f"data.unlabeled_dir={pool}", "validate.on_error=skip_bad_files")
    assert code == 1 and "pool_keeps_images on the pool of the unlabeled pool" in err
    assert "0 of 4 images kept" in err and "set data.unlabeled_dir: null" in err
    assert not report["success"] and _snapshot(pool) == before


def test_the_dvc_hint_names_the_pool_relative_to_the_project(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages:\n  validate:\n    deps:\n      - ${data.dir}\n")
    (tmp_path / "unlabeled").mkdir()
    monkeypatch.chdir(tmp_path)
    warning = untracked_pool_warning(str(tmp_path / "unlabeled"))
    assert warning is not None and "add `- unlabeled` there" in warning and str(tmp_path) not in warning
    outside = untracked_pool_warning("/tmp")
    assert outside is not None and "outside this DVC project" in outside
